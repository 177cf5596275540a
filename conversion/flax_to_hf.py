"""Export a slam_jax model to safetensors + config.json for `transformers` or for the reference (slamkit).

    python -m conversion.flax_to_hf --checkpoint DIR --out DIR [--format hf|slamkit] [--dtype float32]

`--format hf` loads with `transformers.Qwen2ForCausalLM.from_pretrained` (a llama model, e.g. a converted
Llama 3, with `LlamaForCausalLM`); `--format slamkit` is the reference's speech-LM layout (`model_type`
speech_language_model, nested `base_config`, weights under `lm.`), which `python -m conversion.hf_to_flax` also
imports back; it names the text model the import recorded (`base_model_name`, `base_config`), or assumes the
recipe's with a note. Written atomically, never over, inside or around the checkpoint it reads. Both may be
bucket URLs: the checkpoint on gs:// (Orbax reads it there), the output on gs:// or s3:// (staged locally and
uploaded with config.json last).
"""

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from conversion import command, qwen2_hf
from conversion.safetensors_io import save_checkpoint
from slam_jax import paths
from slam_jax.files import atomic_dir
from slam_jax.models import storage
from slam_jax.paths import Path

FORMATS = ("hf", "slamkit")
EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def export(
    checkpoint: str | Path,
    out: str | Path,
    format: str = "hf",
    dtype: str = "float32",
    max_shard_bytes: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the model at `checkpoint` (model dir, workdir or step dir) to `out` in `format`."""
    if format not in FORMATS:
        raise ValueError(f"--format {format!r} is not one of {FORMATS}")
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {EXPORT_DTYPES}")
    source = storage.resolve_model_dir(checkpoint)
    inputs = [checkpoint, source]
    command.refuse_non_empty(out, overwrite, inputs)
    config = storage.load_config(source)
    provenance = storage.load_provenance(source)
    if format == "hf":
        hf_config, prefix = qwen2_hf.hf_config_from_model(config, dtype, provenance.get("token_ids")), ""
    else:
        base_model_name = slamkit_base_model_name(source, provenance)
        hf_config = qwen2_hf.slamkit_config_from_model(config, base_model_name, provenance.get("base_config"), dtype)
        prefix = qwen2_hf.SLAMKIT_PREFIX
    params = jax.tree.map(np.asarray, storage.load_params(source, config))
    tensors = qwen2_hf.hf_tensors_from_params(params, config, jnp.dtype(dtype), prefix=prefix)
    with atomic_dir(out, overwrite, inputs) as staging:
        save_checkpoint(tensors, staging, max_shard_bytes=max_shard_bytes)
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")  # local: uploaded last
    return paths.absolute(out)


def slamkit_base_model_name(source: Path, provenance: dict) -> str:
    """The `base_model_name` a slamkit export names: the one the import recorded, else the Slam recipe's base,
    with a note whenever it is an assumption (slamkit's loader reads that model's config)."""
    name = provenance.get("base_model_name")
    if name is None:
        command.note(
            f"{source} records no base model (a training checkpoint, or converted without one); base_model_name "
            f"assumed {qwen2_hf.SLAM_BASE_MODEL}, the Slam recipe's base, and base_config is the model's own config"
        )
        return qwen2_hf.SLAM_BASE_MODEL
    if "base_model_name" in provenance.get("assumed", []):
        command.note(f"{source}: base_model_name {name} was assumed when the model was imported")
    return name


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m conversion.flax_to_hf",
        description="Export a slam_jax model dir (or a training checkpoint) to HF safetensors + config.json.",
    )
    parser.add_argument("--checkpoint", required=True, help="model dir, training workdir or checkpoint step dir")
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--format", choices=FORMATS, default="hf", help="hf: Qwen2 or Llama; slamkit: reference")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="float32", help="dtype of the written tensors")
    parser.add_argument("--max_shard_size_mb", type=int, default=0, help="shard files above this size (0 = one file)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return command.finish(
        lambda: export(
            args.checkpoint,
            args.out,
            format=args.format,
            dtype=args.dtype,
            max_shard_bytes=args.max_shard_size_mb * 1024 * 1024,
            overwrite=args.overwrite,
        ),
        lambda out: f" ({args.format}, {args.dtype})",
    )


if __name__ == "__main__":
    sys.exit(main())
