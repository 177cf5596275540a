"""Compile the real train step for hardware this machine lacks (a TPU or a GPU) and report what the program is.

    python -m benchmarks.compile --target h100 [--config configs/slam.py] [--json] [--set model.remat_policy=full]

Targets: `tpu-v5e`, `tpu-v6e`, `tpu-v4` (libtpu's topologies; install with `pip install -e ".[tpu]"`) and
`h100`, `h200`, `a100`, `a5000` (the GpuTargetConfigProto text files in `benchmarks/targets/`; install with
`pip install -e ".[cuda]"`). No accelerator is needed: JAX builds the target's devices from its description,
the project's `jit_train_step` is lowered with shape-only inputs at the config's per-device batch
(`train.per_device_batch_size` x `data.context_length`, `train.grad_accum_steps` micro-batches) on a mesh over
the target's chips, and XLA compiles it for that target. Run it with `JAX_PLATFORMS=cpu` (set here).

It reports, as one JSON object with `--json`:
- `compiled`: whether XLA compiled the step (`error` says why not);
- `attention_kernel`: the fused attention kernel found in the program (a cuDNN custom call, a Triton or a
  Mosaic kernel's name), or "none";
- `bytes_per_device`: arguments + temporaries + outputs - aliased (the donated state counted once), from the
  compiled memory analysis, beside `device_memory_bytes`, the target's memory, and `fits`;
- `dots_with_f32_operand` (and `dots`): matmuls in the compiled program (dot, convolution, cuBLAS calls)
  with a float32 operand;
- `model_flops_per_step`: 6 N + 6 L d T per token (docs/performance.md) x the tokens of one device's step.
No timing: the facts of the program, not its speed (no autotuning happens without the device).
"""

import argparse
import ast
import dataclasses
import importlib.util
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Only compiling: let several such processes (a test beside a report, say) load libtpu at once; without this
# the second one fails on libtpu's lockfile.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import common  # noqa: E402
from slam_jax import parallel  # noqa: E402
from slam_jax.models import attention, precision, qwen2  # noqa: E402
from slam_jax.training import loop, metrics, optimizer  # noqa: E402
from slam_jax.training import step as step_lib  # noqa: E402
from slam_jax.training.settings import ModelSettings, TrainSettings  # noqa: E402

TARGET_DIR = Path(__file__).resolve().parent / "targets"
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
    """A device to compile for: a TPU topology name, or a GPU description file."""

    platform: str  # "tpu" | "cuda"
    topology: str  # libtpu topology ("v5e:2x2") or the GPU topology ("1x1x1")
    device_memory_bytes: int = 0  # TPU HBM per chip (a GPU's comes from its description)
    description: str = ""  # GPU: file in benchmarks/targets/


TARGETS = {
    "tpu-v5e": Target("tpu", "v5e:2x2", 16 * GIB),
    "tpu-v6e": Target("tpu", "v6e:2x2", 32 * GIB),
    "tpu-v4": Target("tpu", "v4:2x2x1", 32 * GIB),
    "h100": Target("cuda", "1x1x1", description="h100.txtpb"),
    "h200": Target("cuda", "1x1x1", description="h200.txtpb"),
    "a100": Target("cuda", "1x1x1", description="a100.txtpb"),
    "a5000": Target("cuda", "1x1x1", description="a5000.txtpb"),
}


def target_devices(target: Target):
    """The target's devices, built from its description (nothing is attached to this machine)."""
    from jax.experimental import topologies

    if target.platform == "tpu":
        return topologies.get_topology_desc(platform="tpu", topology_name=target.topology).devices
    text = (TARGET_DIR / target.description).read_text()
    return topologies.get_topology_desc(platform="cuda", target_config=text, topology=target.topology).devices


def device_memory(target: Target) -> int:
    if target.device_memory_bytes:
        return target.device_memory_bytes
    found = re.search(r"device_memory_size:\s*(\d+)", (TARGET_DIR / target.description).read_text())
    return int(found.group(1))


def abstract_step(config, devices):
    """The project's compiled-step function and shape-only (state, batches, lr) for `devices`."""
    model_cfg = loop.build_model_config(
        ModelSettings.from_config(config.model, "model"), config.data.context_length, config.data.num_units
    )
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices=devices)
    chain = optimizer.build(TrainSettings.from_config(config.train, "train"))
    model = qwen2.abstract_model(model_cfg)
    params = nnx.state(model, nnx.Param).to_pure_dict()
    state = jax.eval_shape(lambda p: step_lib.init_state(p, chain), params)
    step = step_lib.jit_train_step(nnx.graphdef(model), chain, step_lib.train_state_shardings(state, mesh), mesh)
    rows = config.train.per_device_batch_size * mesh.shape["data"] * mesh.shape["fsdp"]
    shape = (config.train.grad_accum_steps, rows, config.data.context_length)
    ids = jax.ShapeDtypeStruct(shape, jnp.int32)
    batches = {"input_ids": ids, "segment_ids": ids, "positions": ids}
    return model_cfg, step, (state, batches, jax.ShapeDtypeStruct((), jnp.float32))


def compile_report(name: str, config) -> dict:
    """Compile `config`'s train step for the target `name` and describe the program."""
    target = TARGETS[name]
    devices = target_devices(target)
    kind = devices[0].device_kind
    if config.model.attention == "auto":
        config.model.attention = attention.choose(target.platform, kind)
    model_cfg, step, inputs = abstract_step(config, devices)
    train = config.train
    tokens = train.per_device_batch_size * config.data.context_length * train.grad_accum_steps
    result = {
        "benchmark": "compile",
        "target": name,
        "device_kind": kind,
        "devices": len(devices),
        "attention_backend": model_cfg.attention,
        "compute_dtype": model_cfg.compute_dtype,
        "remat_policy": model_cfg.remat_policy,
        "per_device_batch": [train.grad_accum_steps, train.per_device_batch_size, config.data.context_length],
        "model_flops_per_step": metrics.flops_per_token(model_cfg, config.data.context_length) * tokens,
        "device_memory_bytes": device_memory(target),
    }
    try:
        compiled = step.lower(*inputs).compile()
    except Exception as error:  # noqa: BLE001 - the report says why the target did not compile
        first_line = (str(error).strip().splitlines() or [""])[0]
        failed = {"attention_kernel": "none", "bytes_per_device": None, "dots_with_f32_operand": None}
        return {**result, **failed, "compiled": False, "error": f"{error.__class__.__name__}: {first_line[:500]}"}
    stats = compiled.memory_analysis()
    used = stats.argument_size_in_bytes + stats.temp_size_in_bytes + stats.output_size_in_bytes
    used -= stats.alias_size_in_bytes
    text = compiled.as_text()
    return {
        **result,
        "compiled": True,
        "attention_kernel": attention.kernel_in_program(text),
        "bytes_per_device": int(used),
        "gib_per_device": used / GIB,
        "fits": used <= result["device_memory_bytes"],
        **precision.matmul_census(text),
    }


def report_lines(result: dict) -> list[str]:
    head = f"{result['target']} ({result['device_kind']}, {result['devices']} device(s))"
    if not result["compiled"]:
        return [f"{head}: did not compile: {result['error']}"]
    return [
        f"{head}: compiled; attention {result['attention_backend']} -> kernel {result['attention_kernel']}",
        f"  {result['gib_per_device']:.2f} GiB per device of {result['device_memory_bytes'] / GIB:.1f} "
        f"(fits: {result['fits']}); {result['dots']} matmuls, {result['dots_with_f32_operand']} with a float32 "
        f"operand; {result['model_flops_per_step'] / 1e12:.1f} model TFLOP per device step",
    ]


def load_config(path: str, overrides: list[str]):
    """`get_config()` of a config file with `KEY=VALUE` overrides (values as Python literals, else strings)."""
    spec = importlib.util.spec_from_file_location("compile_target_config", path)
    if spec is None or not Path(path).is_file():
        raise SystemExit(f"--config {path}: no such config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        key, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        parent_key, _, leaf = key.rpartition(".")
        parent = config
        for part in filter(None, parent_key.split(".")):
            parent = parent[part]
        if leaf not in parent:
            raise SystemExit(f"--set {item}: {key} is not a key of {path}")
        parent[leaf] = value
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, choices=sorted(TARGETS))
    parser.add_argument("--config", default="configs/slam.py", help="config file (default: the paper's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    result = compile_report(args.target, load_config(args.config, args.set))
    result["machine"] = common.machine()
    common.emit(result, args.json, report_lines(result))
    return 0 if result["compiled"] else 1


if __name__ == "__main__":
    sys.exit(main())
