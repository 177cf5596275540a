"""Shared launcher of the multi-host tests (not a test file): one job as P local JAX processes x D CPU devices.

A layout "PxD" runs `python -m slam_jax.main ARGS` as P processes, each with D forced CPU devices; with P > 1 they
join one multi-controller job through `jax.distributed` (JAX_COORDINATOR_ADDRESS on a free local port,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; gloo CPU collectives), as P hosts of D accelerators would. "1x4" is one process
with 4 devices. A launch can send signals to chosen processes once a trigger holds (a metrics row, a checkpoint),
and it always ends: past its timeout every process still running is killed and the run says it timed out. Each
process's exit code, stdout, stderr and seconds from launch to exit are kept, and `Run.report()` shows the tail of
every process's output for assertion messages. (`tests/multihost.py`, the other launcher, logs the files each process
writes, for the tokenisation and evaluation tests.)
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import portpicker

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = "configs/pretrain_synthetic.py"
DPO = "configs/slam_dpo.py"

# A tiny pre-training run: the tiny model on 200 synthetic files, 2 micro-batches a step, validation at the end only.
TINY = [
    "--config.model.preset=tiny",
    "--config.model.compute_dtype=float32",
    "--config.data.num_units=20",
    "--config.data.context_length=64",
    "--config.data.synthetic_files=200",
    "--config.train.grad_accum_steps=2",
    "--config.train.eval_every=0",
    "--config.train.eval_batches=2",
    "--config.train.time_budget=",
    "--config.train.peak_flops_per_device=1e11",
    "--config.log.every_steps=1",
    "--config.log.tensorboard=False",
]

NOISE = ("cudart_stub.cc", "before absl::InitializeLog()", "[Gloo] Rank")

# Equal within float32 reduction-order noise: another layout sums the same numbers in another order.
TOLERANCE = 2e-5


def layout(text: str) -> tuple[int, int]:
    """(processes, devices per process) of a layout "PxD"."""
    processes, devices = text.split("x")
    return int(processes), int(devices)


@dataclasses.dataclass
class Signal:
    """Send `signum` to process `process` once `when()` holds (polled every 50 ms while the job runs)."""

    process: int
    signum: int
    when: Callable[[], bool]
    sent_at: float | None = None  # seconds after the launch


@dataclasses.dataclass
class Process:
    """One process of a finished launch."""

    index: int
    returncode: int | None
    stdout: str
    stderr: str
    elapsed: float  # seconds from the launch to its exit (or to the kill of a timed-out run)

    def last_line(self, stream: str = "stderr") -> str:
        lines = [line for line in getattr(self, stream).splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclasses.dataclass
class Run:
    """A finished launch: its processes in process order, its workdir and whether it had to be killed."""

    layout: str
    workdir: Path
    processes: list[Process]
    timed_out: bool
    signals: list[Signal]

    @property
    def codes(self) -> list[int | None]:
        return [process.returncode for process in self.processes]

    @property
    def stdout(self) -> str:
        """Process 0's stdout (the one that prints the run's progress lines)."""
        return self.processes[0].stdout

    def report(self, tail: int = 2500) -> str:
        """The exit codes, times and output tails of every process, for an assertion message."""
        ended = " (TIMED OUT: killed)" if self.timed_out else ""
        parts = [f"{self.layout} run in {self.workdir}: exit codes {self.codes}{ended}"]
        for signal_action in self.signals:
            parts.append(f"signal {signal_action.signum} to process {signal_action.process} at {signal_action.sent_at}")
        for process in self.processes:
            parts.append(f"--- process {process.index}: exit {process.returncode} after {process.elapsed:.1f} s")
            parts.append(f"stdout tail:\n{without_noise(process.stdout)[-tail:]}")
            parts.append(f"stderr tail:\n{without_noise(process.stderr)[-tail:]}")
        return "\n".join(parts)

    def check(self, *codes: int) -> "Run":
        """Assert the exit codes (every process 0 by default) and that nothing timed out; returns the run."""
        want = list(codes) or [0] * len(self.processes)
        if len(want) == 1:
            want = want * len(self.processes)
        assert not self.timed_out and self.codes == want, self.report()
        return self

    def rows(self) -> list[dict]:
        return metrics_rows(self.workdir)


def without_noise(text: str) -> str:
    """`text` without the start-up lines every JAX process prints (no CUDA, absl, gloo connections)."""
    return "\n".join(line for line in text.splitlines() if not any(noise in line for noise in NOISE))


def metrics_rows(workdir: Path) -> list[dict]:
    """Every row of WORKDIR/metrics.jsonl (process 0 writes them), in order; a half-written last line is left out."""
    path = Path(workdir) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def train_rows(workdir: Path, after: int = 0) -> dict[int, dict]:
    """{step: its training row} for the steps after `after`: the last row written for a step wins (a resumed run
    logs again the steps after its checkpoint)."""
    return {row["step"]: row for row in metrics_rows(workdir) if "loss" in row and row["step"] > after}


def validation_losses(workdir: Path) -> dict[int, float]:
    return {row["step"]: row["validation_loss"] for row in metrics_rows(workdir) if "validation_loss" in row}


def logged_step(workdir: Path, step: int) -> Callable[[], bool]:
    """A trigger: metrics.jsonl holds a training row of `step` or later."""
    return lambda: any(row.get("step", 0) >= step and "loss" in row for row in metrics_rows(workdir))


def checkpoint_committed(workdir: Path, step: int) -> Callable[[], bool]:
    """A trigger: WORKDIR/checkpoints/STEP exists (Orbax renames a finished save into place)."""
    return lambda: (Path(workdir) / "checkpoints" / str(step)).is_dir()


def all_of(*triggers: Callable[[], bool]) -> Callable[[], bool]:
    return lambda: all(trigger() for trigger in triggers)


def environment(processes: int, devices: int, index: int, port: int) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    if processes > 1:
        env.update(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES=str(processes),
            JAX_PROCESS_ID=str(index),
        )
    return env


def launch(
    workdir: Path,
    layout_text: str,
    args: list[str],
    config: str = PRETRAIN,
    timeout: float = 300,
    signals: list[Signal] = (),
    after_signal: float = 120,
) -> Run:
    """Run `python -m slam_jax.main --config CONFIG --workdir WORKDIR ARGS` as the processes of `layout_text`
    ("PxD") and wait for all of them: at most `timeout` seconds, and at most `after_signal` seconds after the first
    signal was sent; then the processes still running are killed and the run is marked timed out. Signals are sent
    as their triggers come true. Never raises for a failed run: check the returned `Run`."""
    processes, devices = layout(layout_text)
    port = portpicker.pick_unused_port() if processes > 1 else 0
    command = [sys.executable, "-m", "slam_jax.main", "--config", config, "--workdir", str(workdir), *args]
    signals = [dataclasses.replace(action) for action in signals]
    outputs, running = [], []
    started = time.perf_counter()
    for index in range(processes):
        stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        outputs.append((stdout, stderr))
        env = environment(processes, devices, index, port)
        running.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True))
    ended: dict[int, float] = {}
    timed_out = False
    try:
        while len(ended) < processes:
            now = time.perf_counter() - started
            for index, process in enumerate(running):
                if index not in ended and process.poll() is not None:
                    ended[index] = now
            for action in signals:
                if action.sent_at is None and action.process not in ended and action.when():
                    running[action.process].send_signal(action.signum)
                    action.sent_at = round(now, 1)
            first_signal = min((action.sent_at for action in signals if action.sent_at is not None), default=None)
            if now > timeout or (first_signal is not None and now > first_signal + after_signal):
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        for index, process in enumerate(running):
            if process.poll() is None:
                process.kill()
                process.wait()
            ended.setdefault(index, time.perf_counter() - started)
    results = []
    for index, (process, (stdout, stderr)) in enumerate(zip(running, outputs, strict=True)):
        stdout.seek(0), stderr.seek(0)
        results.append(Process(index, process.returncode, stdout.read(), stderr.read(), ended[index]))
        stdout.close(), stderr.close()
    return Run(layout_text, Path(workdir), results, timed_out, signals)


def pretrain_args(layout_text: str, overrides: dict | None = None, global_rows: int = 8) -> list[str]:
    """TINY with `train.per_device_batch_size` set so that the layout has `global_rows` rows per micro-batch, then
    `--config.KEY=VALUE` for each of `overrides` ({"train.max_steps": 6, ...})."""
    processes, devices = layout(layout_text)
    per_device = global_rows // (processes * devices)
    assert per_device * processes * devices == global_rows, (layout_text, global_rows)
    extra = [f"--config.{key}={value}" for key, value in (overrides or {}).items()]
    return [*TINY, f"--config.train.per_device_batch_size={per_device}", *extra]


def assert_same_steps(got: dict[int, dict], want: dict[int, dict], steps, keys=("loss", "grad_norm"), what=""):
    """Each of `keys` of each step in `steps` equal in `got` and `want` within TOLERANCE (relative or absolute)."""
    lines = []
    for step in steps:
        assert step in got and step in want, f"{what}: no step {step} in {sorted(got)} or {sorted(want)}"
        for key in keys:
            a, b = got[step][key], want[step][key]
            if not abs(a - b) <= TOLERANCE * max(1.0, abs(b)):
                lines.append(f"step {step} {key}: {a!r} != {b!r} (difference {a - b:.3g})")
    assert not lines, f"{what}:\n" + "\n".join(lines)


SIGTERM, SIGKILL = signal.SIGTERM, signal.SIGKILL
