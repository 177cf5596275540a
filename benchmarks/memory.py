"""XLA's compiled memory analysis of the paper's training step on one device, per remat policy.

    python -m benchmarks.memory [--json] [--policies none,dots_no_batch,full] [--budget-gib 22]

The step is the project's own `jit_train_step` (the `slam` config, bf16 compute, fp32 master params and AdamW
moments, the optax chain of `configs/slam.py`) on a 1-device mesh, lowered with abstract
`jax.ShapeDtypeStruct` inputs (nothing is allocated) for the paper's batch: 16 accumulated micro-batches of
8 x 1024 tokens. `paper_step_bytes` = temp + argument + output - alias: everything the step holds at its peak,
counting the donated state once (it is both an argument and the output that aliases it). The analysis comes
from the backend this runs on (CPU by default), whose fusion and scheduling differ a little from a GPU's.
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import common
from configs import slam as slam_config
from slam_jax import parallel
from slam_jax.models import config as model_config
from slam_jax.models import qwen2
from slam_jax.training import optimizer
from slam_jax.training import step as step_lib
from slam_jax.training.settings import TrainSettings

PER_DEVICE_BATCH, LENGTH, ACCUMULATION = 8, 1024, 16
POLICIES = ("none", "dots_no_batch", "full")
GIB = 2**30


def abstract_inputs(cfg: model_config.ModelConfig, train) -> tuple:
    """Shape-only (state, batches, learning rate) of the paper's step, and the compiled step function."""
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    chain = optimizer.build(train)
    model = qwen2.abstract_model(cfg)
    params = nnx.state(model, nnx.Param).to_pure_dict()
    state = jax.eval_shape(lambda p: step_lib.init_state(p, chain), params)
    step = step_lib.jit_train_step(nnx.graphdef(model), chain, step_lib.train_state_shardings(state, mesh), mesh)
    rows = jax.ShapeDtypeStruct((ACCUMULATION, PER_DEVICE_BATCH, LENGTH), jnp.int32)
    batches = {"input_ids": rows, "segment_ids": rows, "positions": rows}
    return step, (state, batches, jax.ShapeDtypeStruct((), jnp.float32))


def analyse(policy: str, budget_bytes: float) -> dict:
    """Compiled memory figures of the paper's step under one remat policy."""
    cfg = model_config.slam(compute_dtype="bfloat16", remat_policy=policy)
    step, inputs = abstract_inputs(cfg, TrainSettings.from_config(slam_config.get_config().train, "train"))
    start = time.perf_counter()
    stats = step.lower(*inputs).compile().memory_analysis()
    total = (
        stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
    )
    return {
        "paper_step_bytes": total,
        "paper_step_gib": total / GIB,
        "fits_budget": total <= budget_bytes,
        "temp_bytes": stats.temp_size_in_bytes,
        "argument_bytes": stats.argument_size_in_bytes,
        "output_bytes": stats.output_size_in_bytes,
        "alias_bytes": stats.alias_size_in_bytes,
        "compile_seconds": time.perf_counter() - start,
    }


def recommend(policies: dict[str, dict]) -> str | None:
    """The first policy (in order of least recomputation) whose step fits the budget, or None."""
    return next((name for name in POLICIES if name in policies and policies[name]["fits_budget"]), None)


def report_lines(result: dict) -> list[str]:
    lines = [
        f"paper step (slam, bf16 compute, fp32 master, {ACCUMULATION} x {PER_DEVICE_BATCH} x {LENGTH} per device) "
        f"on {result['backend']}; budget {result['budget_gib']:g} GiB"
    ]
    for name, figures in result["policies"].items():
        lines.append(
            f"remat {name:14s} {figures['paper_step_gib']:6.2f} GiB  (temp {figures['temp_bytes'] / GIB:.2f}, "
            f"arguments {figures['argument_bytes'] / GIB:.2f}, outputs {figures['output_bytes'] / GIB:.2f}, "
            f"aliased {figures['alias_bytes'] / GIB:.2f})  fits: {figures['fits_budget']}"
        )
    lines.append(f"recommended remat_policy: {result['recommended_remat_policy'] or 'none of them fits'}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma list of remat policies")
    parser.add_argument("--budget-gib", type=float, default=22.0, help="device memory budget (paper: 24 GB A5000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = args.budget_gib * GIB
    policies = {name: analyse(name, budget) for name in args.policies.split(",")}
    result = {
        "benchmark": "memory",
        "config": "slam",
        "per_device_batch": PER_DEVICE_BATCH,
        "length": LENGTH,
        "accumulation_steps": ACCUMULATION,
        "backend": jax.default_backend(),
        "budget_gib": args.budget_gib,
        "formula": "paper_step_bytes = temp + argument + output - alias",
        "policies": policies,
        "recommended_remat_policy": recommend(policies),
        "paper_step_bytes": {name: figures["paper_step_bytes"] for name, figures in policies.items()},
        "machine": common.machine(),
    }
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
