"""Convert an HF Qwen2 or Llama checkpoint (or a slamkit speech LM) to a slam_jax model dir, optionally
TWIST-initialised.

    python -m conversion.hf_to_flax --model DIR_OR_HUB_ID --out DIR [--twist] [--num_units 500] [--rope_theta 10000]

Reads safetensors with numpy (no torch), checks every tensor's shape against config.json, and writes
`model_config.json` + Orbax `params/` + `provenance.json` (the source and its text model) atomically. `--twist`
builds the Slam speech LM the reference's way: the vocabulary becomes `num_units + 2` rows taken from the start
of the text embedding (what `resize_token_embeddings` keeps), the head is tied, rope_theta and the context length
are overridden. A slamkit checkpoint's vocabulary is its top-level `vocab_size`. Without `--twist` the text
model's tokenizer files are copied beside the weights, so the folder is a self-contained text LM
(`slam_jax.evaluation.text_lm.load_text_lm`). `--model` and `--out` may be bucket URLs (gs://; --model also
s3://): a checkpoint in a bucket is read from a local copy, the output is uploaded with model_config.json last.
"""

import argparse
import re
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from conversion import command, qwen2_hf
from conversion.safetensors_io import CheckpointError, CheckpointReader
from slam_jax import paths, tokens
from slam_jax.files import atomic_dir, refuse_overlap
from slam_jax.models import storage
from slam_jax.models.config import ModelConfig
from slam_jax.paths import Path

TWIST_INITS = ("copy_first", "mean", "random")
SLAM_ROPE_THETA = 10_000.0
SLAM_CONTEXT_LENGTH = 1024
_MEAN_INIT_NOISE = 1e-2
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",  # transformers 5 saves an instruct model's chat template apart (LLM-as-judge reads it)
    "chat_template.json",
)
CHECKPOINT_PATTERNS = ("config.json", "*.safetensors", "*.index.json", *TOKENIZER_FILES)


def resolve_source(model: str, patterns: Sequence[str] = CHECKPOINT_PATTERNS) -> Path:
    """A local checkpoint folder, a bucket folder (its local copy, `command.local_source`), or a hub id downloaded
    when online: only the files matching `patterns` (default: config, safetensors and the tokenizer files)."""
    if paths.is_remote(model):
        return command.local_source(model)
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists() or not _HUB_ID.fullmatch(model):
        raise CheckpointError(f"{model}: no such checkpoint folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, allow_patterns=list(patterns)))
    except Exception as error:  # noqa: BLE001 - any hub failure becomes one line naming the id
        raise CheckpointError(f"{model}: not a local folder and not downloadable ({type(error).__name__})") from None


def read_checkpoint(folder: Path) -> tuple[ModelConfig, dict[str, Any], dict]:
    """Model config, float32 parameters and the HF config dict of an HF or slamkit checkpoint folder."""
    hf_config = qwen2_hf.read_config_json(folder)
    weights_config, is_slamkit = qwen2_hf.split_slamkit(hf_config, source=str(folder / "config.json"))
    config = qwen2_hf.model_config_from_hf(weights_config, source=str(folder / "config.json"))
    reader = CheckpointReader(folder)
    prefix = qwen2_hf.SLAMKIT_PREFIX if is_slamkit else ""
    if not config.attention_bias:  # biases a bias-free config would silently drop: the config is wrong
        biases = [prefix + name.format(i=0) for _, name, _ in qwen2_hf.LAYER_TENSORS if name.endswith(".bias")]
        present = [name for name in biases if name in reader]
        if present:
            raise CheckpointError(
                f"{folder / 'config.json'}: model_type {config.architecture!r} has no q/k/v biases, but "
                f"{reader.file_of(present[0])} holds {present[0]} (a qwen2 checkpoint?)"
            )
    params = qwen2_hf.params_from_hf(reader.get, config, prefix=prefix)
    return config, params, hf_config


def base_model(model: str, folder: Path, hf_config: dict) -> dict:
    """The provenance of the text model behind a checkpoint, which a slamkit export names again: its
    `base_model_name` (a hub id or a local folder), its `base_config`, and which of them were `assumed`.

    A slamkit checkpoint names its own (the Slam recipe's base is assumed if the name is missing); an HF
    checkpoint is its own base: its hub id, or its folder as an absolute path, and its config.json.
    """
    if hf_config.get("model_type") != qwen2_hf.SLAMKIT_MODEL_TYPE:
        name = str(paths.absolute(model)) if paths.is_remote(model) or Path(model).is_dir() else model
        return {"base_model_name": name, "base_config": hf_config, "assumed": []}
    name = hf_config.get("base_model_name")
    return {
        "base_model_name": name or qwen2_hf.SLAM_BASE_MODEL,
        "base_config": hf_config["base_config"],
        "assumed": [] if name else ["base_model_name"],
    }


def twist(
    config: ModelConfig,
    params: dict[str, Any],
    num_units: int = 500,
    init: str = "copy_first",
    rope_theta: float = SLAM_ROPE_THETA,
    context_length: int = SLAM_CONTEXT_LENGTH,
    seed: int = 0,
) -> tuple[ModelConfig, dict[str, Any]]:
    """The speech LM of a text LM: `num_units + 2` embedding rows, tied head, new rope theta and context."""
    vocab = tokens.vocab_size_for(num_units)
    text_embedding = params["embed_tokens"]
    if init not in TWIST_INITS:
        raise ValueError(f"--twist_init {init!r} is not one of {TWIST_INITS}")
    if init == "copy_first" and vocab > text_embedding.shape[0]:
        raise ValueError(
            f"--num_units {num_units}: needs {vocab} rows, the text embedding has {text_embedding.shape[0]}"
        )
    rng = np.random.default_rng(seed)
    shape = (vocab, config.hidden_size)
    if init == "copy_first":
        embedding = np.array(text_embedding[:vocab], np.float32)
    elif init == "mean":
        spread = text_embedding.std(axis=0, dtype=np.float64)
        noise = rng.standard_normal(shape) * spread * _MEAN_INIT_NOISE
        embedding = (text_embedding.mean(axis=0, dtype=np.float64) + noise).astype(np.float32)
    else:
        embedding = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    speech_params = {key: value for key, value in params.items() if key != "lm_head"}
    speech_params["embed_tokens"] = embedding
    speech_config = config.replace(
        vocab_size=vocab,
        tie_word_embeddings=True,
        rope_theta=float(rope_theta),
        max_position_embeddings=int(context_length),
    )
    return speech_config, speech_params


def convert(
    model: str,
    out: str | Path,
    twist_vocab: bool = False,
    num_units: int = 500,
    rope_theta: float | None = None,
    context_length: int | None = None,
    twist_init: str = "copy_first",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Convert `model` into a slam_jax model dir at `out` (see the module docstring)."""
    paths.check_array_storage(out, "model weights")
    command.refuse_non_empty(out, overwrite, inputs=[model])
    folder = resolve_source(model)
    refuse_overlap(out, [folder])  # a hub id's download folder, known only now
    shown = Path(model) if paths.is_remote(model) else folder  # what messages name: the bucket, not its copy
    with command.named_as(folder, model):
        config, params, hf_config = read_checkpoint(folder)
    weights_config, is_slamkit = qwen2_hf.split_slamkit(hf_config, source=str(shown / "config.json"))
    provenance = {
        "source": str(model),
        "source_format": "slamkit" if is_slamkit else "hf",
        "token_ids": {key: weights_config.get(key) for key in qwen2_hf.TOKEN_ID_KEYS},
        **base_model(model, folder, hf_config),
        "twist": None,
    }
    if provenance["assumed"]:
        command.note(
            f"{shown / 'config.json'} names no base_model_name; assuming {qwen2_hf.SLAM_BASE_MODEL}, the Slam "
            "recipe's base (recorded as assumed in provenance.json; a slamkit export names it)"
        )
    if twist_vocab:
        config, params = twist(
            config,
            params,
            num_units=num_units,
            init=twist_init,
            rope_theta=SLAM_ROPE_THETA if rope_theta is None else rope_theta,
            context_length=SLAM_CONTEXT_LENGTH if context_length is None else context_length,
            seed=seed,
        )
        provenance["token_ids"] = dict(qwen2_hf.SPEECH_TOKEN_IDS)
        provenance["twist"] = {"num_units": num_units, "init": twist_init, "seed": seed}
    else:
        overrides = {"rope_theta": rope_theta, "max_position_embeddings": context_length}
        config = config.replace(**{key: value for key, value in overrides.items() if value is not None})
    storage.move_to_device(params)  # one copy in memory: no host copies left for Orbax to duplicate
    tokenizer = [] if twist_vocab else [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    with atomic_dir(out, overwrite, [model, folder]) as staging:  # the model and its tokenizer appear together
        storage.save_model(staging, config, params, provenance=provenance, overwrite=True)
        for path in tokenizer:
            shutil.copyfile(path, staging / path.name)  # both local: the source or its copy, the staging folder
    return paths.absolute(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m conversion.hf_to_flax",
        description="Convert an HF Qwen2 or Llama (or slamkit speech-LM) checkpoint to a slam_jax model dir.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder (safetensors + config.json) or hub id")
    parser.add_argument("--out", required=True, help="output model dir (must be empty unless --overwrite)")
    parser.add_argument("--twist", action="store_true", help="build the speech LM (TWIST vocabulary swap)")
    parser.add_argument("--num_units", type=int, default=500, help="speech units; vocab = num_units + 2")
    parser.add_argument("--rope_theta", type=float, default=None, help="RoPE theta (default 10000 with --twist)")
    parser.add_argument("--context_length", type=int, default=None, help="max positions (default 1024 with --twist)")
    parser.add_argument("--twist_init", choices=TWIST_INITS, default="copy_first", help="speech embedding init")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mean/random embedding init")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return command.finish(
        lambda: convert(
            args.model,
            args.out,
            twist_vocab=args.twist,
            num_units=args.num_units,
            rope_theta=args.rope_theta,
            context_length=args.context_length,
            twist_init=args.twist_init,
            seed=args.seed,
            overwrite=args.overwrite,
        ),
        summary,
    )


def summary(out: Path) -> str:
    """What `wrote OUT` is followed by: the size and the shape of the converted model."""
    config = storage.load_config(out)
    scaling = "" if config.rope_scaling == "none" else f" ({config.rope_scaling} scaling)"
    return (
        f": {config.architecture}, {config.num_params():,} parameters, vocab {config.vocab_size}, "
        f"{config.num_layers} layers, rope_theta {config.rope_theta:g}{scaling}"
    )


if __name__ == "__main__":
    sys.exit(main())
