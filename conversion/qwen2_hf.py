"""Qwen2 and Llama names and configs, `transformers` <-> slam_jax: one table maps every HF tensor to a Flax path.

Llama's decoder is Qwen2's without the q/k/v biases (`attention_bias` false), so both share the table; Llama 3's
RoPE scaling (`llama3`) is read from `rope_parameters` (transformers 5) or `rope_scaling` (earlier versions).

HF stores a Linear weight as [out, in]; Flax kernels are [in, out], and the decoder layers are stacked on
a leading axis. The slamkit speech-LM layout is the same tensors under an `lm.` prefix with the Qwen2
config nested as `base_config`.
"""

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from conversion.safetensors_io import CheckpointError
from slam_jax import tokens
from slam_jax.models.config import ModelConfig
from slam_jax.paths import Path

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
MODEL_TYPES = ("qwen2", "llama")
# transformers' llama3 RoPE keys -> ModelConfig fields
LLAMA3_ROPE_KEYS = {
    "factor": "rope_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_position_embeddings",
}
# what transformers assumes for a key a config.json leaves out, where the two models differ
MODEL_TYPE_DEFAULTS = {
    "qwen2": {"tie_word_embeddings": True, "max_position_embeddings": 32_768},
    "llama": {"tie_word_embeddings": False, "max_position_embeddings": 2048},
}


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
    """ModelConfig of a `transformers` Qwen2 or Llama config dict; rejects what the decoder does not implement."""
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not one of {list(MODEL_TYPES)}")
    if model_type == "llama":
        for key in ("attention_bias", "mlp_bias"):
            if hf_config.get(key):
                raise CheckpointError(f"{source}: {key}=true is not supported for llama (only bias-free layers)")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {hf_config['hidden_act']!r} is not 'silu'")
    if hf_config.get("use_sliding_window"):
        raise CheckpointError(f"{source}: use_sliding_window=true is not supported")
    defaults = MODEL_TYPE_DEFAULTS[model_type]
    try:
        heads = hf_config["num_attention_heads"]
        return ModelConfig(
            architecture=model_type,
            vocab_size=hf_config["vocab_size"],
            hidden_size=hf_config["hidden_size"],
            intermediate_size=hf_config["intermediate_size"],
            num_layers=hf_config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf_config.get("num_key_value_heads") or heads,
            head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
            attention_bias=model_type == "qwen2",
            rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=hf_config.get("tie_word_embeddings", defaults["tie_word_embeddings"]),
            max_position_embeddings=hf_config.get("max_position_embeddings", defaults["max_position_embeddings"]),
            **rope_fields(hf_config, source),
        )
    except KeyError as error:
        raise CheckpointError(f"{source}: missing key {error}") from None


def rope_fields(hf_config: dict, source: str) -> dict:
    """The RoPE fields of ModelConfig: theta, and llama3 scaling if the config has it, from `rope_parameters`
    (transformers 5, theta inside) or `rope_scaling` + `rope_theta` (earlier); other RoPE types are refused.

    A missing `original_max_position_embeddings` is `max_position_embeddings`, as transformers assumes.
    """
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise CheckpointError(f"{source}: rope type {kind!r} is not supported (only default and llama3): {rope}")
    if rope.get("partial_rotary_factor") not in (None, 1.0):
        raise CheckpointError(f"{source}: partial_rotary_factor {rope['partial_rotary_factor']} is not supported")
    fields = {"rope_theta": float(rope.get("rope_theta", hf_config.get("rope_theta", 10_000.0)))}
    if kind == "llama3":
        scaling = {"original_max_position_embeddings": hf_config.get("max_position_embeddings"), **rope}
        missing = [key for key in LLAMA3_ROPE_KEYS if scaling.get(key) is None]
        if missing:
            raise CheckpointError(f"{source}: llama3 rope scaling needs the keys {missing}")
        fields["rope_scaling"] = "llama3"
        fields.update({field: scaling[key] for key, field in LLAMA3_ROPE_KEYS.items()})
    return fields


SPEECH_TOKEN_IDS = {"pad_token_id": tokens.PAD_ID, "bos_token_id": tokens.BOS_ID, "eos_token_id": tokens.EOS_ID}
TOKEN_ID_KEYS = tuple(SPEECH_TOKEN_IDS)


def hf_config_from_model(config: ModelConfig, dtype: str = "float32", token_ids: dict | None = None) -> dict:
    """A config.json that `Qwen2ForCausalLM` (or, for a llama model, `LlamaForCausalLM`) `.from_pretrained`
    reads, old and new `transformers` alike.

    `token_ids` (pad/bos/eos) default to the speech ids; a converted text model keeps its own.
    """
    if config.architecture == "qwen2" and not config.attention_bias:
        raise ValueError("a qwen2 model without q/k/v biases has no transformers layout (Qwen2 always has them)")
    rope = {"rope_type": "default" if config.rope_scaling == "none" else config.rope_scaling}
    if config.rope_scaling == "llama3":
        rope.update({key: getattr(config, field) for key, field in LLAMA3_ROPE_KEYS.items()})
    if config.architecture == "llama":
        specific = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "attention_bias": False,
            "mlp_bias": False,
        }
    else:
        specific = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "use_sliding_window": False}
    return {
        **specific,
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
        "rope_parameters": {**rope, "rope_theta": config.rope_theta},
        **({"rope_scaling": rope} if config.rope_scaling != "none" else {}),
        "tie_word_embeddings": config.tie_word_embeddings,
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
    for path, template, transpose in layer_tensors(config):
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
        for path, template, transpose in layer_tensors(config):
            tensor = _get(params["layers"], path)[i]
            out[prefix + template.format(i=i)] = _cast(tensor.T if transpose else tensor, dtype)
    out[prefix + FINAL_NORM] = _cast(params["norm"]["scale"], dtype)
    if not config.tie_word_embeddings:
        out[prefix + LM_HEAD] = _cast(params["lm_head"]["kernel"].T, dtype)
    return out


def layer_tensors(config: ModelConfig) -> tuple[tuple[tuple[str, ...], str, bool], ...]:
    """The rows of LAYER_TENSORS that `config`'s layers have: the biases (q/k/v, the table's only ones) only
    with `attention_bias`."""
    return tuple(row for row in LAYER_TENSORS if config.attention_bias or row[0][-1] != "bias")


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
