"""Bucket failures are one line (no such bucket, permission denied, a network error after the client's retries, no
credentials), and the s3:// case: pre-training data in an S3 bucket, checkpoints on s3:// refused in one line."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

from test_bucket_training import RUN, upload_units
from test_pretrain import ROOT, command, tiny_config

from slam_jax import paths
from slam_jax.training import loop


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


def test_a_bucket_that_stops_answering_mid_run_is_one_line_and_commits_nothing_half_written(gcs, tmp_path):
    """The server dies after checkpoint 2 is committed: the run stops with one line naming the workdir or the
    step that did not commit (after the clients' retries, bounded by checkpoint.commit_timeout_minutes), and once
    the server is back the same command resumes from a committed step, never from the save cut short."""
    import buckets

    from slam_jax.training import checkpoints

    private = buckets.gcs_server(tmp_path / "server.log")
    try:
        private.use()
        workdir = f"{private.bucket('outage')}/run"
        changes = {**RUN, "train.max_steps": 400, "checkpoint.commit_timeout_minutes": 0.5}
        env = {**os.environ, **private.environ}
        process = subprocess.Popen(
            command(workdir, **changes), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        marker = paths.Path(f"{workdir}/checkpoints/2/{checkpoints.COMMITTED}")
        deadline = time.time() + 180
        while not marker.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.1)
        private.stop()
        started = time.monotonic()
        _, stderr = process.communicate(timeout=300)
        seconds = time.monotonic() - started
        errors = [line for line in stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
        assert process.returncode == 1 and len(errors) == 1, stderr[-3000:]
        assert errors[0].startswith(f"error: {workdir}")
        assert "network error talking to the bucket" in errors[0] or "the save did not commit within 30 s" in errors[0]
        assert seconds < 150  # the retries with backoff, then out: not the many minutes TensorStore would retry

        private = buckets.gcs_server(tmp_path / "server.log", int(private.url.rsplit(":", 1)[1]), private.root)
        private.use()
        committed = checkpoints.committed_steps(paths.Path(f"{workdir}/checkpoints"))
        assert committed and committed[-1] >= 2
        resumed = subprocess.run(
            command(workdir, **{**changes, "train.max_steps": committed[-1] + 2}),
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
        )
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"resumed from {workdir}/checkpoints/{committed[-1]} (step {committed[-1]})" in resumed.stdout
    finally:
        private.stop()
        gcs.use()
