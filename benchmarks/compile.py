"""Compile the real train step for hardware this machine lacks (a TPU or a GPU) and report what the program is.

    python -m benchmarks.compile --target h100 [--config configs/slam.py] [--json] [--set model.remat_policy=full]
    python -m benchmarks.compile --target tpu-v5e-16 --json [--config.mesh.data=1 --config.mesh.fsdp=16]

Targets: `tpu-v5e`, `tpu-v6e`, `tpu-v4` (libtpu's topologies; install with `pip install -e ".[tpu]"`) and
`h100`, `h200`, `a100`, `a5000` (the GpuTargetConfigProto text files in `benchmarks/targets/`; install with
`pip install -e ".[cuda]"`). No accelerator is needed: JAX builds the target's devices from its description,
the project's `jit_train_step` is lowered with shape-only inputs at the config's per-device batch
(`train.per_device_batch_size` x `data.context_length`, `train.grad_accum_steps` micro-batches) on a mesh over
the target's chips, and XLA compiles it for that target. Run it with `JAX_PLATFORMS=cpu` (set here).

Multi-host targets, one program for every chip of a pod or cluster (what each of its processes compiles):
`tpu-v5e-16` (v5e 4x4: 16 chips on 4 hosts), `tpu-v6e-16` (v6e 4x4: 16 chips, 4 hosts), `tpu-v4-32` (v4
2x2x4, megacore: 16 chips, 4 hosts), `tpu-v5p-32` (v5p 2x2x4: 16 chips, 4 hosts), `tpu-v5e-64` (v5e 8x8: 64
chips, 16 hosts) and `h100-2x8` (2 hosts of 8 H100s). Where the config leaves the mesh at its default (pure
data parallelism: `mesh.data=-1`, `mesh.fsdp=1`, `mesh.tensor=1`, as `configs/slam.py` does), a multi-host
target splits it data = hosts x fsdp = chips per host: parameters and optimiser state are sharded over one
host's chips (all-gathers and reduce-scatters stay within a host; the topology lists its devices host by host),
gradients are reduced across hosts. Any other mesh in the config or an override (`--set mesh.fsdp=16` or,
as the training command spells it, `--config.mesh.fsdp=16`) is compiled as given.

It reports, as one JSON object with `--json`:
- `compiled`: whether XLA compiled the step (`error` says why not);
- `attention_kernel`: the fused attention kernel found in the program (a cuDNN custom call, a Triton or a
  Mosaic kernel's name), or "none";
- `bytes_per_device`: arguments + temporaries + outputs - aliased (the donated state counted once), from the
  compiled memory analysis, beside `device_memory_bytes`, the target's memory, and `fits`;
- `dots_with_f32_operand` (and `dots`): matmuls in the compiled program (dot, convolution, cuBLAS calls)
  with a float32 operand;
- `model_flops_per_step`: 6 N + 6 L d T per token (docs/performance.md) x the tokens of one device's step;
- `hosts` (the processes a job on the target runs, one per host), `devices_per_host`, `chips`, `mesh` (data,
  fsdp, tensor), `fsdp_within_host` (every fsdp group on one host), `global_batch` ([micro-batches, rows of all
  devices, length]);
- `collectives`: the collective operations in the compiled program's text by kind (all-reduce, all-gather,
  reduce-scatter, all-to-all, collective-permute; an async pair counts once, a loop body's once however often
  it runs);
- `bytes_per_chip` (and `gib_per_chip`): `bytes_per_device` x the devices of one chip (1 but for a v4 without
  megacore, `tpu-v4`); `compile_seconds`: lowering and compiling on this machine.
No timing of the step: the facts of the program, not its speed (no autotuning happens without the device).
"""

import argparse
import ast
import dataclasses
import importlib.util
import os
import re
import sys
import time

from slam_jax.paths import Path

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
    topology: str  # libtpu topology ("v5e:2x2") or the GPU topology ("slices x hosts x GPUs per host": "1x2x8")
    device_memory_bytes: int = 0  # TPU HBM per chip (a GPU's comes from its description)
    description: str = ""  # GPU: file in benchmarks/targets/
    chip_config: str = ""  # TPU: libtpu's chip_config_name ("megacore": a v4 chip's two cores as one device)


TARGETS = {
    "tpu-v5e": Target("tpu", "v5e:2x2", 16 * GIB),
    "tpu-v6e": Target("tpu", "v6e:2x2", 32 * GIB),
    "tpu-v4": Target("tpu", "v4:2x2x1", 32 * GIB),
    "h100": Target("cuda", "1x1x1", description="h100.txtpb"),
    "h200": Target("cuda", "1x1x1", description="h200.txtpb"),
    "a100": Target("cuda", "1x1x1", description="a100.txtpb"),
    "a5000": Target("cuda", "1x1x1", description="a5000.txtpb"),
    # multi-host: a pod slice or a GPU cluster, every chip in one program (the hosts from libtpu's topology)
    "tpu-v5e-16": Target("tpu", "v5e:4x4", 16 * GIB),
    "tpu-v6e-16": Target("tpu", "v6e:4x4", 32 * GIB),
    "tpu-v4-32": Target("tpu", "v4:2x2x4", 32 * GIB, chip_config="megacore"),  # v4-32: 32 cores = 16 chips
    "tpu-v5p-32": Target("tpu", "v5p:2x2x4", 95 * GIB),  # v5p-32: 16 chips (megacore by default), 95 GiB HBM
    "tpu-v5e-64": Target("tpu", "v5e:8x8", 16 * GIB),
    "h100-2x8": Target("cuda", "1x2x8", description="h100.txtpb"),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# an HLO instruction's opcode follows its result type and a space: `%x = f32[8]{0} all-reduce(%y), ...`; an
# async pair is `all-gather-start(` + `all-gather-done(`, counted by its start
_COLLECTIVE_OP = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def target_devices(target: Target):
    """The target's devices, built from its description (nothing is attached to this machine)."""
    from jax.experimental import topologies

    if target.platform == "tpu":
        options = {"chip_config_name": target.chip_config} if target.chip_config else {}
        return topologies.get_topology_desc(platform="tpu", topology_name=target.topology, **options).devices
    text = (TARGET_DIR / target.description).read_text()
    return topologies.get_topology_desc(platform="cuda", target_config=text, topology=target.topology).devices


def device_memory(target: Target) -> int:
    if target.device_memory_bytes:
        return target.device_memory_bytes
    found = re.search(r"device_memory_size:\s*(\d+)", (TARGET_DIR / target.description).read_text())
    return int(found.group(1))


def hosts_of(devices) -> int:
    """How many processes a job on these devices runs: one per host (`process_index`)."""
    return len({device.process_index for device in devices})


def chips_of(devices) -> int:
    """Physical chips: a TPU chip's cores share its coordinates; a GPU is one chip."""
    return len({(device.process_index, tuple(getattr(device, "coords", None) or (device.id,))) for device in devices})


def pod_mesh(config, devices) -> None:
    """A multi-host target's mesh where the config leaves the default (pure data parallelism): data = hosts x
    fsdp = devices per host, so parameters are sharded within a host and gradients reduced across hosts."""
    hosts = hosts_of(devices)
    mesh = config.mesh
    if hosts > 1 and (mesh.data, mesh.fsdp, mesh.tensor) == (-1, 1, 1):
        mesh.data, mesh.fsdp = hosts, len(devices) // hosts


def fsdp_within_host(mesh) -> bool:
    """Whether every fsdp group (the devices one parameter shard is gathered from) is on one host."""
    groups = mesh.devices.transpose(0, 2, 1).reshape(-1, mesh.shape["fsdp"])
    return all(len({device.process_index for device in group}) == 1 for group in groups)


def collective_counts(hlo_text: str) -> dict[str, int]:
    """Collective operations in a compiled program's HLO text, by kind (each instruction once, loops not unrolled)."""
    counts = dict.fromkeys(COLLECTIVES, 0)
    for found in _COLLECTIVE_OP.finditer(hlo_text):
        counts[found.group(1)] += 1
    return counts


def abstract_step(config, devices):
    """The project's model config, mesh, compiled-step function and shape-only (state, batches, lr) for
    `devices`."""
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
    return model_cfg, mesh, step, (state, batches, jax.ShapeDtypeStruct((), jnp.float32))


def compile_report(name: str, config) -> dict:
    """Compile `config`'s train step for the target `name` and describe the program."""
    target = TARGETS[name]
    devices = target_devices(target)
    kind = devices[0].device_kind
    if config.model.attention == "auto":
        config.model.attention = attention.choose(target.platform, kind)
    pod_mesh(config, devices)
    model_cfg, mesh, step, inputs = abstract_step(config, devices)
    train = config.train
    tokens = train.per_device_batch_size * config.data.context_length * train.grad_accum_steps
    hosts, chips = hosts_of(devices), chips_of(devices)
    rows = train.per_device_batch_size * parallel.data_parallel_size(mesh)
    result = {
        "benchmark": "compile",
        "target": name,
        "device_kind": kind,
        "devices": len(devices),
        "hosts": hosts,
        "devices_per_host": len(devices) // hosts,
        "chips": chips,
        "mesh": dict(mesh.shape),
        "fsdp_within_host": fsdp_within_host(mesh),
        "attention_backend": model_cfg.attention,
        "compute_dtype": model_cfg.compute_dtype,
        "remat_policy": model_cfg.remat_policy,
        "per_device_batch": [train.grad_accum_steps, train.per_device_batch_size, config.data.context_length],
        "global_batch": [train.grad_accum_steps, rows, config.data.context_length],
        "model_flops_per_step": metrics.flops_per_token(model_cfg, config.data.context_length) * tokens,
        "device_memory_bytes": device_memory(target),
    }
    start = time.perf_counter()
    try:
        compiled = step.lower(*inputs).compile()
    except Exception as error:  # noqa: BLE001 - the report says why the target did not compile
        first_line = (str(error).strip().splitlines() or [""])[0]
        failed = {"attention_kernel": "none", "bytes_per_device": None, "dots_with_f32_operand": None}
        return {**result, **failed, "compiled": False, "error": f"{error.__class__.__name__}: {first_line[:500]}"}
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    used = stats.argument_size_in_bytes + stats.temp_size_in_bytes + stats.output_size_in_bytes
    used -= stats.alias_size_in_bytes
    per_chip = used * len(devices) // chips
    text = compiled.as_text()
    return {
        **result,
        "compiled": True,
        "compile_seconds": round(seconds, 1),
        "attention_kernel": attention.kernel_in_program(text),
        "bytes_per_device": int(used),
        "gib_per_device": used / GIB,
        "bytes_per_chip": int(per_chip),
        "gib_per_chip": per_chip / GIB,
        "fits": used <= result["device_memory_bytes"],
        "collectives": collective_counts(text),
        **precision.matmul_census(text),
    }


def report_lines(result: dict) -> list[str]:
    """The human-readable report."""
    mesh = " x ".join(f"{axis} {size}" for axis, size in result["mesh"].items())
    head = f"{result['target']} ({result['device_kind']}, {result['devices']} device(s) on {result['hosts']} host(s))"
    if not result["compiled"]:
        return [f"{head}: did not compile: {result['error']}"]
    collectives = ", ".join(f"{kind} {count}" for kind, count in result["collectives"].items())
    return [
        f"{head}: compiled in {result['compile_seconds']:.0f} s; attention {result['attention_backend']} -> kernel "
        f"{result['attention_kernel']}",
        f"  {result['gib_per_device']:.2f} GiB per device of {result['device_memory_bytes'] / GIB:.1f} "
        f"(fits: {result['fits']}); {result['dots']} matmuls, {result['dots_with_f32_operand']} with a float32 "
        f"operand; {result['model_flops_per_step'] / 1e12:.1f} model TFLOP per device step",
        f"  mesh {mesh} (fsdp within a host: {result['fsdp_within_host']}); collectives: {collectives}",
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


def training_style_overrides(arguments: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--config.KEY=VALUE` (as `slam_jax.main` spells an override) -> `KEY=VALUE`; anything else is an error."""
    overrides = []
    for argument in arguments:
        if not (argument.startswith("--config.") and "=" in argument):
            parser.error(f"unrecognized argument: {argument}")
        overrides.append(argument.removeprefix("--config."))
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, choices=sorted(TARGETS))
    parser.add_argument("--config", default="configs/slam.py", help="config file (default: the paper's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args, extra = parser.parse_known_args(argv)
    overrides = args.set + training_style_overrides(extra, parser)
    result = compile_report(args.target, load_config(args.config, overrides))
    result["machine"] = common.machine()
    common.emit(result, args.json, report_lines(result))
    return 0 if result["compiled"] else 1


if __name__ == "__main__":
    sys.exit(main())
