"""Forward pass of the `slam` config at batch 1 x 1024: slam_jax (JAX) against transformers (PyTorch), same run.

    python -m benchmarks.forward [--json] [--repeats 3]

JAX runs the model with float32 master weights cast to the compute dtype inside the jitted forward, with the
layers under `lax.scan` and unrolled; PyTorch runs `Qwen2ForCausalLM` (sdpa attention) with its weights in
bfloat16 or float32 under `torch.inference_mode()`. All implementations, and the 4096x4096 bf16->f32 XLA matmul
that sets the CPU's peak for MFU (docs/performance.md), are timed in alternating rounds after one warm-up each.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from transformers import Qwen2Config, Qwen2ForCausalLM

from benchmarks import common
from slam_jax.models import config as model_config
from slam_jax.models import qwen2

BATCH, LENGTH = 1, 1024
MATMUL_SIZE = 4096
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def forward_flops(cfg: model_config.ModelConfig) -> float:
    """Model FLOPs of one forward pass over BATCH x LENGTH tokens: (6N + 6LdT) / 3 per token."""
    n = cfg.num_params(include_embedding=False)
    return (6 * n + 6 * cfg.num_layers * cfg.hidden_size * LENGTH) / 3 * BATCH * LENGTH


def peak_matmul() -> Callable[[], object]:
    """One jitted 4096x4096 bf16-input, f32-accumulating matmul, compiled and ready to time."""
    a = jax.random.normal(jax.random.key(0), (MATMUL_SIZE, MATMUL_SIZE), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (MATMUL_SIZE, MATMUL_SIZE), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32)).lower(a, b).compile()
    return lambda: matmul(a, b).block_until_ready()


def jax_forward(cfg: model_config.ModelConfig, params: dict, ids: np.ndarray) -> tuple[Callable[[], object], float]:
    """A compiled slam_jax forward over `ids` with `cfg`'s dtype and layer loop, and its compile seconds."""
    graphdef, state = nnx.split(qwen2.model_from_params(cfg, params))
    ids = jnp.asarray(ids, jnp.int32)
    start = time.perf_counter()
    compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, ids).compile()
    compile_seconds = time.perf_counter() - start
    return lambda: compiled(state, ids).block_until_ready(), compile_seconds


def torch_model(cfg: model_config.ModelConfig) -> Qwen2ForCausalLM:
    """transformers' Qwen2ForCausalLM with `cfg`'s shapes, random float32 weights, in eval mode."""
    hf_config = Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        use_cache=False,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(hf_config).eval()


def torch_forward(model: Qwen2ForCausalLM, ids: np.ndarray) -> Callable[[], object]:
    """One inference-mode forward of `model` over `ids`."""
    input_ids = torch.from_numpy(ids).long()

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=input_ids, use_cache=False).logits

    return run


def build() -> tuple[dict[str, Callable[[], object]], dict]:
    """Every timed function by name (alternating JAX and PyTorch), and facts about the set-up."""
    base = model_config.slam(compute_dtype="float32")
    ids = np.random.default_rng(0).integers(0, base.vocab_size, (BATCH, LENGTH))
    params = qwen2.get_params(qwen2.init_model(base))
    torch.set_num_threads(os.cpu_count())
    fns = {"peak_matmul": peak_matmul()}
    compile_seconds = {}
    for short, dtype in DTYPES.items():
        for loop, scan in (("scan", True), ("unrolled", False)):
            name = f"jax_{short}_{loop}"
            cfg = base.replace(compute_dtype=dtype, scan_layers=scan)
            fns[name], compile_seconds[name] = jax_forward(cfg, params, ids)
        model = torch_model(base).to(getattr(torch, dtype))
        fns[f"torch_{short}"] = torch_forward(model, ids)
    setup = {
        "attn_implementation": model.config._attn_implementation,
        "torch_threads": torch.get_num_threads(),
        "compile_seconds": compile_seconds,
        "non_embedding_params": base.num_params(include_embedding=False),
        "flops_per_forward": forward_flops(base),
    }
    return fns, setup


def summarise(times: dict[str, list[float]], setup: dict, repeats: int) -> dict:
    """Medians, tokens/s, MFU against the best matmul of the run, and JAX/PyTorch ratios."""
    matmul_seconds = min(times["peak_matmul"])
    peak = 2 * MATMUL_SIZE**3 / matmul_seconds
    flops = setup["flops_per_forward"]
    implementations = {}
    for name, values in times.items():
        if name == "peak_matmul":
            continue
        seconds = common.median(values)
        implementations[name] = {
            "seconds": seconds,
            "all_seconds": values,
            "tokens_per_s": BATCH * LENGTH / seconds,
            "model_flops_per_s": flops / seconds,
            "mfu": flops / seconds / peak,
        }
        if name in setup["compile_seconds"]:
            implementations[name]["compile_seconds"] = setup["compile_seconds"][name]
    tokens = {name: figures["tokens_per_s"] for name, figures in implementations.items()}
    ratios = {
        short: {loop: tokens[f"jax_{short}_{loop}"] / tokens[f"torch_{short}"] for loop in ("scan", "unrolled")}
        for short in DTYPES
    }
    return {
        "benchmark": "forward",
        "config": "slam",
        "batch": BATCH,
        "length": LENGTH,
        "repeats": repeats,
        "non_embedding_params": setup["non_embedding_params"],
        "flops_per_forward": flops,
        "peak_matmul": {
            "shape": [MATMUL_SIZE, MATMUL_SIZE],
            "best_seconds": matmul_seconds,
            "all_seconds": times["peak_matmul"],
            "flops_per_s": peak,
        },
        "torch_attn_implementation": setup["attn_implementation"],
        "torch_threads": setup["torch_threads"],
        "implementations": implementations,
        "jax_over_torch_tokens_per_s": ratios,
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    peak = result["peak_matmul"]["flops_per_s"]
    lines = [
        f"slam forward, batch {result['batch']} x {result['length']}, median of {result['repeats']} "
        f"after a warm-up; peak (best bf16->f32 4096^2 XLA matmul) {peak / 1e9:.0f} GFLOP/s",
    ]
    for name, figures in result["implementations"].items():
        compiled = f", compile {figures['compile_seconds']:.1f} s" if "compile_seconds" in figures else ""
        lines.append(
            f"{name:18s} {figures['seconds']:7.3f} s  {figures['tokens_per_s']:7.1f} tokens/s  "
            f"{figures['model_flops_per_s'] / 1e9:6.1f} GFLOP/s  MFU {figures['mfu']:.1%}{compiled}"
        )
    for short, by_loop in result["jax_over_torch_tokens_per_s"].items():
        lines.append(f"JAX / PyTorch tokens/s, {short}: " + ", ".join(f"{k} {v:.2f}x" for k, v in by_loop.items()))
    machine = result["machine"]
    lines.append(
        f"machine: {machine['cpu_model']}, {machine['cores']} cores, load average {machine['load_average']}, "
        f"{machine['versions']}"
    )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.forward", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (median reported)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fns, setup = build()
    result = summarise(common.alternate(fns, args.repeats), setup, args.repeats)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
