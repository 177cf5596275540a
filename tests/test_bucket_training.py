"""Pre-training with its workdir and data in a bucket (fake-gcs-server on 127.0.0.1; one case on moto's S3):
killed and resumed bit-identically, damaged checkpoints set aside in the bucket, the workdir lock as a lease, the
status of a bucket workdir, and bucket failures as one line."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
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
    changes = {**RUN, "data.train_path": data}
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


def test_a_damaged_newest_checkpoint_in_a_bucket_falls_back(gcs, capsys):
    workdir = paths.Path(gcs.bucket("damaged")) / "run"
    loop.run(tiny_config(**{**RUN, "train.max_steps": 4}), workdir)
    fs = paths.filesystem(workdir)
    params = f"{paths.object_key(workdir)}/checkpoints/4/params"
    data_files = [name for name in fs.find(params) if name.rsplit("/", 2)[-2] == "d"]
    assert data_files
    for name in data_files:
        fs.rm_file(name)
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


def test_s3_data_with_a_local_workdir_and_s3_checkpoints_refused(s3, tmp_path):
    root = s3.bucket("units")
    data = upload_units(root)
    result = loop.run(tiny_config(**{**RUN, "train.max_steps": 2, "data.train_path": data}), tmp_path / "run")
    assert result["step"] == 2
    local = tmp_path / "copy.jsonl"
    local.write_bytes(paths.Path(data).read_bytes())
    same = loop.run(tiny_config(**{**RUN, "train.max_steps": 2, "data.train_path": str(local)}), tmp_path / "same")
    assert same["loss"] == result["loss"]  # the bucket's records are the file's
    done = subprocess.run(
        command(f"{root}/run", **{**RUN, "train.max_steps": 2}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **s3.environ},
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and errors == [
        f"error: {root}/run/checkpoints: checkpoints cannot be on s3:// (Orbax writes arrays to local disks and "
        "gs:// only); use a gs:// bucket or a local folder for it (data and other outputs may stay on s3://)"
    ]


class Refusing(threading.Thread):
    """An HTTP server on 127.0.0.1 that answers every request 403, as GCS does a caller without permission."""

    def __init__(self):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def refuse(self):
                body = json.dumps({"error": {"code": 403, "message": "no storage.objects.get access"}}).encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = refuse

            def log_message(self, *args):
                pass

        super().__init__(daemon=True)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def run(self):
        self.server.serve_forever()


def one_error_line(workdir: str, environ: dict) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "slam_jax.main", "--config", "configs/pretrain_synthetic.py", "--workdir", workdir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **environ},
        timeout=300,
    )
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr[-3000:]
    return done.returncode, errors[0]


def test_bucket_failures_are_one_line(gcs):
    code, line = one_error_line("gs://no-such-bucket/run", gcs.environ)
    assert (code, line) == (2, "error: --workdir gs://no-such-bucket/run: no such bucket gs://no-such-bucket")

    refusing = Refusing()
    refusing.start()
    denied = {**gcs.environ, "STORAGE_EMULATOR_HOST": refusing.url, "TENSORSTORE_GCS_HTTP_URL": refusing.url}
    code, line = one_error_line("gs://private/run", denied)
    assert code == 2 and line.startswith("error: --workdir gs://private/run: permission denied by the bucket (")
    refusing.server.shutdown()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens there
    down = {**gcs.environ, "STORAGE_EMULATOR_HOST": closed, "TENSORSTORE_GCS_HTTP_URL": closed}
    started = time.monotonic()
    code, line = one_error_line("gs://unreachable/run", down)
    assert code == 2 and line.startswith("error: --workdir gs://unreachable/run: network error talking to the bucket")
    assert time.monotonic() - started > 10  # after the client's retries with backoff, not at the first refusal


def test_s3_without_credentials_is_one_line(s3):
    environ = {**s3.environ, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
    environ.update(AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
    code, line = one_error_line(f"{s3.bucket('nocreds')}/run", environ)
    assert code == 2 and line.startswith("error: --workdir s3://nocreds/run: no credentials for the bucket (")
