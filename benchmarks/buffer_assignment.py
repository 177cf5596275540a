"""Device memory as XLA's buffer assignment places it, read from the compiler's dump before code generation ends.

XLA optimises a program's HLO, assigns its buffers (arguments, outputs, temporaries, constants) to device memory,
then generates the device code. For a TPU the last stage can take hours on a small host (the TPU code generator
on the paper vocoder's ~800 convolutions: benchmarks/RESULTS.md), while the buffer assignment is there in
seconds. `XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text` makes XLA write it
(`*.after_optimizations-buffer-assignment.txt`) before the code generation starts; `figures` sums its allocations
in the device's main memory (colour 0) as `memory_analysis()` reports a compiled program:
- arguments: the parameters' allocations; outputs: the allocations that may be live out (the output tuple and
  what it holds); aliased: allocations that are both (a donated argument updated in place), counted once;
- temporaries: the preallocated temporary buffer (every intermediate value, packed by liveness); thread-local
  buffers (a kernel's own locals) are not in it, constants are reported apart;
- bytes_per_device = arguments + temporaries + outputs - aliased, as benchmarks/compile_vocoder.py's
  `memory_figures` of a compiled program.
On a GPU these equal the compiled program's memory analysis (tests/test_compile_vocoder.py). The TPU code
generator may still move buffers on chip or add scratch in device memory while it generates code, so for a TPU
the figure is an estimate (on the v5e programs measured, -9% to +27% of the compiled figure:
benchmarks/RESULTS.md).
"""

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import tempfile
import time

from slam_jax.paths import Path

_ALLOCATION = re.compile(r"^allocation \d+: size (\d+)(.*):$")
_COLOUR = re.compile(r"\bcolor (\d+)\b")
SUFFIX = "after_optimizations-buffer-assignment.txt"
DONE_SUFFIX = "after_optimizations-memory-usage-report.txt"  # written after the buffer assignment


def dump_flags(directory: Path) -> str:
    """XLA_FLAGS that make XLA write each program's buffer assignment into `directory`."""
    return f"--xla_dump_to={directory} --xla_dump_hlo_as_text"


def figures(text: str) -> dict:
    """Bytes per kind of the buffer assignment's allocations in the device's main memory (colour 0)."""
    kinds = {"argument": 0, "output": 0, "alias": 0, "temp": 0, "constant": 0}
    for line in text.splitlines():
        found = _ALLOCATION.match(line.strip())
        if not found:
            continue
        size, attributes = int(found.group(1)), found.group(2)
        colour = _COLOUR.search(attributes)
        if colour and colour.group(1) != "0":
            continue  # on-chip memories (a TPU's VMEM, SMEM), not the device's main memory
        argument = ", parameter " in attributes
        output = "maybe-live-out" in attributes
        kinds["argument"] += size * argument
        kinds["output"] += size * output
        kinds["alias"] += size * (argument and output)
        kinds["temp"] += size * ("preallocated-temp" in attributes)
        kinds["constant"] += size * ("constant" in attributes and not argument and not output)
    used = kinds["argument"] + kinds["temp"] + kinds["output"] - kinds["alias"]
    return {f"{kind}_bytes": value for kind, value in kinds.items()} | {"bytes_per_device": used}


def finished_dumps(directory: Path) -> list[Path]:
    """The buffer assignments in `directory` whose memory report (written after them) exists: complete files."""
    return sorted(
        path for path in directory.glob(f"*{SUFFIX}") if (path.parent / path.name.replace(SUFFIX, DONE_SUFFIX)).exists()
    )


def largest(directory: Path, name: str) -> dict | None:
    """Figures of the largest finished buffer assignment of a program called `name` (jit's `jit_<name>`), with
    its file; None while there is none."""
    reports = [
        {**figures(path.read_text()), "file": path.name}
        for path in finished_dumps(directory)
        if f".jit_{name}." in path.name
    ]
    return max(reports, key=lambda report: report["bytes_per_device"], default=None)


def wait_for(directory: Path, name: str, process: subprocess.Popen, timeout_seconds: float) -> dict | None:
    """Poll `directory` until the program's buffer assignment is written (its figures), the compiling `process`
    ends or `timeout_seconds` pass (None)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        report = largest(directory, name)
        if report is not None:
            return report
        if process.poll() is not None:
            return largest(directory, name)
        time.sleep(1.0)
    return None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What `run_dumping` saw: the program's figures (None if none were written in time), the command's standard
    output (its report, empty where it was stopped), the tail of its standard error, seconds to the figures, and
    what went wrong (no figures in time; or, waiting for the end, no compiled report), else None."""

    found: dict | None
    stdout: str
    log_tail: str
    seconds: float
    error: str | None


def run_dumping(command: list[str], program: str, wait_for_end: bool, wait_seconds: float) -> Outcome:
    """Run `command` (a compile) in its own process group with XLA dumping into a temporary folder; read the
    buffer assignment of `program` as soon as it is written; then stop the command, or with `wait_for_end` let
    it finish (within `wait_seconds` in all)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slam_jax_buffers_") as directory:
        directory = Path(directory)
        flags = f"{os.environ.get('XLA_FLAGS', '')} {dump_flags(directory / 'dump')}".strip()
        with (directory / "log").open("w") as log_file, (directory / "out").open("w") as out_file:
            child = subprocess.Popen(
                command,
                env={**os.environ, "XLA_FLAGS": flags},
                stdout=out_file,
                stderr=log_file,
                start_new_session=True,
            )
            try:
                found = wait_for(directory / "dump", program, child, wait_seconds)
                seconds = round(time.perf_counter() - start, 1)
                if wait_for_end and found is not None:
                    child.wait(timeout=max(1.0, wait_seconds - seconds))
            except subprocess.TimeoutExpired:
                pass
            finally:
                if child.poll() is None:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
        stdout = (directory / "out").read_text().strip()
        log_tail = (directory / "log").read_text()[-2000:]
    error = None
    if found is None:
        error = f"no buffer assignment of program {program!r} within {wait_seconds:.0f} s"
    elif wait_for_end and not stdout:
        error = f"the compile did not finish within {wait_seconds:.0f} s"
    return Outcome(found, stdout, log_tail, seconds, error)


def with_fit(found: dict, device_memory: int, seconds: float) -> dict:
    """`found` with its GiB per device, whether it fits `device_memory` and the seconds it took to be written."""
    return {
        **found,
        "gib_per_device": found["bytes_per_device"] / 2**30,
        "fits": found["bytes_per_device"] <= device_memory,
        "seconds": seconds,
    }


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The options of a compile benchmark that can read its program's buffer assignment instead of (`only`) or
    beside (`also`) its compiled memory; `what` says what is read."""
    parser.add_argument(
        "--buffer-assignment",
        choices=("only", "also"),
        help=f"{what}: XLA's buffer assignment (benchmarks/buffer_assignment.py) as soon as it is written; `only` "
        "stops the compile there (a TPU's code generation can take hours on a small host), `also` waits for the "
        "compiled report too",
    )
    parser.add_argument("--wait-seconds", type=float, default=7200.0, help="with --buffer-assignment: give up after")


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.buffer_assignment DIR --program NAME [--json]`: the figures of a dump XLA wrote
    (`XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text"` on any compile, stopped or not)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.buffer_assignment", description=main.__doc__)
    parser.add_argument("directory", help="the --xla_dump_to directory")
    parser.add_argument("--program", required=True, help="the jitted function's name (jit_NAME in the dump)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = largest(Path(args.directory), args.program)
    if report is None:
        print(f"{args.directory}: no finished buffer assignment of program {args.program!r}")
        return 1
    gib = {key: value / 2**30 for key, value in report.items() if key.endswith("_bytes") or key == "bytes_per_device"}
    lines = [f"{report['file']}: " + ", ".join(f"{key} {value:.3f} GiB" for key, value in gib.items())]
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
