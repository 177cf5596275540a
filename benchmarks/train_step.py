"""One full training step of the `slam` config at batch B x 1024 (default 1): slam_jax against transformers, same run.

    python -m benchmarks.train_step [--json] [--repeats 3] [--batch 1] [--reference-bf16 auto|full|extrapolate]
                                    [--ablation]

JAX runs the project's `jit_train_step` (fp32 master params and AdamW moments, bf16 compute, token-mean
cross-entropy, clip 0.5, grad_accum 1) on a 1-device mesh. PyTorch runs `Qwen2ForCausalLM` (sdpa attention)
with `torch.optim.AdamW` and the same clip, its weights in bfloat16 (`model.to(torch.bfloat16)`, the
reference's recipe) or float32. Every implementation, and the 4096x4096 bf16->f32 XLA matmul that sets the
CPU's peak for MFU (docs/performance.md), is timed in alternating rounds after one warm-up each.

A CPU without native bf16 arithmetic (no avx512_bf16 / amx_bf16) runs PyTorch's bf16 matmuls in a scalar
fallback: a full bf16 step then takes tens of minutes. There `--reference-bf16 auto` (the default) times
bf16 models of 0 and 1 layers and extrapolates linearly to the full depth, and checks that method on fp32,
where the full model is measured too; `full` times the full bf16 model regardless.

On a machine with a GPU both run on it (JAX's default backend, PyTorch's "cuda"), the bf16 reference in full,
and MFU is also given against the vendor's dense bf16 peak (docs/performance.md: 989 TFLOP/s for the H100 SXM and
the H200): a 4096^2 matmul timed from Python is too short there to show the GPU's peak. Leave
`JAX_DEFAULT_MATMUL_PRECISION` unset there: "highest" made this bf16 step 2.7x slower on an H200.
"""

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from benchmarks import common
from benchmarks.forward import MATMUL_SIZE, peak_matmul, torch_model
from configs import slam as slam_config
from slam_jax import parallel
from slam_jax.models import attention, qwen2
from slam_jax.models import config as model_config
from slam_jax.training import metrics, optimizer
from slam_jax.training import step as step_lib
from slam_jax.training.settings import TrainSettings

BATCH, LENGTH = 1, 1024
LEARNING_RATE = 1e-4
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PROBE_LAYERS = (0, 1)
VENDOR_BF16_PEAK = {"H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s, SXM parts (docs/performance.md)


def batch_ids(vocab_size: int, batch: int = BATCH) -> np.ndarray:
    """Random unit tokens [batch, LENGTH] (ids 0 and 1 are BOS/EOS)."""
    return np.random.default_rng(0).integers(2, vocab_size, (batch, LENGTH)).astype(np.int32)


def vendor_peak() -> float | None:
    """The vendor's dense bf16 FLOP/s of JAX's first accelerator, when it is one of `VENDOR_BF16_PEAK`'s."""
    for kind in common.accelerators()[:1]:
        for name, peak in VENDOR_BF16_PEAK.items():
            if name in kind:
                return peak
    return None


def jax_step(
    cfg: model_config.ModelConfig, ids: np.ndarray, train, packed: dict | None = None
) -> tuple[Callable[[], object], float]:
    """The project's compiled train step on one device, ready to call (the state is threaded and donated).

    Rows are `ids`, one unpacked sequence each, or `packed` ({input_ids, segment_ids, positions} [rows, length]).
    """
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    chain = optimizer.build(train)
    model = qwen2.init_model(cfg)
    graphdef, params = nnx.graphdef(model), qwen2.get_params(model)
    abstract = jax.eval_shape(lambda p: step_lib.init_state(p, chain), params)
    shardings = step_lib.train_state_shardings(abstract, mesh)
    holder = {"state": jax.jit(lambda p: step_lib.init_state(p, chain), out_shardings=shardings)(params)}
    packed = packed or {
        "input_ids": ids,
        "segment_ids": np.ones(ids.shape, np.int32),
        "positions": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape),
    }
    batches = {name: jnp.asarray(array)[None] for name, array in packed.items()}
    learning_rate = jnp.asarray(LEARNING_RATE, jnp.float32)
    start = time.perf_counter()
    compiled = (
        step_lib.jit_train_step(graphdef, chain, shardings, mesh)
        .lower(holder["state"], batches, learning_rate)
        .compile()
    )
    compile_seconds = time.perf_counter() - start

    def run() -> dict:
        holder["state"], step_metrics = compiled(holder["state"], batches, learning_rate)
        return jax.block_until_ready(step_metrics)

    return run, compile_seconds


def torch_step(
    cfg: model_config.ModelConfig,
    dtype: torch.dtype,
    ids: np.ndarray,
    train,
    device: str = "cpu",
    compiled: bool = False,
    fused: bool = False,
) -> Callable[[], object]:
    """One `Qwen2ForCausalLM` training step (loss, backward, clip, AdamW) with weights in `dtype` on `device`;
    `compiled`: the model under `torch.compile`; `fused`: AdamW's fused kernel."""
    model = torch_model(cfg).to(device=device, dtype=dtype).train()
    adamw = torch.optim.AdamW(
        model.parameters(),
        lr=LEARNING_RATE,
        betas=(train.adam_b1, train.adam_b2),
        eps=train.adam_eps,
        weight_decay=train.weight_decay,
        fused=fused or None,
    )
    forward = torch.compile(model) if compiled else model
    input_ids = torch.from_numpy(ids).long().to(device)

    def run() -> float:
        loss = forward(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        adamw.step()
        adamw.zero_grad(set_to_none=True)
        return loss.item()

    return run


def has_native_bf16() -> bool:
    return any(flag in common.cpu_flags() for flag in NATIVE_BF16_FLAGS)


def build(reference_bf16: str, batch: int = BATCH) -> tuple[dict[str, Callable[[], object]], dict]:
    """Every timed function by name (alternating JAX and PyTorch), and facts about the set-up."""
    cfg = model_config.slam(compute_dtype="bfloat16")
    train = TrainSettings.from_config(slam_config.get_config().train, "train")
    ids = batch_ids(cfg.vocab_size, batch)
    torch.set_num_threads(os.cpu_count())
    device = common.torch_device()
    extrapolate = reference_bf16 == "extrapolate" or (
        reference_bf16 == "auto" and device == "cpu" and not has_native_bf16()
    )
    fns = {"peak_matmul": peak_matmul()}
    fns["jax"], compile_seconds = jax_step(cfg, ids, train)
    fns["torch_fp32"] = torch_step(cfg, torch.float32, ids, train, device)
    if extrapolate:
        for layers in PROBE_LAYERS:
            for short, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
                fns[f"torch_{short}_{layers}_layers"] = torch_step(
                    cfg.replace(num_layers=layers), dtype, ids, train, device
                )
    else:
        fns["torch_bf16"] = torch_step(cfg, torch.bfloat16, ids, train, device)
    setup = {
        "batch": batch,
        "num_layers": cfg.num_layers,
        "compile_seconds": compile_seconds,
        "reference_bf16_method": f"extrapolated from {PROBE_LAYERS} layers" if extrapolate else "measured",
        "torch_threads": torch.get_num_threads(),
        "non_embedding_params": cfg.num_params(include_embedding=False),
        "flops_per_token": metrics.flops_per_token(cfg, LENGTH),
    }
    return fns, setup


def extrapolated(times: dict[str, list[float]], short: str, num_layers: int) -> float:
    """Median seconds of a `num_layers` step from the 0- and 1-layer medians: t(0) + L (t(1) - t(0))."""
    empty, one = (common.median(times[f"torch_{short}_{layers}_layers"]) for layers in PROBE_LAYERS)
    return empty + num_layers * (one - empty)


def step_seconds(times: dict[str, list[float]], setup: dict) -> dict[str, float]:
    """Median step seconds of jax, torch_fp32 and torch_bf16 (extrapolated when it was not measured)."""
    seconds = {name: common.median(times[name]) for name in ("jax", "torch_fp32")}
    if "torch_bf16" in times:
        seconds["torch_bf16"] = common.median(times["torch_bf16"])
    else:
        seconds["torch_bf16"] = extrapolated(times, "bf16", setup["num_layers"])
        seconds["torch_fp32_extrapolated"] = extrapolated(times, "fp32", setup["num_layers"])
    return seconds


def summarise(times: dict[str, list[float]], setup: dict, repeats: int) -> dict:
    """Tokens/s of each implementation, the JAX/PyTorch ratios and MFU against the run's best matmul."""
    peak = 2 * MATMUL_SIZE**3 / min(times["peak_matmul"])
    seconds = step_seconds(times, setup)
    tokens = {name: setup["batch"] * LENGTH / value for name, value in seconds.items()}
    model_flops = tokens["jax"] * setup["flops_per_token"]
    vendor = vendor_peak()
    result = {
        "benchmark": "train_step",
        "config": "slam",
        "batch": setup["batch"],
        "length": LENGTH,
        "repeats": repeats,
        "tokens_per_second": tokens["jax"],
        "reference_bf16_tokens_per_second": tokens["torch_bf16"],
        "reference_fp32_tokens_per_second": tokens["torch_fp32"],
        "ratio_vs_reference_bf16": tokens["jax"] / tokens["torch_bf16"],
        "ratio_vs_reference_fp32": tokens["jax"] / tokens["torch_fp32"],
        "mfu": model_flops / peak,
        "vendor_bf16_peak": vendor,
        "mfu_vendor": model_flops / vendor if vendor else None,
        "model_flops_per_second": model_flops,
        "flops_per_token": setup["flops_per_token"],
        "non_embedding_params": setup["non_embedding_params"],
        "step_seconds": seconds,
        "reference_bf16_method": setup["reference_bf16_method"],
        "peak_matmul": {"shape": [MATMUL_SIZE, MATMUL_SIZE], "flops_per_second": peak},
        "jax_compile_seconds": setup["compile_seconds"],
        "torch_threads": setup["torch_threads"],
        "all_seconds": times,
        "machine": common.machine(),
    }
    if "torch_fp32_extrapolated" in seconds:
        result["fp32_extrapolation_error"] = seconds["torch_fp32_extrapolated"] / seconds["torch_fp32"] - 1
    return result


def report_lines(result: dict) -> list[str]:
    seconds = result["step_seconds"]
    peak = result["peak_matmul"]["flops_per_second"]
    lines = [
        f"slam train step, batch {result['batch']} x {result['length']}, median of {result['repeats']} after a "
        f"warm-up; peak (best bf16->f32 {MATMUL_SIZE}^2 XLA matmul) {peak / 1e9:.0f} GFLOP/s",
        f"slam_jax (bf16 compute, fp32 master)  {seconds['jax']:8.2f} s  {result['tokens_per_second']:7.1f} tokens/s  "
        f"MFU {result['mfu']:.1%}"
        + (
            f" (of the vendor's {result['vendor_bf16_peak'] / 1e12:.0f} TFLOP/s: {result['mfu_vendor']:.1%})"
            if result["vendor_bf16_peak"]
            else ""
        ),
        f"PyTorch bf16 ({result['reference_bf16_method']})  {seconds['torch_bf16']:8.2f} s  "
        f"{result['reference_bf16_tokens_per_second']:7.1f} tokens/s",
        f"PyTorch fp32  {seconds['torch_fp32']:8.2f} s  {result['reference_fp32_tokens_per_second']:7.1f} tokens/s",
        f"JAX / PyTorch bf16: {result['ratio_vs_reference_bf16']:.2f}x; JAX / PyTorch fp32: "
        f"{result['ratio_vs_reference_fp32']:.2f}x",
    ]
    if "fp32_extrapolation_error" in result:
        lines.append(
            f"the extrapolation checked on fp32: {result['fp32_extrapolation_error']:+.1%} off the measured step"
        )
    lines.append(f"{common.describe(result['machine'])}; {result['machine']['versions']}")
    return lines


def plain_attention(q, k, v, segment_ids):
    """Causal attention as the first session wrote it: one block over every key, scores kept for the backward."""
    return attention.grouped_attention(q, k, v, attention.sequence_mask(segment_ids))


# slam_jax's step with one change undone each (`--ablation`): the effect of each change on this machine.
ABLATIONS = {
    "as_is": {},
    "attention_one_block": {"XLA_BLOCK": LENGTH},  # rematerialised, but no keys skipped
    "attention_plain": {"KERNELS": {**attention.KERNELS, "xla": plain_attention}},  # not blocked, not remat
}


def patched_step_seconds(cfg, ids, train, patches: dict, repeats: int, precision: str | None = None) -> dict:
    """Median seconds of slam_jax's step compiled with `patches` (attribute: value) applied to the `attention`
    module, under the matmul `precision` when one is given."""
    with contextlib.ExitStack() as stack:
        for attribute, value in patches.items():
            stack.enter_context(mock.patch.object(attention, attribute, value))
        if precision:
            stack.enter_context(jax.default_matmul_precision(precision))
        run, compile_seconds = jax_step(cfg, ids, train)
    times = common.alternate({"step": run}, repeats)["step"]
    return {"seconds": common.median(times), "all_seconds": times, "compile_seconds": compile_seconds}


def ablation(repeats: int) -> dict:
    """Median step seconds of slam_jax's step under each `ABLATIONS` entry (plus float32 compute), one variant
    after another (each holds a 4.3 GB train state: they do not fit in memory together)."""
    train = TrainSettings.from_config(slam_config.get_config().train, "train")
    found = {}
    variants = [(name, changes, "bfloat16") for name, changes in ABLATIONS.items()] + [
        ("float32_compute", {}, "float32")
    ]
    for name, changes, dtype in variants:
        cfg = model_config.slam(compute_dtype=dtype)
        found[name] = patched_step_seconds(cfg, batch_ids(cfg.vocab_size), train, changes, repeats)
        found[name]["tokens_per_second"] = BATCH * LENGTH / found[name]["seconds"]
    return {"benchmark": "train_step_ablation", "repeats": repeats, "variants": found, "machine": common.machine()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (median reported)")
    parser.add_argument("--batch", type=int, default=BATCH, help="sequences of 1024 tokens per step")
    parser.add_argument(
        "--reference-bf16",
        choices=("auto", "full", "extrapolate"),
        default="auto",
        help="time the full PyTorch bf16 model, or extrapolate it from 0 and 1 layers (auto: when the CPU lacks bf16)",
    )
    parser.add_argument(
        "--ablation", action="store_true", help="time only slam_jax's step with each optimisation undone in turn"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ablation:
        result = ablation(args.repeats)
        lines = [
            f"{name:20s} {v['seconds']:8.2f} s  {v['tokens_per_second']:6.1f} tokens/s"
            for name, v in result["variants"].items()
        ]
        common.emit(result, args.json, lines)
        return 0
    fns, setup = build(args.reference_bf16, args.batch)
    result = summarise(common.alternate(fns, args.repeats), setup, args.repeats)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
