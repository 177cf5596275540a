"""The accelerator suite: everything worth measuring when a GPU is lent, in one run, each part saved as it ends.

    python -m benchmarks.gpu_suite --out DIR [--tiny] [--repeats 5] [--parts attention,train,torch,...]
    bash benchmarks/gpu_suite.sh          # on the device machine: writes under $OUT

Parts, in this order (the most important first, so a run cut short keeps them), each written to
DIR/<part>.json the moment it ends, and all of them to DIR/suite.json:
- `attention`: every attention backend this platform runs against the float32 einsum on packed rows with
  grouped-query heads (outputs and gradients), and its forward + backward time at the step's shape;
- `train`: the project's `jit_train_step` at the paper's per-device batch (8 x 1024, packed rows, one
  micro-batch) per attention backend with scanned layers, the `auto` backend unrolled, with the paper's remat
  and with a bf16 first Adam moment (`train.mu_dtype`); seconds, tokens/s and MFU (of the vendor's dense bf16
  peak on a known accelerator);
- `torch`: PyTorch as slamkit runs it (transformers Qwen2, bf16 weights, sdpa, torch.optim.AdamW) and a strong
  PyTorch (the same under torch.compile, fused AdamW), same batch, same process;
- `profile`: the step as `configs/slam.py` trains it (the `auto` backend) under `jax.profiler.trace`: where its
  time goes on the device, by kind (attention kernel, matmuls, collectives, copies, the fused elementwise rest)
  and by op, beside the step's wall-clock time (`benchmarks/trace_summary.py`; the trace stays in DIR/profile/);
- `dpo`: the DPO step (one pair of 2 x 1024, precomputed reference) beside a pre-training step of 2 x 1024;
- `decode`: 150 sampled tokens after 76-token prompts at batch 1 and 32, bf16, slam_jax against transformers;
- `pipeline`: the Grain pipeline's packed 8 x 1024 batches per second, in-process and with worker processes,
  against what the fastest train step consumes;
- `xla_flags`: the `auto` train step laid out as `configs/slam.py` trains (layers unrolled) again, in a fresh
  process per XLA flag set (latency-hiding scheduler, Triton GEMM off, command buffers off), to compare with
  the same variant of the `train` part.
- `vocoder_train`: one training step of the unit vocoder (`benchmarks/vocoder_train.py`: slam_jax's compiled
  `vocoder_step` against hifi_gan/train.py's PyTorch step, same batch, same initial weights) at the paper's size,
  16 rows of 14 frames, both on the GPU; seconds per step, audio seconds per second and the first step's loss
  agreement (`--tiny`: its `--quick` sizes).
`--tiny` runs every part at toy sizes: on a CPU that checks the suite end to end in a few minutes (the Pallas
kernels then run in interpret mode; cuDNN is reported as not available). A part that fails is recorded with
its error and the suite goes on.
"""

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from configs import slam as slam_config
from slam_jax.models import attention, precision, qwen2
from slam_jax.models import config as model_config
from slam_jax.paths import Path
from slam_jax.training import metrics
from slam_jax.training.settings import TrainSettings

PARTS = ("attention", "train", "torch", "profile", "dpo", "decode", "pipeline", "xla_flags", "vocoder_train")
GPU_FLAG_SETS = {
    "latency_hiding_scheduler": "--xla_gpu_enable_latency_hiding_scheduler=true",
    "triton_gemm_off": "--xla_gpu_enable_triton_gemm=false",
    "command_buffers_off": "--xla_gpu_enable_command_buffer=",
}
CPU_FLAG_SETS = {"cpu_fast_math_off": "--xla_cpu_enable_fast_math=false"}  # the same machinery, checked on a CPU


@functools.cache
def platform() -> str:
    return jax.default_backend()


def sizes(tiny: bool) -> dict:
    """Model, batch and decode sizes: the paper's, or toys that run in seconds on a CPU."""
    if tiny:
        cfg = model_config.tiny(num_units=20, compute_dtype="bfloat16", max_position_embeddings=64)
        return {"cfg": cfg, "rows": 2, "length": 64, "decode_batches": [1, 2], "files": 300, "pipeline_batches": 4}
    cfg = model_config.slam(compute_dtype="bfloat16")
    return {"cfg": cfg, "rows": 8, "length": 1024, "decode_batches": [1, 32], "files": 20_000, "pipeline_batches": 50}


def runnable_backends() -> list[str]:
    """Backends that run on this platform (Pallas kernels in interpret mode on a CPU; cuDNN only on a GPU)."""
    if platform() == "gpu":
        return ["xla", "pallas_gpu", "cudnn"]
    if platform() == "tpu":
        return ["xla", "splash"]
    return ["xla", "pallas_gpu", "splash"]


@contextlib.contextmanager
def kernels_for_this_platform():
    """On a CPU, the Pallas kernels in interpret mode, so the model's own path runs them; elsewhere as they are."""
    if platform() != "cpu":
        yield
        return
    interpreted = {
        name: functools.partial(attention.KERNELS[name], interpret=True) for name in ("splash", "pallas_gpu")
    }
    with mock.patch.object(attention, "KERNELS", {**attention.KERNELS, **interpreted}):
        yield


def packed_rows(rows: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows packed like the pipeline's: documents of 40-400 tokens (10-40% of a short context), then padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, (rows, length)).astype(np.int32)
    segments, positions = np.zeros_like(ids), np.zeros_like(ids)
    low, high = max(4, length // 25), max(8, length * 2 // 5)
    for row in range(rows):
        start, segment = 0, 1
        while start < length - low:
            size = min(int(rng.integers(low, high)), length - start)
            segments[row, start : start + size], positions[row, start : start + size] = segment, np.arange(size)
            start, segment = start + size, segment + 1
    ids[segments == 0] = 0
    return {"input_ids": ids, "segment_ids": segments, "positions": positions}


def timed(fn, repeats: int) -> dict:
    """First call (compile) seconds, then the median of `repeats` calls."""
    first = common.seconds(fn)
    times = [common.seconds(fn) for _ in range(repeats)]
    return {"seconds": common.median(times), "all_seconds": times, "first_call_seconds": first}


# ---- attention ---------------------------------------------------------------------------------------------


def attention_part(size: dict, repeats: int) -> dict:
    cfg, rows, length = size["cfg"], size["rows"], size["length"]
    rng = np.random.default_rng(0)
    shape_q = (rows, length, cfg.num_heads, cfg.head_dim)
    shape_kv = (rows, length, cfg.num_kv_heads, cfg.head_dim)
    q, k, v = (jnp.asarray(rng.normal(size=s), jnp.bfloat16) for s in (shape_q, shape_kv, shape_kv))
    segments = jnp.asarray(packed_rows(rows, length, 10)["segment_ids"])
    weights = jnp.asarray(rng.normal(size=(rows, length, cfg.num_heads * cfg.head_dim)), jnp.float32)

    def attend(backend, q, k, v):
        return attention.causal_attention(q, k, v, segments, backend, interpret=platform() == "cpu")

    def loss(backend, q, k, v):
        return jnp.sum(attend(backend, q, k, v).astype(jnp.float32) * weights)

    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    want_out = attention.xla_attention(*f32, segments)
    want_grads = jax.grad(functools.partial(loss, "xla"), argnums=(0, 1, 2))(*f32)
    found = {}
    for backend in runnable_backends():
        value_and_grad = jax.jit(jax.value_and_grad(functools.partial(loss, backend), argnums=(0, 1, 2)))
        forward = jax.jit(functools.partial(attend, backend))
        try:
            out = forward(q, k, v)
            _, grads = value_and_grad(q, k, v)
            errors = {"out": float(jnp.max(jnp.abs(out.astype(jnp.float32) - want_out)))}
            errors.update(
                {
                    f"d{n}": float(jnp.max(jnp.abs(g.astype(jnp.float32) - w)))
                    for n, g, w in zip("qkv", grads, want_grads, strict=True)
                }
            )
            timing = timed(functools.partial(lambda fn: jax.block_until_ready(fn(q, k, v)), value_and_grad), repeats)
            found[backend] = {"max_abs_error_vs_f32_einsum": errors, "forward_backward": timing}
        except Exception as error:  # noqa: BLE001 - one backend failing must not lose the others
            found[backend] = {"failed": f"{error.__class__.__name__}: {str(error)[:300]}"}
    return {"shape": [rows, length, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim], "backends": found}


# ---- train -------------------------------------------------------------------------------------------------


VARIANT_CHANGES = {  # variant suffix -> (model config changes, train config changes)
    "scan": ({}, {}),
    "unrolled": ({"scan_layers": False}, {}),
    "remat_dots_no_batch": ({"remat_policy": "dots_no_batch"}, {}),
    "mu_bf16": ({}, {"mu_dtype": "bfloat16"}),
    "unrolled_remat_dots_no_batch": ({"scan_layers": False, "remat_policy": "dots_no_batch"}, {}),
    "unrolled_onehot_embed": ({"scan_layers": False}, {}),  # and the embedding as a one-hot matmul (below)
}


def train_variants(auto: str) -> list[str]:
    """The default variants: every runnable backend scanned, and the `auto` one unrolled (also with the embedding
    as a one-hot matmul), with remat, with a bf16 first moment."""
    suffixes = ("unrolled", "unrolled_onehot_embed", "remat_dots_no_batch", "mu_bf16")
    return [f"{name}_scan" for name in runnable_backends()] + [f"{auto}_{suffix}" for suffix in suffixes]


def onehot_embed(model, input_ids):
    """`Qwen2.embed` as a one-hot [tokens, vocab] x [vocab, hidden] matmul in the compute dtype: on an
    accelerator its backward is a matmul too, instead of the gather's scatter-add."""
    dtype = jnp.dtype(model.config.compute_dtype)
    one_hot = jax.nn.one_hot(input_ids, model.config.vocab_size, dtype=dtype)
    return precision.einsum("btv,vd->btd", one_hot, model.embed_tokens[...].astype(dtype))


def variant_changes(name: str) -> tuple[dict, dict]:
    """(model, train) config changes of a variant named `<backend>_<suffix>` (e.g. cudnn_unrolled)."""
    for backend in attention.BACKENDS:
        suffix = name.removeprefix(backend + "_")
        if suffix != name and suffix in VARIANT_CHANGES:
            model, train = VARIANT_CHANGES[suffix]
            return {"attention": backend, **model}, train
    raise ValueError(f"train variant {name!r}: not <backend>_<{'|'.join(VARIANT_CHANGES)}>")


def variant_train_step(cfg, name: str, batch: dict):
    """The project's train step as the variant `name` changes it (VARIANT_CHANGES, the one-hot embedding),
    compiled on one device over `batch` (one micro-batch): (run, compile seconds)."""
    from benchmarks import train_step

    model_changes, train_changes = variant_changes(name)
    train = TrainSettings.from_config(slam_config.get_config().train, "train").replace(**train_changes)
    embedding = onehot_embed if name.endswith("onehot_embed") else qwen2.Qwen2.embed
    with kernels_for_this_platform(), mock.patch.object(qwen2.Qwen2, "embed", embedding):
        return train_step.jax_step(cfg.replace(**model_changes), batch["input_ids"], train, batch)


def peak_flops() -> float | None:
    from benchmarks import train_step

    return train_step.vendor_peak()


def with_rates(figures: dict, tokens: int, flops_per_token: float) -> dict:
    if "seconds" in figures:
        figures["tokens_per_second"] = tokens / figures["seconds"]
        figures["model_tflops_per_second"] = flops_per_token * figures["tokens_per_second"] / 1e12
        peak = peak_flops()
        figures["mfu_vendor"] = figures["model_tflops_per_second"] * 1e12 / peak if peak else None
    return figures


def train_part(size: dict, repeats: int, only: list[str] | None = None) -> dict:
    cfg, rows, length = size["cfg"], size["rows"], size["length"]
    batch = packed_rows(rows, length, cfg.vocab_size)
    flops_per_token = metrics.flops_per_token(cfg, length)
    auto = attention.resolve("auto")
    found = {}
    for name in only or train_variants(auto):
        try:
            run, compile_seconds = variant_train_step(cfg, name, batch)
            figures = timed(run, repeats)
            figures["compile_seconds"] = compile_seconds
            found[name] = with_rates(figures, rows * length, flops_per_token)
        except Exception as error:  # noqa: BLE001
            found[name] = {"failed": f"{error.__class__.__name__}: {str(error)[:300]}"}
        jax.clear_caches()
    return {"auto_backend": auto, "batch": [rows, length], "flops_per_token": flops_per_token, "variants": found}


# ---- torch -------------------------------------------------------------------------------------------------


def torch_part(size: dict, repeats: int) -> dict:
    import torch

    from benchmarks import train_step

    cfg, rows, length = size["cfg"], size["rows"], size["length"]
    train = slam_config.get_config().train
    ids = packed_rows(rows, length, cfg.vocab_size)["input_ids"]
    device = common.torch_device()
    found = {}
    for name, strong in (("slamkit_like", False), ("compiled_fused_adamw", True)):
        try:
            run = train_step.torch_step(cfg, torch.bfloat16, ids, train, device, compiled=strong, fused=strong)
            found[name] = with_rates(timed(run, repeats), rows * length, metrics.flops_per_token(cfg, length))
        except Exception as error:  # noqa: BLE001
            found[name] = {"failed": f"{error.__class__.__name__}: {str(error)[:300]}"}
        torch.cuda.empty_cache() if device == "cuda" else None
    return {"device": device, "torch": torch.__version__, "batch": [rows, length], "variants": found}


# ---- profile -----------------------------------------------------------------------------------------------

PROFILED_STEPS = 2


def profile_part(out: Path, size: dict, repeats: int) -> dict:
    """The config's train step timed, then `PROFILED_STEPS` of it traced, and the trace summarised."""
    from benchmarks import trace_summary

    cfg, rows, length = size["cfg"], size["rows"], size["length"]
    variant = config_layout_variant(attention.resolve("auto"))
    folder = out / "profile"
    run, _ = variant_train_step(cfg, variant, packed_rows(rows, length, cfg.vocab_size))
    wall = timed(run, repeats)["seconds"]
    with jax.profiler.trace(str(folder), create_perfetto_trace=True):
        for _ in range(PROFILED_STEPS):
            run()
    jax.clear_caches()
    summary = trace_summary.summarise(trace_summary.load_events(folder), PROFILED_STEPS, wall)
    return {"variant": variant, "batch": [rows, length], "trace_folder": str(folder), **summary}


# ---- dpo, decode, pipeline ---------------------------------------------------------------------------------


def dpo_part(size: dict, repeats: int) -> dict:
    from benchmarks import dpo_step

    preset = "tiny" if size["rows"] < 8 else "slam"
    with kernels_for_this_platform():
        runs = dpo_step.steps(preset, size["length"])
        found = {name: timed(runs[name], repeats) for name in ("pretrain", "precomputed")}
    found["dpo_over_pretrain"] = found["precomputed"]["seconds"] / found["pretrain"]["seconds"]
    return {"preset": preset, "length": size["length"], "steps": found}


def decode_part(size: dict, repeats: int) -> dict:
    from benchmarks import generate

    # the toy model needs more than top-k 25 units, so its zeroed EOS logit is never sampled (no early stop)
    preset, model, lengths = ("slam", {}, {})
    if size["rows"] < 8:
        preset, model, lengths = ("tiny", {"num_units": 200}, {"NEW_TOKENS": 8, "PROMPT_UNITS": 6})
    with contextlib.ExitStack() as stack:
        for name, value in lengths.items():
            stack.enter_context(mock.patch.object(generate, name, value))
        fns, setup = generate.build(size["decode_batches"], ["bf16"], preset=preset, **model)
        return generate.summarise(common.alternate(fns, repeats), fns, setup, repeats)


def pipeline_part(size: dict, repeats: int, train_tokens_per_second: float | None) -> dict:
    from benchmarks import data_pipeline

    with tempfile.TemporaryDirectory() as folder:
        store, _ = data_pipeline.prepare_store(Path(folder), size["files"])
        found = {}
        for threads in (1, max(2, min(16, os.cpu_count() or 2))):
            found[f"threads_{threads}"] = data_pipeline.measure_pipeline(
                store, size["pipeline_batches"], repeats, threads=threads
            )
    best = max(figures["tokens_per_second"] for figures in found.values())
    return {
        "pipelines": found,
        "train_tokens_per_second": train_tokens_per_second,
        "pipeline_over_train": best / train_tokens_per_second if train_tokens_per_second else None,
    }


def config_layout_variant(auto: str) -> str:
    """The train variant of the `auto` backend with the layers as configs/slam.py has them (scanned or not)."""
    return f"{auto}_{'scan' if slam_config.get_config().model.scan_layers else 'unrolled'}"


def xla_flags_part(out: Path, tiny: bool, repeats: int, auto: str) -> dict:
    """The config's train step once per flag set, each in a fresh process (XLA reads its flags at start-up)."""
    flag_sets = GPU_FLAG_SETS if platform() == "gpu" else CPU_FLAG_SETS
    variant = config_layout_variant(auto)
    found = {}
    for name, flags in flag_sets.items():
        folder = out / f"xla_flags_{name}"
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
        command = [
            sys.executable,
            "-m",
            "benchmarks.gpu_suite",
            "--out",
            str(folder),
            "--parts",
            "train",
            "--repeats",
            str(repeats),
            "--variants",
            variant,
        ] + (["--tiny"] if tiny else [])
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        try:
            figures = json.loads((folder / "train.json").read_text())["variants"][variant]
            found[name] = {"flags": flags, **figures}
        except (OSError, KeyError, ValueError):
            found[name] = {"flags": flags, "failed": (done.stderr or done.stdout)[-500:]}
    return {"variant": variant, "flag_sets": found}


def vocoder_train_part(tiny: bool, repeats: int) -> dict:
    """benchmarks/vocoder_train.py at the paper's size and batch (16 x 14 frames), or its `--quick` sizes."""
    from benchmarks import vocoder_train
    from configs import vocoder as vocoder_config

    if tiny:
        quick = vocoder_train.QUICK
        return vocoder_train.measure(quick["size"], quick["batch"], quick["frames"], quick["steps"])
    paper = vocoder_config.get_config()
    return vocoder_train.measure("paper", paper.train.per_device_batch_size, paper.data.segment_frames, repeats)


# ---- driver ------------------------------------------------------------------------------------------------


def fastest_train(results: dict) -> float | None:
    variants = results.get("train", {}).get("variants", {})
    rates = [figures["tokens_per_second"] for figures in variants.values() if "tokens_per_second" in figures]
    return max(rates) if rates else None


def run_part(name: str, args, size: dict, results: dict) -> dict:
    repeats = args.repeats
    if name == "attention":
        return attention_part(size, repeats)
    if name == "train":
        return train_part(size, repeats, args.variants.split(",") if args.variants else None)
    if name == "torch":
        return torch_part(size, repeats)
    if name == "profile":
        return profile_part(args.out, size, repeats)
    if name == "dpo":
        return dpo_part(size, repeats)
    if name == "decode":
        return decode_part(size, repeats)
    if name == "pipeline":
        return pipeline_part(size, repeats, fastest_train(results))
    if name == "vocoder_train":
        return vocoder_train_part(args.tiny, repeats)
    return xla_flags_part(args.out, args.tiny, repeats, attention.resolve("auto"))


_NAMED_FIGURES = ("variants", "backends", "implementations", "steps", "pipelines", "flag_sets")


def profile_lines(result: dict) -> list[str]:
    wall = result["wall_seconds_per_step"]
    head = f"profile   {result['variant']}: busy {result['busy_seconds_per_step'] * 1e3:.2f} ms of {wall * 1e3:.2f} ms"
    lines = [f"{head} per step ({result['lines']})"]
    for name, figures in result["by_category"].items():
        share = figures["share_of_busy"]
        lines.append(f"profile     {name:32s} {figures['seconds_per_step'] * 1e3:9.2f} ms/step  {share:.0%} of busy")
    return lines


def report_lines(results: dict) -> list[str]:
    lines = []
    for part, result in results.items():
        if part == "machine":
            continue
        if "failed" in result:
            lines.append(f"{part}: failed: {result['failed'][:200]}")
            continue
        if part == "profile":
            lines += profile_lines(result)
            continue
        named = next((result[key] for key in _NAMED_FIGURES if isinstance(result.get(key), dict)), {})
        for name, figures in named.items():
            if not isinstance(figures, dict):
                continue
            figures = figures.get("forward_backward", figures)
            rate = figures.get("tokens_per_second") or figures.get("tokens_per_s")
            rate = f"  {rate:,.0f} tok/s" if rate else ""
            if "seconds" in figures:
                mfu = f"  MFU {figures['mfu_vendor']:.1%}" if figures.get("mfu_vendor") else ""
                lines.append(f"{part:9s} {name:34s} {figures['seconds']:9.4f} s{rate}{mfu}")
            elif rate:
                lines.append(f"{part:9s} {name:34s} {'':11s}{rate}")
            else:
                lines.append(f"{part:9s} {name:34s} {figures.get('failed', '')[:150]}")
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for <part>.json and suite.json")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (checks the suite end to end on a CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the first (median reported)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    parser.add_argument("--variants", default="", help="train variants to run (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts.split(",")) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {PARTS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    size = sizes(args.tiny)
    results = {"machine": common.machine()}
    for name in args.parts.split(","):
        start = time.perf_counter()
        try:
            results[name] = run_part(name, args, size, results)
        except Exception as error:  # noqa: BLE001 - the other parts still run
            results[name] = {"failed": f"{error.__class__.__name__}: {error}", "traceback": traceback.format_exc()}
        results[name]["part_seconds"] = time.perf_counter() - start
        (args.out / f"{name}.json").write_text(json.dumps(results[name], indent=2, default=str) + "\n")
        print(f"[gpu_suite] {name} done in {results[name]['part_seconds']:.1f} s", flush=True)
    (args.out / "suite.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("\n".join(report_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
