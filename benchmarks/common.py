"""Helpers shared by the benchmarks: machine description, timing, medians and output."""

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata

_ENV_VARS = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "JAX_PLATFORMS", "JAX_DEFAULT_MATMUL_PRECISION")
_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "transformers", "torch", "orbax-checkpoint", "safetensors")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to `platform.processor()`)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The AVX-512 / AMX / bf16 feature flags of the CPU, the ones that decide matmul speed."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(flag for flag in flags if flag.startswith(("avx512", "amx")) or "bf16" in flag)
    except OSError:
        pass
    return []


def versions() -> dict[str, str]:
    """Installed versions of the packages the benchmarks touch (absent ones are left out)."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def torch_device() -> str:
    """Where the PyTorch reference runs: "cuda" when PyTorch sees a GPU, else "cpu" (JAX, likewise, takes the GPU
    when its CUDA plugin is installed), so that both implementations run on the same kind of device."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync(device: str) -> None:
    """Wait for PyTorch's queued GPU work (a no-op on the CPU), so that a timer around it sees all of it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def accelerators() -> list[str]:
    """JAX's devices other than CPUs, by kind ("NVIDIA H200", ...); empty on a CPU-only machine."""
    import jax

    return [device.device_kind for device in jax.devices() if device.platform != "cpu"]


def placement() -> dict[str, str | None]:
    """Where JAX runs, and PyTorch in a benchmark that uses it (one that imported it: this does not import
    PyTorch for the others), with the float32 matmul precision each uses by default."""
    import jax

    found = {
        "jax_backend": jax.default_backend(),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
    }
    if "torch" in sys.modules:
        found["torch_device"] = torch_device()
        found["torch_float32_matmul_precision"] = sys.modules["torch"].get_float32_matmul_precision()
    return found


def describe(machine_report: dict) -> str:
    """One line of `machine()`'s report: CPU, cores, accelerators, load, and where each library ran."""
    where = machine_report["placement"]
    return (
        f"machine: {machine_report['cpu_model']}, {machine_report['cores']} cores, accelerators "
        f"{machine_report['accelerators']}, load {machine_report['load_average']}; JAX on {where['jax_backend']}"
        + (f", PyTorch on {where['torch_device']}" if "torch_device" in where else "")
    )


def machine() -> dict:
    """CPU model, cores, memory, accelerators and where JAX and PyTorch run, OS, versions, threading variables
    and the load average (1, 5, 15 min).

    The load average, taken when the report is made, shows whether other work shared the machine meanwhile.
    """
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return {
        "accelerators": accelerators(),
        "placement": placement(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "memory_bytes": pages * page_size,
        "platform": platform.platform(),
        "versions": versions(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "env": {name: os.environ[name] for name in _ENV_VARS if name in os.environ},
    }


def seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of `fn` (which must block until its work is done)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time every function `repeats` times, in rounds that alternate them, after one warm-up call each.

    Rounds keep a slow spell of a shared machine from landing on one implementation only.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(seconds(fn))
    return times


def alternate_keeping_outputs(
    fns: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """`alternate` over the functions, keeping each one's last output (for agreement figures)."""
    outputs = {}

    def keeping(name, fn):
        def run():
            outputs[name] = fn()

        return run

    return alternate({name: keeping(name, fn) for name, fn in fns.items()}, repeats), outputs


def audio_rates(times: dict[str, list[float]], audio_seconds: float, reference: str) -> dict[str, dict]:
    """Per implementation: median and all seconds, audio seconds per second, and the speed-up over `reference`."""
    rates = {
        name: {
            "seconds": median(values),
            "all_seconds": values,
            "audio_seconds_per_second": audio_seconds / median(values),
        }
        for name, values in times.items()
    }
    for figures in rates.values():
        figures["speedup_over_reference"] = (
            figures["audio_seconds_per_second"] / rates[reference]["audio_seconds_per_second"]
        )
    return rates


def audio_rate_line(name: str, figures: dict, name_width: int = 24) -> str:
    """One implementation's figures from `audio_rates` as a report line (callers append what else they measured)."""
    return (
        f"{name:{name_width}s} {figures['seconds']:7.2f} s  {figures['audio_seconds_per_second']:7.2f} audio s/s  "
        f"{figures['speedup_over_reference']:.2f}x"
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


def emit(result: dict, as_json: bool, lines: list[str]) -> None:
    """Print `result` as one JSON object, or the human-readable `lines`."""
    print(json.dumps(result, indent=2) if as_json else "\n".join(lines))
