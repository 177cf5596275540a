"""Pre-training with its workdir and data in a bucket (fake-gcs-server on 127.0.0.1; 2 hosts too):
killed and resumed bit-identically, damaged checkpoints set aside in the bucket, the workdir lock as a lease, the
status of a bucket workdir (failures and s3:// are in test_bucket_failures.py)."""

import json
import os
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest
from test_pretrain import ROOT, command, tiny_config
from test_trust_checkpoints import warnings_in

from slam_jax import paths, status
from slam_jax.data import synthetic
from slam_jax.errors import TrainingError
from slam_jax.models import storage
from slam_jax.training import checkpoints, loop, manifest

RUN = {"train.max_steps": 6, "checkpoint.every_steps": 2, "data.synthetic_files": 60}


def upload_units(root: str) -> str:
    """A raw features.jsonl of synthetic units in the bucket folder `root`; returns its URL."""
    url = f"{root}/units/features.jsonl"
    records = synthetic.generate(60, 20, seed=3)
    paths.Path(url).write_text("".join(json.dumps(record) + "\n" for record in records))
    return url


def bucket_params(workdir, step) -> list[np.ndarray]:
    return jax.tree.leaves(jax.device_get(storage.load_params(paths.Path(f"{workdir}/checkpoints/{step}"))))


def objects(url: str) -> list[str]:
    fs = paths.filesystem(url)
    return sorted(name.removeprefix(paths.object_key(url)).lstrip("/") for name in fs.find(paths.object_key(url)))


def test_a_bucket_run_killed_resumes_bit_identically_to_a_local_run(gcs, tmp_path):
    root = gcs.bucket("train")
    data = upload_units(root)
    changes = {**RUN, "data.train_path": data, "checkpoint.keep": 2}
    env = {**os.environ, **gcs.environ}
    local = tmp_path / "local"
    loop.run(tiny_config(**changes), local)  # uninterrupted, on a local disk, with the same data from the bucket

    workdir = f"{root}/killed"
    process = subprocess.Popen(
        command(workdir, **changes), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    marker = paths.Path(f"{workdir}/checkpoints/2/{checkpoints.COMMITTED}")
    deadline = time.time() + 180
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoints.committed_steps(paths.Path(f"{workdir}/checkpoints"))[-1] < 6, "finished before the kill"
    lease = manifest.read_lease(paths.Path(workdir))
    assert lease is not None and lease["pid"] == process.pid  # the killed run's lease is left behind
    half = paths.Path(f"{workdir}/checkpoints/99/params/half_written")  # a save cut short: no commit marker
    half.write_bytes(b"\0" * 100)

    resumed = subprocess.run(command(workdir, **changes), cwd=ROOT, capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {workdir}/checkpoints/" in resumed.stdout
    for got, want in zip(
        bucket_params(workdir, 6), jax.tree.leaves(storage.load_params(local / "checkpoints" / "6")), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    rows = [json.loads(line) for line in paths.Path(f"{workdir}/metrics.jsonl").read_text().splitlines()]
    local_rows = [json.loads(line) for line in (local / "metrics.jsonl").read_text().splitlines()]
    assert {row["step"] for row in local_rows} <= {row["step"] for row in rows}
    listed = objects(workdir)
    assert ".lock" not in listed and "run_manifest.json" in listed  # released at the end
    assert any(name.startswith("tensorboard/events.out.tfevents") for name in listed)
    assert any(name.startswith("data/") and name.endswith("manifest.json") for name in listed)  # prepared there
    report = status.status(paths.Path(workdir))
    assert report["state"] == "finished" and report["step"] == 6 and report["held_by"] is None
    assert 99 not in report["checkpoints"] and "unfinished saves (not committed): 99" in report["notes"]
    assert report["checkpoints"] == [4, 6] == checkpoints.committed_steps(local / "checkpoints")  # checkpoint.keep


def test_a_damaged_newest_checkpoint_in_a_bucket_falls_back(gcs, capsys):
    workdir = paths.Path(gcs.bucket("damaged")) / "run"
    loop.run(tiny_config(**{**RUN, "train.max_steps": 4}), workdir)
    fs = paths.filesystem(workdir)
    params = f"{paths.object_key(workdir)}/checkpoints/4/params"
    data_files = [name for name in fs.find(params) if name.rsplit("/", 2)[-2] == "d"]
    assert data_files
    for name in data_files:
        fs.rm(name)
    capsys.readouterr()
    result = loop.run(tiny_config(**{**RUN, "train.max_steps": 5}), workdir)
    captured = capsys.readouterr()
    (warning,) = warnings_in(captured.err)
    assert warning.startswith("[pretrain] warning: checkpoint step 4 is unreadable (")
    assert warning.endswith(f"): moved to {workdir}/rejected_checkpoints/step-4; resuming from step 2")
    assert result["step"] == 5
    assert checkpoints.committed_steps(workdir / "checkpoints") == [2, 4, 5]  # 4 saved again by this run
    rejected = workdir / "rejected_checkpoints" / "step-4"
    assert (rejected / checkpoints.WHY).read_text().startswith("step 4 is unreadable (")
    assert (rejected / "meta" / "metadata").exists()  # kept, not deleted
    assert status.status(workdir)["set_aside"]["step-4"].startswith("step 4 is unreadable")


def test_the_workdir_lock_in_a_bucket_is_a_lease(gcs, monkeypatch):
    workdir = paths.Path(gcs.bucket("lease")) / "run"
    me = f"pid {os.getpid()} on {socket.gethostname()}"
    with manifest.workdir_lock(workdir):
        lease = manifest.read_lease(workdir)
        assert lease["holder"] == me and lease["lease"] == 120
        with pytest.raises(TrainingError, match=f"^{workdir} is in use by {me} \\({workdir}/.lock, a lease renewed"):
            with manifest.workdir_lock(workdir):
                pass
        assert status.status(workdir)["held_by"] == f"{os.getpid()}@{socket.gethostname()}"
    assert manifest.read_lease(workdir) is None and status.status(workdir)["held_by"] is None

    stale = {"holder": "pid 1 on elsewhere", "host": "elsewhere", "pid": 1, "token": "x", "lease": 120}
    (workdir / ".lock").write_text(json.dumps({**stale, "renewed": time.time()}))
    with pytest.raises(TrainingError, match="is in use by pid 1 on elsewhere"):  # another host, renewed just now
        with manifest.workdir_lock(workdir):
            pass
    (workdir / ".lock").write_text(json.dumps({**stale, "renewed": time.time() - 121}))
    with manifest.workdir_lock(workdir):  # not renewed for a whole lease: taken over
        assert manifest.read_lease(workdir)["holder"] == me

    monkeypatch.setenv(manifest.LEASE_VARIABLE, "0.4")
    with manifest.workdir_lock(workdir):
        first = manifest.read_lease(workdir)["renewed"]
        time.sleep(0.6)
        assert manifest.read_lease(workdir)["renewed"] > first  # renewed every lease / 4 seconds


def test_two_hosts_train_in_one_bucket_workdir_as_one_process_does_locally(gcs, tmp_path):
    """2 processes x 2 devices with the workdir (lease, prepared data, checkpoints, logs) in the bucket train the
    same steps as 1 process x 4 devices on a local disk; the checkpoint records the two-process layout."""
    from multihost_runs import assert_same_steps, launch, pretrain_args, train_rows

    run = {"train.max_steps": 4, "checkpoint.every_steps": 2}
    workdir = f"{gcs.bucket('hosts')}/run"
    launched = launch(workdir, "2x2", pretrain_args("2x2", run))
    assert launched.codes == [0, 0], launched.report()
    reference = launch(tmp_path / "local", "1x4", pretrain_args("1x4", run)).check(0)
    rows = [json.loads(line) for line in paths.Path(f"{workdir}/metrics.jsonl").read_text().splitlines()]
    got = {row["step"]: row for row in rows if "loss" in row}
    assert sorted(got) == [1, 2, 3, 4]  # process 0 alone logs
    assert_same_steps(got, train_rows(reference.workdir), range(1, 5), what="2x2 in a bucket vs 1x4 locally")
    assert checkpoints.committed_steps(paths.Path(f"{workdir}/checkpoints")) == [2, 4]
    meta = json.loads(paths.Path(f"{workdir}/checkpoints/4/meta/metadata").read_text())
    assert meta["layout"]["processes"] == 2 and manifest.read_lease(paths.Path(workdir)) is None
