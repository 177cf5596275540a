"""The vocoder's training step compiled for a TPU or a GPU this machine does not have: what it needs of memory.

    python -m benchmarks.compile_vocoder --target tpu-v5e [--config configs/vocoder.py] [--set KEY=VALUE] [--json]

The step `mode: train_vocoder` runs: `jit_vocoder_step` with `VocoderTrainer.build_model`'s graphs, optimisers
and state (built as benchmarks/vocoder_train.py builds them), for the config (default configs/vocoder.py, the
paper's: 16 rows of 14 frames per device, the duration predictor, full discriminators), on ONE chip of the target
(its devices from benchmarks/compile.py's `target_devices`: libtpu's topology or the GPU description), lowered with
shape-only inputs and compiled by XLA for that target. Reported from the compiled program's memory analysis:
arguments (the state and the batch), outputs, temporaries, aliased (the donated state, counted once), generated
code, and `bytes_per_device` = arguments + temporaries + outputs - aliased against the device's memory (`fits`);
the program's FLOPs (XLA's cost analysis, where the target gives one) and the compile seconds on this machine.

    python -m benchmarks.compile_vocoder --target tpu-v5e --buffer-assignment only [--wait-seconds 7200] [--json]

`--buffer-assignment` compiles in a child process that dumps XLA's buffer assignment and reports its memory
figures (`buffer_assignment`: the same fields, benchmarks/buffer_assignment.py) as soon as XLA has written them:
`only` stops the compile there (the TPU code generator takes hours for the paper's step on a 2-core host, the
buffer assignment seconds), `also` waits for the compiled report too. On a GPU both agree to the byte.
"""

import argparse
import json
import os
import sys
import time

# As benchmarks/compile.py: only compiling, on the CPU, for devices built from their description.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import buffer_assignment, common, vocoder_train  # noqa: E402
from benchmarks import compile as compile_benchmark  # noqa: E402
from slam_jax import parallel  # noqa: E402
from slam_jax.training import vocoder as training  # noqa: E402

GIB = compile_benchmark.GIB
BATCH_DTYPES = {"units": jnp.int32, "audio": jnp.float32, "run_units": jnp.int32, "run_frames": jnp.int32}
BATCH_DTYPES["num_runs"] = jnp.int32


def job_of(config) -> training.VocoderJob:
    if not config.data.train_path:
        config.data.train_path = "(compile only: no data is read)"
    return training.VocoderJob.from_config(config, "config")


def abstract_inputs(job: training.VocoderJob, trainer, abstract_state, mesh) -> tuple:
    """Shape-only (state, batch, learning rate) with the step's shardings: the state replicated, rows split."""
    shardings = trainer.state_shardings(abstract_state)
    state = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_state,
        shardings,
    )
    rows = job.train.per_device_batch_size * parallel.data_parallel_size(mesh)
    frames, hop = job.data.segment_frames, trainer.model_config.hop_length
    shapes = {
        "units": (rows, frames),
        "audio": (rows, frames * hop),
        "run_units": (rows, frames),
        "run_frames": (rows, frames),
        "num_runs": (rows,),
    }
    batch = {
        key: jax.ShapeDtypeStruct(
            shape, BATCH_DTYPES[key], sharding=parallel.batch_sharding(mesh, trailing_axes=len(shape) - 1)
        )
        for key, shape in shapes.items()
    }
    learning_rate = jax.ShapeDtypeStruct((), jnp.float32, sharding=parallel.replicated(mesh))
    return state, batch, learning_rate


def memory_figures(compiled, device_memory: int) -> dict:
    """The compiled program's memory analysis, and its total per device against `device_memory`."""
    stats = compiled.memory_analysis()
    used = stats.argument_size_in_bytes + stats.temp_size_in_bytes + stats.output_size_in_bytes
    used -= stats.alias_size_in_bytes
    return {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
        "generated_code_bytes": int(stats.generated_code_size_in_bytes),
        "bytes_per_device": int(used),
        "gib_per_device": used / GIB,
        "fits": used <= device_memory,
    }


def flops_of(compiled) -> float | None:
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every target reports costs
        return None
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def describe(name: str, config, devices: int = 1) -> tuple[dict, object, tuple]:
    """(the report's facts of the step on `devices` chips of the target `name`, the jitted step, its inputs)."""
    target = compile_benchmark.TARGETS[name]
    all_devices = compile_benchmark.target_devices(target)
    mesh = parallel.make_mesh(devices=all_devices[:devices])
    job = job_of(config)
    trainer, abstract_state = vocoder_train.build_model(job, mesh)
    step = vocoder_train.jit_step(trainer, abstract_state, job, mesh, vocoder_train.BATCH_DIMS)
    inputs = abstract_inputs(job, trainer, abstract_state, mesh)
    model_config = trainer.model_config
    frames = job.data.segment_frames
    result = {
        "benchmark": "compile_vocoder",
        "target": name,
        "device_kind": all_devices[0].device_kind,
        "devices": devices,
        "mesh": dict(mesh.shape),
        "architecture": training.manifest_architecture(model_config),
        "discriminator_divisor": job.model.discriminator_divisor,
        "grouped_convolutions": trainer.grouping,
        "per_device_batch": [job.train.per_device_batch_size, frames * model_config.hop_length],
        "audio_seconds_per_device_step": job.train.per_device_batch_size
        * frames
        * model_config.hop_length
        / model_config.sampling_rate,
        "state_bytes": sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(abstract_state)),
        "device_memory_bytes": compile_benchmark.device_memory(target),
    }
    return result, step, inputs


def compile_report(name: str, config, devices: int = 1) -> dict:
    """Compile the config's vocoder step for `devices` chips of the target `name` and describe its memory."""
    result, step, inputs = describe(name, config, devices)
    start = time.perf_counter()
    try:
        compiled = step.lower(*inputs).compile()
    except Exception as error:  # noqa: BLE001 - the report says why the target did not compile
        first_line = (str(error).strip().splitlines() or [""])[0]
        return {**result, "compiled": False, "error": f"{error.__class__.__name__}: {first_line[:500]}"}
    return {
        **result,
        "compiled": True,
        "compile_seconds": round(time.perf_counter() - start, 1),
        **memory_figures(compiled, result["device_memory_bytes"]),
        "flops_per_step": flops_of(compiled),
    }


def buffer_assignment_report(args, forwarded: list[str], config) -> dict:
    """The step compiled in a child process that dumps XLA's buffer assignment (benchmarks/buffer_assignment.py):
    its figures as soon as they are written; with `--buffer-assignment also` the child's compiled report too
    (the two side by side), with `only` the child is stopped there (its code generation never waited for)."""
    result, step, _ = describe(args.target, config, args.devices)
    program = getattr(step, "__name__", "traced")
    command = [sys.executable, "-m", "benchmarks.compile_vocoder", *forwarded, "--json"]
    outcome = buffer_assignment.run_dumping(command, program, args.buffer_assignment == "also", args.wait_seconds)
    if outcome.found is None:
        return {**result, "compiled": False, "error": outcome.error, "child_log_tail": outcome.log_tail}
    found = buffer_assignment.with_fit(outcome.found, result["device_memory_bytes"], outcome.seconds)
    report = {**result, "compiled": False, "buffer_assignment": found}
    if outcome.stdout:
        report |= {key: value for key, value in json.loads(outcome.stdout).items() if key != "machine"}
    if outcome.error:
        report["error"] = outcome.error
    return report


def report_lines(result: dict) -> list[str]:
    head = f"{result['target']} ({result['device_kind']}, {result['devices']} device(s))"
    lines = []
    if "buffer_assignment" in result:
        found = result["buffer_assignment"]
        lines.append(
            f"{head}: vocoder step's buffer assignment (before code generation, after {found['seconds']:.0f} s): "
            f"{found['gib_per_device']:.2f} GiB per device of {result['device_memory_bytes'] / GIB:.1f} "
            f"(fits: {found['fits']}): arguments {found['argument_bytes'] / GIB:.3f} GiB, temporaries "
            f"{found['temp_bytes'] / GIB:.2f} GiB, outputs {found['output_bytes'] / GIB:.3f} GiB, aliased "
            f"{found['alias_bytes'] / GIB:.3f} GiB"
        )
    if not result["compiled"] and "error" not in result:
        return [*lines, f"{head}: the compile was stopped after its buffer assignment (--buffer-assignment only)"]
    if not result["compiled"]:
        return [*lines, f"{head}: vocoder step did not compile: {result['error']}"]
    flops = f"; {result['flops_per_step'] / 1e12:.2f} TFLOP per step" if result["flops_per_step"] else ""
    return [
        *lines,
        f"{head}: vocoder step compiled in {result['compile_seconds']:.0f} s; {result['architecture']}, "
        f"discriminators / {result['discriminator_divisor']}, {result['per_device_batch']} samples per device",
        f"  {result['gib_per_device']:.2f} GiB per device of {result['device_memory_bytes'] / GIB:.1f} "
        f"(fits: {result['fits']}): arguments {result['argument_bytes'] / GIB:.3f} GiB (state "
        f"{result['state_bytes'] / GIB:.3f}), temporaries {result['temp_bytes'] / GIB:.2f} GiB, outputs "
        f"{result['output_bytes'] / GIB:.3f} GiB, aliased {result['alias_bytes'] / GIB:.3f} GiB{flops}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_vocoder", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, choices=sorted(compile_benchmark.TARGETS))
    parser.add_argument("--config", default="configs/vocoder.py", help="config file (default: the paper's)")
    parser.add_argument("--devices", type=int, default=1, help="chips of the target the step's rows split over")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    buffer_assignment.add_arguments(parser, "the step")
    args, extra = parser.parse_known_args(argv)
    overrides = args.set + compile_benchmark.training_style_overrides(extra, parser)
    config = compile_benchmark.load_config(args.config, overrides)
    if args.buffer_assignment:
        forwarded = ["--target", args.target, "--config", args.config, "--devices", str(args.devices)]
        forwarded += [item for override in overrides for item in ("--set", override)]
        result = buffer_assignment_report(args, forwarded, config)
    else:
        result = compile_report(args.target, config, args.devices)
    result["machine"] = common.machine()
    common.emit(result, args.json, report_lines(result))
    return 0 if result["compiled"] or (args.buffer_assignment == "only" and "buffer_assignment" in result) else 1


if __name__ == "__main__":
    sys.exit(main())
