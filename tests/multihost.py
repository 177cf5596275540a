"""Shared helpers of the multi-host tests: N real local JAX processes (jax.distributed, gloo CPU collectives) running
`python -m slam_jax.main`, each logging every file it writes, so a test can check that each output is written once.

Every slam_jax output is written atomically (`slam_jax.files`: a staging file or folder renamed into place), so the
renames a process makes are the outputs it writes; the launcher logs each `os.replace` / `os.rename` target of a
process into WRITES/process-<id>.txt before running the command line as the process `python -m slam_jax.main`
supervises on several hosts does (tests/test_multihost_preemption.py runs the supervisor itself).
"""

import collections
import subprocess
import sys
from pathlib import Path

import portpicker
from multihost_runs import environment

ROOT = Path(__file__).resolve().parents[1]

# Run by `python -c` in each process: log the renames (the atomic writes), then `python -m slam_jax.main ARGS`.
LAUNCHER = """
import os, runpy, sys
log = open(os.path.join(os.environ["WRITES"], f"process-{os.environ['JAX_PROCESS_ID']}.txt"), "a", buffering=1)
for name in ("replace", "rename"):
    original = getattr(os, name)
    def logged(source, target, *args, _original=original, **kwargs):
        _original(source, target, *args, **kwargs)
        log.write(os.path.abspath(os.fspath(target)) + "\\n")
    setattr(os, name, logged)
# The job runs in this process (as the child of slam_jax.main's supervisor does), where the renames are logged.
os.environ["SLAM_JAX_SUPERVISED"] = "1"
sys.argv[0] = "slam_jax.main"
runpy.run_module("slam_jax.main", run_name="__main__", alter_sys=True)
"""


def launch(args: list[str], writes: Path, processes: int = 2, devices: int = 2, timeout: float = 300):
    """Run `python -m slam_jax.main ARGS` as `processes` JAX processes of one job (1: a plain one-host run), each
    with `devices` CPU devices; their CompletedProcesses."""
    writes.mkdir(parents=True, exist_ok=True)
    port = portpicker.pick_unused_port()
    running = []
    for index in range(processes):
        # One process runs as a plain single-host job; JAX_PROCESS_ID names its log all the same.
        env = dict(environment(processes, devices, index, port), JAX_PROCESS_ID=str(index), WRITES=str(writes))
        command = [sys.executable, "-c", LAUNCHER, *args]
        running.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = []
    for process in running:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    failed = [f"process {index}: {result.stderr[-3000:]}" for index, result in enumerate(results) if result.returncode]
    assert not failed, "\n".join(failed)
    return results


def writes_by_process(writes: Path, under: Path) -> dict[int, list[Path]]:
    """{process id: the paths under `under` it wrote, in order}: staging names (dot files) left out."""
    found = {}
    for log in sorted(writes.glob("process-*.txt")):
        paths = [Path(line) for line in log.read_text().splitlines()]
        found[int(log.stem.split("-")[1])] = [
            path.relative_to(under) for path in paths if path.is_relative_to(under) and not path.name.startswith(".")
        ]
    return found


def written_more_than_once(writes: dict[int, list[Path]]) -> list[Path]:
    """The paths that the processes wrote more than once, all together."""
    counts = collections.Counter(path for paths in writes.values() for path in paths)
    return sorted(path for path, count in counts.items() if count > 1)
