"""Where the `slam` train step's time goes: slam_jax's step under variants, beside PyTorch bf16, one process.

    python -m benchmarks.step_variants [--json] [--batch 8] [--repeats 5]

Each variant is the project's compiled `jit_train_step` (as `benchmarks.train_step` builds it) with one thing
changed: the default or the "highest" matmul precision, the causal attention swapped for
`jax.nn.dot_product_attention` (cuDNN's fused kernel, causal only, or XLA's, masked), attention left out (an
upper bound, not a model), or the remat policy the paper's config uses. PyTorch's `Qwen2ForCausalLM` step in
bf16 (the reference's recipe) is timed first, on the GPU when there is one. Model TFLOP/s count 6N + 6LdT per
token (PERFORMANCE.md). A variant that cannot run here (cuDNN's on a CPU) is reported as failed, with why.
Run it on a GPU: on a CPU every variant takes minutes.
"""

import argparse
import sys

import jax
import torch

from benchmarks import common
from benchmarks import train_step as ts
from configs import slam as slam_config
from slam_jax.models import config as model_config


def cudnn_attention(q, k, v, mask, config):
    """cuDNN's fused causal attention (ignores `mask`: right for one unpacked sequence per row)."""
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn").reshape(*q.shape[:2], -1)


def xla_attention(q, k, v, mask, config):
    """XLA's `dot_product_attention` under the model's segment-aware causal mask."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, :, 0], implementation="xla").reshape(*q.shape[:2], -1)


def no_attention(q, k, v, mask, config):
    """The queries passed straight on: the step without attention's cost (an upper bound, not a model)."""
    return q.reshape(*q.shape[:2], -1)


VARIANTS = {  # name: (module patches, matmul precision, remat policy)
    "as_is": ({}, None, "none"),
    "as_is_precision_highest": ({}, "highest", "none"),
    "cudnn_attention": ({"causal_attention": cudnn_attention}, None, "none"),
    "xla_dot_product_attention": ({"causal_attention": xla_attention}, None, "none"),
    "no_attention": ({"causal_attention": no_attention}, None, "none"),
    "as_is_remat_dots_no_batch": ({}, None, "dots_no_batch"),
}


def measure(batch: int, repeats: int) -> dict:
    train = slam_config.get_config().train
    cfg = model_config.slam(compute_dtype="bfloat16")
    ids = ts.batch_ids(cfg.vocab_size, batch)
    flops = ts.metrics.flops_per_token(cfg, ts.LENGTH) * batch * ts.LENGTH
    device = common.torch_device()
    reference = common.alternate({"torch": ts.torch_step(cfg, torch.bfloat16, ids, train, device)}, repeats)["torch"]
    found = {"torch_bf16": {"seconds": common.median(reference), "all_seconds": reference}}
    for name, (patches, precision, remat) in VARIANTS.items():
        try:
            found[name] = ts.patched_step_seconds(
                cfg.replace(remat_policy=remat), ids, train, patches, repeats, precision
            )
        except Exception as error:  # noqa: BLE001 - one variant failing must not lose the others
            found[name] = {"failed": f"{error.__class__.__name__}: {str(error)[:300]}"}
    for figures in found.values():
        if "seconds" in figures:
            figures["model_tflops_per_s"] = flops / figures["seconds"] / 1e12
            figures["over_torch_bf16"] = found["torch_bf16"]["seconds"] / figures["seconds"]
    return {
        "benchmark": "step_variants",
        "batch": batch,
        "length": ts.LENGTH,
        "repeats": repeats,
        "model_flops_per_step": flops,
        "variants": found,
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    lines = [f"slam train step, batch {result['batch']} x {result['length']}, median of {result['repeats']}"]
    for name, figures in result["variants"].items():
        if "failed" in figures:
            lines.append(f"{name:28s} failed: {figures['failed']}")
            continue
        lines.append(
            f"{name:28s} {figures['seconds']:8.4f} s  {figures['model_tflops_per_s']:6.1f} TFLOP/s  "
            f"{figures['over_torch_bf16']:.2f}x PyTorch bf16"
        )
    lines.append(common.describe(result["machine"]))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_variants", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--batch", type=int, default=8, help="sequences of 1024 tokens per step")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up (median reported)")
    args = parser.parse_args(argv)
    result = measure(args.batch, args.repeats)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
