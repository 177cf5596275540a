"""Wall time and peak memory of converting a full-size Qwen2.5-0.5B checkpoint with `conversion.hf_to_flax`.

    python -m benchmarks.convert [--json] [--dtype float32|bfloat16] [--repeats 3]

A random-weight transformers `Qwen2ForCausalLM` with Qwen2.5-0.5B's shapes is saved once with `save_pretrained`
(cached under --cache_dir), then the real conversion CLI runs in a fresh child process, plain and with `--twist`,
alternating, `--repeats` times each. Each child's peak RSS is the kernel's figure, taken by a small wrapper
process (`benchmarks.peak_rss`) so that this large one does not count; it includes the pages of the
memory-mapped checkpoint that the child touched. Targets (from the issue): under 30 s and under 2.5x the
checkpoint size in RAM.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time

from benchmarks import common
from slam_jax.paths import Path

TARGET_SECONDS = 30.0
TARGET_RSS_RATIO = 2.5
DEFAULT_CACHE = Path("/tmp/slam_jax_bench")
REPO_ROOT = Path(__file__).resolve().parents[1]
QWEN2_5_0_5B = dict(
    vocab_size=151_936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    head_dim=64,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=32_768,
    tie_word_embeddings=True,
)
VARIANTS = {"plain": [], "twist": ["--twist"]}


def build_checkpoint(folder: Path, dtype: str) -> None:
    """Save a random-weight Qwen2.5-0.5B-shaped `Qwen2ForCausalLM` to `folder` (written aside, then renamed)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_5_0_5B)).to(getattr(torch, dtype))
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    staging.rename(folder)


def checkpoint_folder(cache_dir: Path, dtype: str) -> Path:
    """The cached checkpoint for `dtype`, built first if absent."""
    folder = cache_dir / f"qwen2.5-0.5b-random-{dtype}"
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        build_checkpoint(folder, dtype)
    return folder


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    """Total size of the files under `folder` matching `pattern`."""
    return sum(path.stat().st_size for path in folder.rglob(pattern) if path.is_file())


def run_measured(command: list[str]) -> dict:
    """Run `command` under `benchmarks.peak_rss`; its wall seconds, peak RSS and sampled peak anonymous RSS."""
    wrapped = [sys.executable, "-m", "benchmarks.peak_rss", *command]
    child = subprocess.run(wrapped, cwd=REPO_ROOT, capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {child.returncode}:\n{child.stderr[-2000:]}")
    return json.loads(child.stdout)


def convert_command(folder: Path, out: Path, extra: list[str]) -> list[str]:
    """The conversion CLI writing `folder`'s conversion to `out`, with `extra` flags."""
    command = [sys.executable, "-m", "conversion.hf_to_flax", "--model", str(folder), "--out", str(out), "--overwrite"]
    return command + extra


def summarise(runs: list[dict], checkpoint_bytes: int, output_bytes: int, command: list[str]) -> dict:
    """Median seconds, worst peak RSS and the ratios the targets are stated in."""
    seconds = common.median([run["seconds"] for run in runs])
    peak = max(run["peak_rss_bytes"] for run in runs)
    return {
        "command": " ".join(command),
        "seconds": seconds,
        "all_seconds": [run["seconds"] for run in runs],
        "peak_rss_bytes": peak,
        "all_peak_rss_bytes": [run["peak_rss_bytes"] for run in runs],
        "peak_anon_rss_bytes_sampled": max(run["peak_anon_rss_bytes"] for run in runs),
        "rss_ratio": peak / checkpoint_bytes,
        "output_bytes": output_bytes,
        "meets_time_target": seconds < TARGET_SECONDS,
        "meets_memory_target": peak / checkpoint_bytes < TARGET_RSS_RATIO,
    }


def benchmark(dtype: str, cache_dir: Path, repeats: int) -> dict:
    """Build (or reuse) the checkpoint, then time plain and --twist conversions in alternating rounds."""
    build_start = time.perf_counter()
    folder = checkpoint_folder(cache_dir, dtype)
    build_seconds = time.perf_counter() - build_start
    checkpoint_bytes = folder_bytes(folder, "*.safetensors")
    import_run = run_measured([sys.executable, "-c", "import conversion.hf_to_flax"])
    outs = {name: cache_dir / f"out-{dtype}-{name}" for name in VARIANTS}
    commands = {name: convert_command(folder, outs[name], extra) for name, extra in VARIANTS.items()}
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    output_bytes = {}
    for _ in range(repeats):
        for name, command in commands.items():
            shutil.rmtree(outs[name], ignore_errors=True)
            runs[name].append(run_measured(command))
            output_bytes[name] = folder_bytes(outs[name])
            shutil.rmtree(outs[name])
    return {
        "benchmark": "convert",
        "dtype": dtype,
        "checkpoint_dir": str(folder),
        "checkpoint_bytes": checkpoint_bytes,
        "checkpoint_build_or_reuse_seconds": build_seconds,
        "repeats": repeats,
        "targets": {"seconds": TARGET_SECONDS, "rss_ratio": TARGET_RSS_RATIO},
        "import_peak_rss_bytes": import_run["peak_rss_bytes"],
        "import_seconds": import_run["seconds"],
        "conversions": {
            name: summarise(runs[name], checkpoint_bytes, output_bytes[name], commands[name]) for name in VARIANTS
        },
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    gib = 1024**3
    lines = [
        f"checkpoint {result['checkpoint_dir']} ({result['dtype']}): {result['checkpoint_bytes'] / gib:.2f} GiB",
        f"importing the CLI alone: {result['import_seconds']:.1f} s, "
        f"peak RSS {result['import_peak_rss_bytes'] / gib:.2f} GiB",
    ]
    for name, figures in result["conversions"].items():
        lines.append(
            f"{name:5s}: {figures['seconds']:.1f} s (median of {result['repeats']}), "
            f"peak RSS {figures['peak_rss_bytes'] / gib:.2f} GiB = {figures['rss_ratio']:.2f}x checkpoint "
            f"(anonymous ~{figures['peak_anon_rss_bytes_sampled'] / gib:.2f} GiB); "
            f"targets < {TARGET_SECONDS:g} s: {figures['meets_time_target']}, "
            f"< {TARGET_RSS_RATIO:g}x: {figures['meets_memory_target']}"
        )
    machine = result["machine"]
    lines.append(
        f"machine: {machine['cpu_model']}, {machine['cores']} cores, load average {machine['load_average']}, "
        f"{machine['versions']}"
    )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="checkpoint dtype")
    parser.add_argument("--repeats", type=int, default=3, help="conversions of each kind (median time, max RSS)")
    parser.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE, help="checkpoint cache and scratch outputs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = benchmark(args.dtype, args.cache_dir, args.repeats)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
