"""Decode speed of the `slam` config: slam_jax `SpeechLM.generate` against transformers `generate`, same run.

    python -m benchmarks.generate [--json] [--repeats 3] [--batches 1,32] [--dtypes fp32]

Both continue the same prompts (BOS + 75 units = 3 s at 25 Hz, the paper's prompt) by 150 new tokens with the
paper's sampling (temperature 0.8, top-k 25), the same random weights and their KV caches: slam_jax in one
compiled `lax.while_loop` (weights cast once to the compute dtype), transformers with
`generate(do_sample=True)` and its dynamic cache, weights in the same dtype, under `torch.inference_mode()`.
The weights' PAD and EOS embedding rows are zero, so no row ever stops early: every run makes exactly
batch x 150 tokens (checked). Tokens/s = batch x 150 / seconds, prefill included; implementations alternate in
rounds after one warm-up each (which, for JAX, compiles); medians reported.

On a machine with a GPU both run on it (JAX's default backend, PyTorch's "cuda"); the report names where each
ran. For float32 on a GPU, JAX's default matmul precision may use TF32 where PyTorch's default does not: set
`JAX_DEFAULT_MATMUL_PRECISION=highest` to time both at full float32.

The default dtype is fp32: on a CPU, both XLA and PyTorch run bf16 matmuls of decode shapes (a few rows
against a weight matrix) many times slower than fp32, as the matmul probe printed beside the figures shows;
`--dtypes bf16,fp32` times both.
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

from benchmarks import common
from benchmarks.scoring import DTYPES, slam_params, torch_twin
from slam_jax import tokens
from slam_jax.models import qwen2
from slam_jax.models.speech_lm import SpeechLM

PROMPT_UNITS = 75
NEW_TOKENS = 150
TEMPERATURE, TOP_K = 0.8, 25


class FirstCall:
    """`fn` that remembers how long its first call took (for JAX: compile + one run)."""

    def __init__(self, fn: Callable[[], object]):
        self.fn, self.first_seconds = fn, None

    def __call__(self):
        if self.first_seconds is None:
            start = time.perf_counter()
            self.fn()
            self.first_seconds = time.perf_counter() - start
            return None
        return self.fn()


def matmul_probe(device: str, rows=(1, 32), hidden: int = 896, out: int = 4 * 4864, repeats: int = 5) -> dict:
    """Milliseconds (best of `repeats`) of one [rows, hidden] x [hidden, out] matmul in XLA (float32
    accumulation) and PyTorch on `device`, float32 and bfloat16: four `slam` MLP projections' worth of weights (70
    MB in float32, more than the CPU caches hold, as a decode step streams them)."""
    found = {}
    for dtype in ("float32", "bfloat16"):
        for count in rows:
            x, w = jnp.ones((count, hidden), dtype), jnp.ones((hidden, out), dtype)
            matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
            matmul(x, w).block_until_ready()
            found[f"xla_{dtype}_rows{count}"] = 1e3 * min(
                common.seconds(lambda x=x, w=w, matmul=matmul: matmul(x, w).block_until_ready()) for _ in range(repeats)
            )
            tx, tw = (
                torch.ones(count, hidden, dtype=getattr(torch, dtype), device=device),
                torch.ones(hidden, out, dtype=getattr(torch, dtype), device=device),
            )

            def torch_matmul(tx=tx, tw=tw):
                tx @ tw
                common.torch_sync(device)

            torch_matmul()
            found[f"torch_{dtype}_rows{count}"] = 1e3 * min(common.seconds(torch_matmul) for _ in range(repeats))
    return found


def prompts_for(batch: int, num_units: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    units = rng.integers(0, num_units, (batch, PROMPT_UNITS)) + tokens.UNIT_OFFSET
    return np.concatenate([np.full((batch, 1), tokens.BOS_ID), units], axis=1)


def jax_run(model: SpeechLM, prompts: np.ndarray) -> Callable[[], object]:
    def run():
        new_ids = model.generate(prompts, NEW_TOKENS, TEMPERATURE, TOP_K)
        if new_ids.shape != (len(prompts), NEW_TOKENS) or (new_ids < tokens.UNIT_OFFSET).any():
            raise RuntimeError("slam_jax stopped early or emitted PAD/EOS")

    return run


def torch_run(model, prompts: np.ndarray, device: str) -> Callable[[], object]:
    input_ids = torch.from_numpy(prompts).long().to(device)
    attention_mask = torch.ones_like(input_ids)

    def run():
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=TEMPERATURE,
                top_k=TOP_K,
                max_new_tokens=NEW_TOKENS,
                pad_token_id=tokens.PAD_ID,
                eos_token_id=tokens.EOS_ID,
                bos_token_id=tokens.BOS_ID,
            )
        common.torch_sync(device)
        if out.shape[1] - prompts.shape[1] != NEW_TOKENS:
            raise RuntimeError("transformers stopped early")

    return run


def build(batches: list[int], dtypes: list[str], preset: str = "slam", **sizes) -> tuple[dict[str, FirstCall], dict]:
    """Timed functions by name (JAX and PyTorch alternating, per dtype and batch) and facts about the set-up;
    `preset` and `sizes` (e.g. num_units) choose the model."""
    config, params = slam_params(preset=preset, **sizes)
    torch.set_num_threads(os.cpu_count())
    device = common.torch_device()
    fns = {}
    for short in dtypes:
        model = SpeechLM(qwen2.model_from_params(config.replace(compute_dtype=DTYPES[short]), params))
        twin = torch_twin(config, params, DTYPES[short]).to(device)
        for batch in batches:
            prompts = prompts_for(batch, config.vocab_size - tokens.UNIT_OFFSET)
            fns[f"jax_{short}_batch{batch}"] = FirstCall(jax_run(model, prompts))
            fns[f"torch_{short}_batch{batch}"] = FirstCall(torch_run(twin, prompts, device))
    setup = {
        "torch_threads": torch.get_num_threads(),
        "attn_implementation": twin.config._attn_implementation,
        "matmul_probe_ms": matmul_probe(device),
    }
    return fns, setup


def summarise(times: dict[str, list[float]], fns: dict[str, FirstCall], setup: dict, repeats: int) -> dict:
    """Medians, tokens/s, first-call seconds and JAX/PyTorch ratios per dtype and batch."""
    implementations = {}
    for name, values in times.items():
        batch = int(name.rsplit("batch", 1)[1])
        implementations[name] = {
            "batch": batch,
            "seconds": common.median(values),
            "all_seconds": values,
            "tokens_per_s": batch * NEW_TOKENS / common.median(values),
            "first_call_seconds": fns[name].first_seconds,
        }
    ratios = {}
    for name, figures in implementations.items():
        if name.startswith("jax_"):
            other = implementations["torch_" + name[len("jax_") :]]
            short, batch = name[len("jax_") :].split("_batch")
            ratios.setdefault(short, {})[f"batch{batch}"] = figures["tokens_per_s"] / other["tokens_per_s"]
    return {
        "benchmark": "generate",
        "config": "slam",
        "repeats": repeats,
        "prompt_tokens": PROMPT_UNITS + 1,
        "new_tokens": NEW_TOKENS,
        "sampling": {"temperature": TEMPERATURE, "top_k": TOP_K},
        "torch_threads": setup["torch_threads"],
        "torch_attn_implementation": setup["attn_implementation"],
        "implementations": implementations,
        "jax_over_torch_tokens_per_s": ratios,
        "matmul_probe_ms": setup["matmul_probe_ms"],
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    lines = [
        f"slam decode: prompt {result['prompt_tokens']} tokens + {result['new_tokens']} sampled (T "
        f"{result['sampling']['temperature']}, top-k {result['sampling']['top_k']}), median of {result['repeats']}"
    ]
    for name, figures in result["implementations"].items():
        lines.append(
            f"{name:22s} {figures['seconds']:8.2f} s  {figures['tokens_per_s']:7.1f} tokens/s  "
            f"(first call {figures['first_call_seconds']:.1f} s)"
        )
    for short, by_batch in result["jax_over_torch_tokens_per_s"].items():
        lines.append(f"JAX / PyTorch tokens/s, {short}: " + ", ".join(f"{k} {v:.2f}x" for k, v in by_batch.items()))
    probe = ", ".join(f"{name} {ms:.1f}" for name, ms in result["matmul_probe_ms"].items())
    lines.append(f"matmul probe [rows, 896] x [896, 19456], ms: {probe}")
    lines.append(common.describe(result["machine"]))
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (median reported)")
    parser.add_argument("--batches", default="1,32", help="comma list of batch sizes")
    parser.add_argument("--dtypes", default="fp32", help="comma list of bf16, fp32")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    batches = [int(batch) for batch in args.batches.split(",") if batch.strip()]
    fns, setup = build(batches, [short.strip() for short in args.dtypes.split(",") if short.strip()])
    result = summarise(common.alternate(fns, args.repeats), fns, setup, args.repeats)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
