"""Qwen2 names and configs, `transformers` <-> slam_jax: one table maps every HF tensor to a Flax path.

HF stores a Linear weight as [out, in]; Flax kernels are [in, out], and the decoder layers are stacked on
a leading axis. The slamkit speech-LM layout is the same tensors under an `lm.` prefix with the Qwen2
config nested as `base_config`.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conversion.safetensors_io import CheckpointError
from slam_jax import tokens
from slam_jax.models.config import ModelConfig

SLAMKIT_MODEL_TYPE = "speech_language_model"
SLAMKIT_PREFIX = "lm."
SLAM_BASE_MODEL = "Qwen/Qwen2.5-0.5B"  # the Slam recipe's text model: the base assumed where none is recorded

# (Flax path, HF name with {i} for the layer index, transposed?)
LAYER_TENSORS = (
    (("self_attn", "q_proj", "kernel"), "model.layers.{i}.self_attn.q_proj.weight", True),
    (("self_attn", "q_proj", "bias"), "model.layers.{i}.self_attn.q_proj.bias", False),
    (("self_attn", "k_proj", "kernel"), "model.layers.{i}.self_attn.k_proj.weight", True),
    (("self_attn", "k_proj", "bias"), "model.layers.{i}.self_attn.k_proj.bias", False),
    (("self_attn", "v_proj", "kernel"), "model.layers.{i}.self_attn.v_proj.weight", True),
    (("self_attn", "v_proj", "bias"), "model.layers.{i}.self_attn.v_proj.bias", False),
    (("self_attn", "o_proj", "kernel"), "model.layers.{i}.self_attn.o_proj.weight", True),
    (("mlp", "gate_proj", "kernel"), "model.layers.{i}.mlp.gate_proj.weight", True),
    (("mlp", "up_proj", "kernel"), "model.layers.{i}.mlp.up_proj.weight", True),
    (("mlp", "down_proj", "kernel"), "model.layers.{i}.mlp.down_proj.weight", True),
    (("input_layernorm", "scale"), "model.layers.{i}.input_layernorm.weight", False),
    (("post_attention_layernorm", "scale"), "model.layers.{i}.post_attention_layernorm.weight", False),
)
EMBEDDING = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"


def read_config_json(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (an HF checkpoint folder needs config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None


def split_slamkit(hf_config: dict, source: str) -> tuple[dict, bool]:
    """The Qwen2 config of a checkpoint's weights and whether it is a slamkit speech LM (weights under `lm.`).

    slamkit nests the text model's config as `base_config`, which keeps the text vocabulary (151,936 for
    Qwen2.5): the embedding was resized to the top-level `vocab_size`, the speech vocabulary, which wins here.
    """
    if hf_config.get("model_type") != SLAMKIT_MODEL_TYPE:
        return hf_config, False
    for key in ("base_config", "vocab_size"):
        if key not in hf_config:
            raise CheckpointError(f"{source}: a {SLAMKIT_MODEL_TYPE} config needs the key {key!r}")
    if not isinstance(hf_config["base_config"], dict):
        raise CheckpointError(f"{source}: base_config is not a JSON object")
    return {**hf_config["base_config"], "vocab_size": hf_config["vocab_size"]}, True


def model_config_from_hf(hf_config: dict, source: str) -> ModelConfig:
    """ModelConfig of a `transformers` Qwen2 config dict; rejects what the decoder does not implement."""
    if hf_config.get("model_type") != "qwen2":
        raise CheckpointError(f"{source}: model_type {hf_config.get('model_type')!r} is not 'qwen2'")
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise CheckpointError(f"{source}: rope scaling {rope} is not supported (only default RoPE)")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {hf_config['hidden_act']!r} is not 'silu'")
    if hf_config.get("use_sliding_window"):
        raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
    try:
        heads = hf_config["num_attention_heads"]
        return ModelConfig(
            vocab_size=hf_config["vocab_size"],
            hidden_size=hf_config["hidden_size"],
            intermediate_size=hf_config["intermediate_size"],
            num_layers=hf_config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf_config.get("num_key_value_heads") or heads,
            head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
            rope_theta=float(rope.get("rope_theta", hf_config.get("rope_theta", 10_000.0))),
            rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=hf_config.get("tie_word_embeddings", True),
            max_position_embeddings=hf_config.get("max_position_embeddings", 32_768),
        )
    except KeyError as error:
        raise CheckpointError(f"{source}: missing key {error}") from None


SPEECH_TOKEN_IDS = {"pad_token_id": tokens.PAD_ID, "bos_token_id": tokens.BOS_ID, "eos_token_id": tokens.EOS_ID}
TOKEN_ID_KEYS = tuple(SPEECH_TOKEN_IDS)


def hf_config_from_model(config: ModelConfig, dtype: str = "float32", token_ids: dict | None = None) -> dict:
    """A config.json that `Qwen2ForCausalLM.from_pretrained` reads (old and new `transformers` alike).

    `token_ids` (pad/bos/eos) default to the speech ids; a converted text model keeps its own.
    """
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
        **(SPEECH_TOKEN_IDS if token_ids is None else token_ids),
    }


def slamkit_config_from_model(
    config: ModelConfig, base_model_name: str, text_config: dict | None = None, dtype: str = "float32"
) -> dict:
    """The reference's speech-LM config.json: `UnitLM` wrapping the Qwen2 config of its text model.

    slamkit's loader reads the config of `base_model_name` and then every key of `base_config`, and builds the
    decoder from that. `text_config`, the base model's own config (kept by the import), keeps its other keys
    and its text vocabulary, as slamkit writes it; the decoder's shape, RoPE and token ids are the model's.
    Without it `base_config` is the model's config alone.
    """
    base = hf_config_from_model(config, dtype)
    if text_config is not None:
        base = {**text_config, **base, "vocab_size": text_config.get("vocab_size", config.vocab_size)}
    return {
        "architectures": ["UnitLM"],
        "model_type": SLAMKIT_MODEL_TYPE,
        "base_model_name": base_model_name,
        "base_config": base,
        "vocab_size": config.vocab_size,
        "twist_init": True,
        "use_cache": True,
        **SPEECH_TOKEN_IDS,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "torch_dtype": dtype,
    }


def params_from_hf(get: Callable[[str, tuple], np.ndarray], config: ModelConfig, prefix: str = "") -> dict[str, Any]:
    """Flax parameter tree (float32 numpy) from HF tensors; `get(name, shape)` reads and checks one tensor."""
    d, vocab = config.hidden_size, config.vocab_size
    hf_shapes = _hf_layer_shapes(config)
    layers: dict[str, Any] = {}
    for path, template, transpose in LAYER_TENSORS:
        shape = hf_shapes[template]
        stacked = np.empty((config.num_layers,) + (shape[::-1] if transpose else shape), np.float32)
        for i in range(config.num_layers):
            tensor = get(prefix + template.format(i=i), shape)
            stacked[i] = tensor.T if transpose else tensor
        _set(layers, path, stacked)
    params = {
        "embed_tokens": np.array(get(prefix + EMBEDDING, (vocab, d)), np.float32),  # copies: no views of the file
        "layers": layers,
        "norm": {"scale": np.array(get(prefix + FINAL_NORM, (d,)), np.float32)},
    }
    if not config.tie_word_embeddings:
        params["lm_head"] = {"kernel": np.ascontiguousarray(get(prefix + LM_HEAD, (vocab, d)).T, np.float32)}
    return params


def hf_tensors_from_params(
    params: dict[str, Any], config: ModelConfig, dtype, prefix: str = ""
) -> dict[str, np.ndarray]:
    """HF-named tensors (in `dtype`) from a Flax parameter tree, in transformers' order."""
    out = {prefix + EMBEDDING: _cast(params["embed_tokens"], dtype)}
    for i in range(config.num_layers):
        for path, template, transpose in LAYER_TENSORS:
            tensor = _get(params["layers"], path)[i]
            out[prefix + template.format(i=i)] = _cast(tensor.T if transpose else tensor, dtype)
    out[prefix + FINAL_NORM] = _cast(params["norm"]["scale"], dtype)
    if not config.tie_word_embeddings:
        out[prefix + LM_HEAD] = _cast(params["lm_head"]["kernel"].T, dtype)
    return out


def _hf_layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    shapes = {
        "self_attn.q_proj.weight": (q, d),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (d, q),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
    }
    return {template: shapes[template.split("{i}.")[1]] for _, template, _ in LAYER_TENSORS}


def _cast(array, dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(array).astype(dtype, copy=False))


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree
