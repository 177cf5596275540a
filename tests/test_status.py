"""`python -m slam_jax.status WORKDIR` and `mode: status` report what a training workdir holds, from its files alone.

The workdirs are those of a real tiny run (one, copied per case), then held, preempted, set aside or emptied the
way the training code does it; the report is checked field by field against the files, and the workdir is checked
unchanged byte for byte.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_pretrain import ROOT, tiny_config
from test_trust_checkpoints import copy_of

from configs import status as status_config
from slam_jax import modes, status
from slam_jax.training import checkpoints, loop, manifest, metrics
from slam_jax.training import settings as training_settings

RUN = {"train.max_steps": 4, "checkpoint.every_steps": 2, "train.eval_every": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished pre-training workdir: checkpoints at steps 2 and 4, validation at both (copied by each case that
    changes it)."""
    workdir = tmp_path_factory.mktemp("trained")
    loop.run(tiny_config(**RUN), workdir)
    return workdir


def rows(workdir: Path, key: str) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if key in row]


def meta(workdir: Path, step: int) -> dict:
    return json.loads((workdir / "checkpoints" / str(step) / "meta" / "metadata").read_text())


def recorded_run(workdir: Path, **run) -> None:
    """Change what the manifest says the newest start was asked to do (as a start with other values records)."""
    path = workdir / manifest.MANIFEST
    recorded = json.loads(path.read_text())
    recorded["run"] = {**recorded["run"], **run}
    path.write_text(json.dumps(recorded))


def snapshot(workdir: Path) -> dict[str, tuple]:
    """Every path under `workdir` with its kind, modification time and (files) content digest."""
    found = {}
    for path in [workdir, *sorted(workdir.rglob("*"))]:
        stat = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        found[str(path.relative_to(workdir))] = (path.is_dir(), stat.st_mtime_ns, stat.st_size, digest)
    return found


def test_a_finished_run(trained):
    before = snapshot(trained)
    report = status.status(trained)
    assert snapshot(trained) == before
    recorded = json.loads((trained / manifest.MANIFEST).read_text())
    saved = meta(trained, 4)
    assert report["state"] == "finished" and report["job"] == "pretrain"
    assert report["step"] == 4 and report["checkpoints"] == [2, 4]
    assert report["checkpoint"] == str(trained / "checkpoints" / "4")
    assert report["metrics"] == rows(trained, "loss")[-1] and report["metrics"]["step"] == 4
    assert report["validation"] == rows(trained, "validation_loss")[-1] and report["validation"]["step"] == 4
    assert report["tokens_seen"] == saved["tokens_seen"] == rows(trained, "loss")[-1]["tokens_seen"]
    assert report["elapsed_seconds"] == saved["elapsed_seconds"] > 0
    assert (report["max_steps"], report["steps_left"]) == (4, 0)
    assert (report["time_budget"], report["budget_seconds"], report["budget_left_seconds"]) == ("", 0.0, None)
    assert report["layout"] == recorded["layouts"][-1]["layout"] == saved["layout"]
    assert report["layout"] == {"processes": 1, "devices": 8, "mesh": {"data": 8, "fsdp": 1, "tensor": 1}}
    assert report["layout_from"] == recorded["layouts"][-1]["from"] and report["created"] == recorded["created"]
    assert report["changes"] == [] and report["set_aside"] == {} and report["suspects"] == {}
    assert report["held_by"] is None and report["notes"] == []
    text = status.lines(report)
    assert text[0] == f"{trained}: finished (pretrain)"
    assert f"  checkpoint  step 4 of max_steps 4 (0 left): {trained}/checkpoints/4 (committed: 2, 4)" in text
    assert f"  validation  step 4: validation_loss {report['validation']['validation_loss']:.5g}" in text
    since = report["layout_from"]
    assert f"  layout      1 process x 8 devices (mesh data 8 x fsdp 1 x tensor 1) since {since}" in text
    assert any(line.startswith("  metrics     step 4: loss ") for line in text)


def test_a_time_budget_finishes_or_leaves_time(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    elapsed = meta(workdir, 4)["elapsed_seconds"]
    half = f"{elapsed / 2:.6f}"  # a budget the run has used up, however fast the machine that trained it
    recorded_run(workdir, max_steps=0, time_budget=half)
    report = status.status(workdir)
    assert report["state"] == "finished" and report["budget_seconds"] == float(half) > 0
    assert report["budget_left_seconds"] == 0
    recorded_run(workdir, time_budget="1h30m")
    report = status.status(workdir)
    assert report["state"] == "stopped" and report["steps_left"] is None
    assert report["budget_seconds"] == 5400 and report["budget_left_seconds"] == pytest.approx(5400 - elapsed)
    assert "  time        " in "\n".join(status.lines(report)) and "budget 1h30m, 1h" in "\n".join(status.lines(report))


def test_a_run_holding_the_lock_is_running(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    with manifest.workdir_lock(workdir):
        held = (workdir / manifest.LOCK).read_text()
        before = snapshot(workdir)
        report = status.status(workdir)
        assert snapshot(workdir) == before and (workdir / manifest.LOCK).read_text() == held
    assert report["state"] == "running" and report["held_by"] == f"{os.getpid()}@{socket.gethostname()}"
    assert status.lines(report)[:2] == [f"{workdir}: running (pretrain)", f"  lock        held by {report['held_by']}"]
    assert status.status(workdir)["state"] == "finished"  # released


def test_a_preempted_run_is_stopped(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    recorded_run(workdir, max_steps=8)  # a run asked for 8 steps that stopped after saving step 4
    (workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1234").mkdir()  # a save the stop interrupted
    report = status.status(workdir)
    assert report["state"] == "stopped" and report["held_by"] is None
    assert (report["step"], report["checkpoints"], report["max_steps"], report["steps_left"]) == (4, [2, 4], 8, 4)
    assert report["notes"] == [
        "not finished and no run holds the lock (preempted or failed): re-run the same command to resume from step 4",
        "unfinished saves (not committed): 6.orbax-checkpoint-tmp-1234",
    ]
    assert f"  checkpoint  step 4 of max_steps 8 (4 left): {workdir}/checkpoints/4 (committed: 2, 4)" in (
        status.lines(report)
    )


def test_checkpoints_set_aside_and_suspects(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    checkpointer = checkpoints.Checkpointer(workdir / "checkpoints", every_steps=2, every_minutes=0, keep=3)
    checkpointer.set_aside(4, "could not be read (test)")
    checkpointer.close()
    checkpoints.mark_suspect(workdir / "checkpoints", 2, "the loss after it was nan")
    report = status.status(workdir)
    assert report["set_aside"] == {"step-4": "step 4 could not be read (test)"}
    assert report["suspects"] == {"2": "the loss after it was nan"}
    assert (report["state"], report["step"], report["checkpoints"], report["steps_left"]) == ("stopped", 2, [2], 2)
    assert report["elapsed_seconds"] == meta(workdir, 2)["elapsed_seconds"]
    assert report["metrics"]["step"] == 4  # the metrics logged after step 2 stay in metrics.jsonl
    text = status.lines(report)
    assert "  set aside   rejected_checkpoints/step-4: step 4 could not be read (test)" in text
    assert "  suspect     step 2: the loss after it was nan" in text


def test_an_empty_folder_and_a_damaged_manifest(tmp_path):
    report = status.status(tmp_path)
    assert report["state"] == "empty" and report["job"] is None and report["step"] is None
    assert report["checkpoints"] == [] and report["metrics"] is None and report["validation"] is None
    assert report["notes"] == ["no run_manifest.json and no checkpoints/: no training run started in this folder"]
    assert list(tmp_path.iterdir()) == []
    (tmp_path / manifest.MANIFEST).write_text("{not json")
    report = status.status(tmp_path)
    assert report["state"] == "empty" and report["notes"][0].startswith(f"{tmp_path / manifest.MANIFEST}: not valid")


def test_the_metrics_file_is_read_backwards_by_blocks(tmp_path):
    path = tmp_path / "metrics.jsonl"
    written = [{"step": step, "loss": 3.0 - step / 10} for step in range(1, 40)]
    written.insert(10, {"step": 10, "validation_loss": 2.5})
    path.write_text("".join(json.dumps(row) + "\n" for row in written) + '{"step": 40, "loss": 1.')  # half-written
    for block in (7, 64, 1 << 16):
        assert status.last_rows(path, ("loss", "validation_loss"), block) == {
            "loss": written[-1],
            "validation_loss": {"step": 10, "validation_loss": 2.5},
        }
    assert status.last_rows(tmp_path / "none.jsonl", ("loss",)) == {}


def test_the_names_and_the_budget_are_those_of_the_training_code():
    assert (status.MANIFEST, status.LOCK) == (manifest.MANIFEST, manifest.LOCK)
    assert (status.REJECTED_DIR, status.WHY, status.SUSPECTS, status.COMMITTED) == (
        checkpoints.REJECTED_DIR,
        checkpoints.WHY,
        checkpoints.SUSPECTS,
        checkpoints.COMMITTED,
    )
    assert status.METRICS == "metrics.jsonl" and "metrics.jsonl" in Path(metrics.__file__).read_text()
    assert status.parse_duration is training_settings.parse_duration  # one parser of train.time_budget


def test_mode_status_prints_lines_or_json(trained, capsys):
    config = status_config.get_config()
    assert config.mode == "status" and modes.MODES["status"] == "slam_jax.status:run"
    report = modes.job("status")(config, trained)
    assert capsys.readouterr().out.splitlines() == status.lines(report) and report == status.status(trained)
    config.json = True
    modes.job("status")(config, trained)
    assert json.loads(capsys.readouterr().out) == report


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slam_jax.status", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_the_command_line(trained, tmp_path):
    before = snapshot(trained)
    result = cli(str(trained), "--json")
    assert result.returncode == 0 and result.stderr == ""
    assert json.loads(result.stdout) == status.status(trained)
    result = cli(str(trained))
    assert result.returncode == 0 and result.stdout.splitlines() == status.lines(status.status(trained))
    assert snapshot(trained) == before

    no_such = cli(str(tmp_path / "missing"))
    assert (no_such.returncode, no_such.stdout) == (1, "")
    assert no_such.stderr == f"error: {tmp_path / 'missing'}: no such workdir\n"
    assert not (tmp_path / "missing").exists()
    (tmp_path / "file").write_text("x")
    a_file = cli(str(tmp_path / "file"))
    assert (a_file.returncode, a_file.stdout) == (2, "")
    assert a_file.stderr == f"error: {tmp_path / 'file'}: is a file, not a workdir folder\n"


def test_the_command_loads_no_jax(trained):
    check = "import sys; from slam_jax import status; status.main([sys.argv[1]]); assert 'jax' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", check, str(trained)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_mode_status_does_not_create_a_missing_workdir(tmp_path):
    command = [sys.executable, "-m", "slam_jax.main", "--config", "configs/status.py", "--workdir"]
    result = subprocess.run(
        [*command, str(tmp_path / "missing")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'missing'}: no such workdir"
    assert not (tmp_path / "missing").exists()
