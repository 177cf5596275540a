"""What a training workdir holds, from its files alone: `python -m slam_jax.status WORKDIR [--json]`, or
`mode: status` (`configs/status.py`).

It reads what `mode: pretrain` and `mode: dpo` write (`slam_jax/training/`: the run manifest and lock of
`manifest.py`, the checkpoints of `checkpoints.py`, the rows of `metrics.py`) and starts nothing: no JAX, no Orbax,
nothing created or changed in the workdir (the lock is tried with a shared, non-blocking flock released at once),
so it answers in a fraction of a second, also while a run trains. Every read goes through the few functions under
"Files" (a workdir in a bucket replaces only them); `summarize` is a pure function of what they read, and `lines`
formats its dict. The state word:

    running    a run holds WORKDIR/.lock now
    finished   the last checkpoint reached train.max_steps, or its elapsed time train.time_budget
    stopped    a run started and is not finished and not running (preempted or failed): re-run it to resume
    empty      no run manifest and no checkpoint
"""

import argparse
import fcntl
import json
import os
import re
import sys

from slam_jax import paths
from slam_jax.paths import Path
from slam_jax.settings import parse_duration

# The names the training jobs write (slam_jax/training/manifest.py, checkpoints.py, metrics.py), spelled here rather
# than imported: importing slam_jax.training loads JAX (1.5 s). tests/test_status.py checks they are the same.
MANIFEST = "run_manifest.json"
LOCK = ".lock"
CHECKPOINTS = "checkpoints"
META = ("meta", "metadata")  # in a step folder: the checkpoint's metadata (JSON)
REJECTED_DIR = "rejected_checkpoints"
WHY = "WHY"
SUSPECTS = "suspect_checkpoints.json"
METRICS = "metrics.jsonl"
COMMITTED = "commit_success.txt"  # in a step folder in a bucket: Orbax's commit marker
STATES = ("running", "finished", "stopped", "empty")
EXIT_ERROR = 1  # no such workdir
EXIT_USAGE = 2  # a bad command line, or a file instead of a folder
_HOLDER = re.compile(r"pid (\d+) on (\S+)")


# Files: every read of the workdir.


def read_text(path: Path) -> str | None:
    """The text of the file `path`; None if there is none or it cannot be read."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_json(path: Path):
    """The JSON value of the file `path`; None if there is none; a ValueError naming it if it is damaged."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def folders(path: Path) -> list[str]:
    """The names of the folders in `path`, sorted; none if it is not a folder."""
    try:
        if paths.is_remote(path):
            return sorted(entry.name for entry in Path(path).iterdir() if entry.is_dir())
        return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
    except OSError:
        return []


def last_rows(path: Path, keys: tuple[str, ...], block: int = 1 << 16) -> dict[str, dict]:
    """{key: the newest row of the JSONL file `path` that holds `key`}, read backwards from its end by `block` bytes
    (a long run's metrics are not read whole); a key no row holds is left out, a line that is not JSON skipped."""
    found: dict[str, dict] = {}
    try:
        with Path(path).open("rb") as handle:
            end, carry = handle.seek(0, os.SEEK_END), b""
            while end > 0 and len(found) < len(keys):
                start = max(0, end - block)
                handle.seek(start)
                lines = (handle.read(end - start) + carry).split(b"\n")
                carry = lines.pop(0) if start > 0 else b""  # may begin in the block before
                for line in reversed(lines):
                    wanted = [key for key in keys if key not in found and f'"{key}"'.encode() in line]
                    row = _json_row(line) if wanted else None
                    found.update({key: row for key in wanted if row is not None and key in row})
                end = start
    except OSError:
        return {}
    return found


def _json_row(line: bytes) -> dict | None:
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return row if isinstance(row, dict) else None


def lock_holder(path: Path) -> str | None:
    """Who holds the lock file `path` now (its text, e.g. 'pid 12 on host'), or None when no process does.

    Tried with a shared, non-blocking flock released at once; the file is opened for reading only, so it is neither
    created nor truncated. In a bucket the lock is a lease object: held while it is renewed in time and its process
    (when on this host) lives, as `slam_jax.paths.lease_holder` decides."""
    if paths.is_remote(path):
        return paths.lease_holder(paths.read_lease(path))
    try:
        handle = open(path)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def committed(step_dir: Path) -> bool:
    """A step folder is committed: locally by its name (Orbax renames it into place), in a bucket by its marker."""
    return not paths.is_remote(step_dir) or (Path(step_dir) / COMMITTED).exists()


def read_workdir(workdir: Path) -> dict:
    """Everything `summarize` needs, read from the workdir's files (damaged ones as `problems`)."""
    facts, problems = {"workdir": str(workdir)}, []
    for key, path in (("manifest", workdir / MANIFEST), ("suspects", workdir / SUSPECTS)):
        try:
            facts[key] = read_json(path)
        except ValueError as error:
            facts[key], problems = None, [*problems, str(error)]
    checkpoints = workdir / CHECKPOINTS
    names = folders(checkpoints)
    done = {name for name in names if re.fullmatch(r"\d+", name) and committed(checkpoints / name)}
    facts["steps"] = sorted(int(name) for name in done)
    facts["unfinished"] = [name for name in names if name not in done]
    facts["meta"] = None
    for step in reversed(facts["steps"]):  # the newest checkpoint whose metadata reads
        try:
            facts["meta"] = read_json(checkpoints.joinpath(str(step), *META))
            problem = f"checkpoint {step} has no {'/'.join(META)}"
        except ValueError as error:
            problem = str(error)
        if isinstance(facts["meta"], dict):
            break
        facts["meta"], problems = None, [*problems, problem]
    rejected = workdir / REJECTED_DIR
    facts["rejected"] = {name: (read_text(rejected / name / WHY) or "").strip() for name in folders(rejected)}
    job = ((facts["manifest"] or {}).get("run") or {}).get("job")
    validation = "validation_mel_l1" if job == "train_vocoder" else "validation_loss"
    facts["rows"] = last_rows(workdir / METRICS, ("loss", validation))
    facts["lock"] = lock_holder(workdir / LOCK)
    facts["problems"] = problems
    return facts


# The summary: pure functions of what the files hold.


def holder(text: str | None) -> str | None:
    """'pid N on HOST' as 'N@HOST' (other text as it is); None when no one holds the lock."""
    if text is None:
        return None
    match = _HOLDER.fullmatch(text.strip())
    return f"{match.group(1)}@{match.group(2)}" if match else text


def state(facts: dict, finished: bool) -> str:
    """The state word: running, finished, stopped or empty (see the module's docstring)."""
    if facts["lock"] is not None:
        return "running"
    if facts["manifest"] is None and not facts["steps"]:
        return "empty"
    return "finished" if finished else "stopped"


def summarize(facts: dict) -> dict:
    """The status of a workdir (a JSON-able dict) from what `read_workdir` read."""
    manifest = facts["manifest"] if isinstance(facts["manifest"], dict) else {}
    run = manifest.get("run") or {}
    layouts = manifest.get("layouts") or []
    meta = facts["meta"] or {}
    notes = list(facts["problems"])
    step = meta.get("step", facts["steps"][-1] if facts["steps"] else None)
    elapsed = meta.get("elapsed_seconds")
    max_steps = run.get("max_steps")
    budget_text = run.get("time_budget") or ""
    try:
        budget = parse_duration(budget_text)
    except ValueError as error:
        budget, notes = None, [*notes, str(error)]
    reached_steps = bool(max_steps) and step is not None and step >= max_steps
    reached_budget = bool(budget) and elapsed is not None and elapsed >= budget
    word = state(facts, reached_steps or reached_budget)
    if word == "empty" and facts["manifest"] is None:
        notes.append(f"no {MANIFEST} and no {CHECKPOINTS}/: no training run started in this folder")
    elif word == "stopped":
        notes.append(
            "no checkpoint yet: re-running starts from the beginning"
            if step is None
            else f"not finished and no run holds the lock (preempted or failed): re-run the same command to resume "
            f"from step {step}"
        )
    if facts["unfinished"]:
        notes.append(f"unfinished saves (not committed): {', '.join(facts['unfinished'])}")
    rows = facts["rows"]
    return {
        "workdir": facts["workdir"],
        "state": word,
        "job": run.get("job"),
        "step": step,
        "checkpoint": None if step is None else str(Path(facts["workdir"]) / CHECKPOINTS / str(step)),
        "checkpoints": facts["steps"],
        "tokens_seen": meta.get("tokens_seen"),
        "audio_seconds_seen": meta.get("audio_seconds_seen"),  # a vocoder's training
        "elapsed_seconds": elapsed,
        "max_steps": max_steps,
        "steps_left": max(0, max_steps - (step or 0)) if max_steps else None,
        "time_budget": budget_text,
        "budget_seconds": budget,
        "budget_left_seconds": max(0.0, budget - (elapsed or 0.0)) if budget else None,
        "metrics": rows.get("loss"),
        "validation": rows.get("validation_loss") or rows.get("validation_mel_l1"),
        "layout": layouts[-1]["layout"] if layouts else meta.get("layout"),
        "layout_from": layouts[-1].get("from") if layouts else None,
        "created": manifest.get("created"),
        "changes": manifest.get("changes") or [],
        "set_aside": facts["rejected"],
        "suspects": facts["suspects"] if isinstance(facts["suspects"], dict) else {},
        "held_by": holder(facts["lock"]),
        "notes": notes,
    }


def status(workdir: Path) -> dict:
    """The status of `workdir` (a folder), read from its files."""
    return summarize(read_workdir(Path(workdir)))


# The printer.


def duration(seconds: float) -> str:
    """'8.8s', '12m05s', '3h02m', '1d04h'."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, hours = int(seconds // 60), int(seconds // 3600)
    if hours < 1:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{hours}h{minutes % 60:02d}m" if hours < 24 else f"{hours // 24}d{hours % 24:02d}h"


def number(value) -> str:
    """A metric value in a few significant digits."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.5g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,.0f}" if isinstance(value, int | float) else str(value)


def describe_layout(layout: dict) -> str:
    """'1 process x 8 devices (mesh data 2 x fsdp 4 x tensor 1)'."""
    processes, devices = layout.get("processes", 1), layout.get("devices", 1)
    per_process = devices // max(processes, 1)
    mesh = " x ".join(f"{axis} {size}" for axis, size in (layout.get("mesh") or {}).items())
    return (
        f"{processes} process{'es' if processes != 1 else ''} x {per_process} device{'s' if per_process != 1 else ''}"
        f" (mesh {mesh})"
    )


def row_text(row: dict) -> str:
    """'step 4: loss 2.988, learning_rate 0.005, ...'."""
    return f"step {row['step']}: " + ", ".join(f"{key} {number(value)}" for key, value in row.items() if key != "step")


def lines(report: dict) -> list[str]:
    """The status as human-readable lines."""
    job = f" ({report['job']})" if report["job"] else ""
    out = [f"{report['workdir']}: {report['state']}{job}"]
    if report["held_by"]:
        out.append(f"  lock        held by {report['held_by']}")
    if report["step"] is not None:
        of = f" of max_steps {report['max_steps']} ({report['steps_left']} left)" if report["max_steps"] else ""
        listed = ", ".join(map(str, report["checkpoints"]))
        out.append(f"  checkpoint  step {report['step']}{of}: {report['checkpoint']} (committed: {listed})")
    if report["audio_seconds_seen"] is not None:
        out.append(f"  audio       {duration(report['audio_seconds_seen'])} of segments seen")
    elif report["tokens_seen"] is not None:
        out.append(f"  tokens      {number(report['tokens_seen'])} seen")
    if report["elapsed_seconds"] is not None or report["budget_seconds"]:
        spent = duration(report["elapsed_seconds"] or 0.0)
        budget = (
            f"; budget {report['time_budget']}, {duration(report['budget_left_seconds'])} left"
            if report["budget_seconds"]
            else "; no time budget"
        )
        out.append(f"  time        {spent} trained{budget}")
    if report["metrics"]:
        out.append(f"  metrics     {row_text(report['metrics'])}")
    if report["validation"]:
        out.append(f"  validation  {row_text(report['validation'])}")
    if report["layout"]:
        since = f" since {report['layout_from']}" if report["layout_from"] else ""
        out.append(f"  layout      {describe_layout(report['layout'])}{since}")
    for name, why in report["set_aside"].items():
        out.append(f"  set aside   {REJECTED_DIR}/{name}: {why or 'no WHY file'}")
    for step, why in report["suspects"].items():
        out.append(f"  suspect     step {step}: {why}")
    out += [f"  note        {note}" for note in report["notes"]]
    return out


# The commands.


def run(config, workdir: Path) -> dict:
    """`mode: status`: print the status of `workdir` (JSON with `config.json`) and return it."""
    if not Path(workdir).exists():
        raise FileNotFoundError(f"{workdir}: no such workdir")
    report = status(workdir)
    print(json.dumps(report) if config.get("json", False) else "\n".join(lines(report)), flush=True)
    return report


def main(argv: list[str]) -> int:
    """`python -m slam_jax.status WORKDIR [--json]`: the status, or one `error:` line and a non-zero exit code."""
    parser = argparse.ArgumentParser(prog="python -m slam_jax.status", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a training run's --workdir")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    args = parser.parse_args(argv)
    if not args.workdir.exists():
        print(f"error: {args.workdir}: no such workdir", file=sys.stderr)
        return EXIT_ERROR
    if not args.workdir.is_dir():
        print(f"error: {args.workdir}: is a file, not a workdir folder", file=sys.stderr)
        return EXIT_USAGE
    report = status(args.workdir)
    print(json.dumps(report) if args.json else "\n".join(lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
