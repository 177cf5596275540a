"""Where a profiled step's time goes: a summary of the Perfetto trace that `jax.profiler.trace` writes.

    summary = trace_summary.summarise(trace_events, steps=2)

`jax.profiler.trace(folder, create_perfetto_trace=True)` writes `folder/plugins/profile/<run>/*.trace.json.gz`:
Chrome-trace events, one process per device (`/device:GPU:0`, `/device:TPU:0`) or per host (`/host:CPU`), each
with named lines (threads); a `/device:CUSTOM:...` process holds no device work. What the devices ran is read
from one kind of line, so no time counts twice:
- a GPU's `Stream` lines: one event per kernel, named as it ran (a Triton or cuBLAS gemm, the Pallas or cuDNN
  attention kernel, an XLA fusion);
- else `XLA Ops` lines (a TPU): one event per HLO op;
- else (a CPU) the host's XLA threads (`tf_XLA...`), markers (`end: ...`), waits and wrappers left out.
Ops are grouped by what they are (attention kernel, matmul, collective, copy or transpose, other: the fused
elementwise and reduction work), and the busy time per step is set beside the step's wall-clock time: the rest
is the device waiting (launches, the host, synchronisation).
"""

import collections
import gzip
import json
import re

from slam_jax.paths import Path

CATEGORIES = (  # first match wins; names are lowercased
    ("attention", re.compile(r"mha|sdpa|flash|splash|attention|cudnn")),
    ("matmul", re.compile(r"gemm|dot|cublas|matmul|convolution|xmma|cutlass|nvjet")),
    ("collective", re.compile(r"all-reduce|all_reduce|all-gather|all_gather|reduce-scatter|collective|nccl")),
    ("copy_transpose", re.compile(r"copy|transpose|memcpy|memset")),
)
_HOST_SKIPPED = re.compile(r"^end: |ThreadPool|ThunkExecutor|^\$")  # markers, waits, wrappers of the ops


def category(name: str) -> str:
    lowered = name.lower()
    return next((label for label, pattern in CATEGORIES if pattern.search(lowered)), "other")


def load_events(folder: Path) -> list[dict]:
    """The events of the newest Perfetto trace under `folder` (a `jax.profiler.trace` log folder)."""
    runs = sorted(Path(folder).glob("plugins/profile/*/"), key=lambda path: path.stat().st_mtime)
    traces = sorted(runs[-1].glob("*trace.json.gz"), key=_perfetto_first) if runs else []
    if not traces:
        raise FileNotFoundError(f"{folder}: no plugins/profile/*/perfetto_trace.json.gz (was the trace written?)")
    with gzip.open(traces[0], "rt") as stream:
        data = json.load(stream)
    return data["traceEvents"] if isinstance(data, dict) else data


def _perfetto_first(path: Path) -> tuple[bool, str]:
    return path.name != "perfetto_trace.json.gz", path.name


def device_lines(events: list[dict]) -> tuple[set[tuple[int, int]], str]:
    """The (pid, tid) lines that hold what the devices ran, and which kind they are."""
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "process_name"}
    lines = {
        (e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "thread_name"
    }
    devices = {pid for pid, name in processes.items() if re.match(r"/device:(GPU|TPU)", name)}
    on_devices = {key: name for key, name in lines.items() if key[0] in devices}
    for kind, wanted in (("streams", lambda n: n.startswith("Stream")), ("xla_ops", lambda n: n == "XLA Ops")):
        chosen = {key for key, name in on_devices.items() if wanted(name)}
        if chosen:
            return chosen, kind
    hosts = {pid for pid, name in processes.items() if name.startswith("/host:")}
    return {key for key, name in lines.items() if key[0] in hosts and name.startswith("tf_XLA")}, "host_xla_threads"


def summarise(events: list[dict], steps: int, wall_seconds_per_step: float | None = None, top: int = 25) -> dict:
    """Busy time per step by category and by op (the `top` longest), from complete events ("X") on the device
    lines; `wall_seconds_per_step` (measured outside the trace) gives the idle share."""
    lines, kind = device_lines(events)
    by_op, by_category, count = collections.Counter(), collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") != "X" or (event.get("pid"), event.get("tid")) not in lines:
            continue
        if kind == "host_xla_threads" and _HOST_SKIPPED.search(event["name"]):
            continue
        microseconds = float(event.get("dur", 0.0))
        by_op[event["name"]] += microseconds
        by_category[category(event["name"])] += microseconds
        count[event["name"]] += 1
    busy = sum(by_category.values()) / steps / 1e6
    summary = {
        "lines": kind,
        "line_count": len(lines),
        "steps": steps,
        "busy_seconds_per_step": busy,
        "by_category": {
            name: {"seconds_per_step": total / steps / 1e6, "share_of_busy": total / steps / 1e6 / busy if busy else 0}
            for name, total in by_category.most_common()
        },
        "top_ops": [
            {
                "name": name,
                "category": category(name),
                "seconds_per_step": total / steps / 1e6,
                "calls_per_step": count[name] / steps,
            }
            for name, total in by_op.most_common(top)
        ],
    }
    if wall_seconds_per_step:
        summary["wall_seconds_per_step"] = wall_seconds_per_step
        summary["idle_share"] = max(0.0, 1.0 - busy / wall_seconds_per_step)
    return summary
