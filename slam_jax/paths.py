"""One path type for local files and cloud buckets: `gs://bucket/...` (Google Cloud Storage) and `s3://bucket/...`.

Every path a user gives (workdirs, data, models, outputs) becomes a `Path` through `path()`: an `etils.epath`
path, which is a `pathlib` path for local files and an fsspec one (gcsfs, s3fs) for buckets, with the same methods
(`/`, `exists`, `iterdir`, `glob`, `open`, `read_text`, `write_text`, `mkdir`, `rmtree`, ...). Orbax and
TensorStore read and write arrays on buckets themselves.

What a bucket cannot do, and what the package does instead:
- **No rename, no append.** One object upload is atomic (the object appears complete or not at all), so a single
  file is written in one upload (`files.write_text`). A folder output is made in a local staging folder and
  uploaded by `upload_dir`, its top-level `.json` files last: on a bucket a folder is complete once its top-level
  index (`manifest.json`, `model_config.json`, `config.json`, ...) exists. Logs that grow (`metrics.jsonl`,
  TensorBoard) are written to a local mirror and uploaded whole (`Mirror`).
- **No memory map, no library that wants a file name.** Readers that need a local file (audio decoders, HF
  tokenisers, safetensors) get one from `local_copy`: files are downloaded once into the cache
  (`SLAM_JAX_CACHE`, default `~/.cache/slam_jax`, at most `SLAM_JAX_CACHE_GB` GiB, default 20, least recently used
  entries removed first) and reused while the object's size and modification time are unchanged. Unit stores
  are copied the same way when they fit in half the cache, else read by byte ranges (`slam_jax.data.unit_store`).

Failures are one line naming the object (`error_line`): no such bucket, no credentials, permission denied, a
network error after the client libraries' own retries with backoff (gcsfs: 6 attempts; s3fs/botocore: 5).

Credentials are the libraries' usual ones (Application Default Credentials or a service account for gs://;
the AWS environment variables or ~/.aws for s3://). `STORAGE_EMULATOR_HOST` (gcsfs) and `TENSORSTORE_GCS_HTTP_URL`
(TensorStore) point both at a local GCS emulator; `AWS_ENDPOINT_URL` at an S3-compatible server.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import socket
import time
from collections.abc import Iterable

os.environ.setdefault("EPATH_USE_TF", "false")  # fsspec (gcsfs, s3fs) for buckets, whether or not TF is installed
if os.environ.get("STORAGE_EMULATOR_HOST"):
    # gcsfs's probe of a bucket's type is a gRPC call an emulator does not answer (it waits 60 s per bucket)
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec.config  # noqa: E402
from etils import epath  # noqa: E402 - after the environment it reads

from slam_jax.errors import BucketError, exception_chain  # noqa: E402

# Objects change behind a process's back (other hosts, TensorStore under Orbax): never answer from a stale listing.
for _protocol in ("gs", "gcs", "s3", "s3a"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)

SCHEMES = ("gs://", "s3://")


class _PathType(type):
    """`Path(...)` makes a path (see `path`); `isinstance(x, Path)` holds for local and bucket paths alike."""

    def __call__(cls, value: "str | os.PathLike", *parts: "str | os.PathLike"):
        made = path(value)
        return made.joinpath(*parts) if parts else made

    def __instancecheck__(cls, instance) -> bool:
        return isinstance(instance, pathlib.PurePath)


class Path(metaclass=_PathType):
    """The package's path type: `Path("runs/a")` is a `pathlib.Path`, `Path("gs://bucket/a")` an `etils.epath`
    path of the bucket (the same methods; `stat` differs, use `size_and_mtime`)."""

    cwd = staticmethod(pathlib.Path.cwd)
    home = staticmethod(pathlib.Path.home)


CACHE_VARIABLE = "SLAM_JAX_CACHE"
CACHE_LIMIT_VARIABLE = "SLAM_JAX_CACHE_GB"


def path(value: "str | os.PathLike") -> "Path":
    """The one path type for `value`: a local `pathlib.Path` or a bucket URL (gs://, s3://) as an epath path."""
    text = value if isinstance(value, str) else os.fspath(value)
    for scheme in SCHEMES:
        collapsed = scheme[:-1]  # what pathlib makes of a URL: 'gs:/bucket/...'
        if text.startswith(collapsed) and not text.startswith(scheme):
            raise ValueError(f"{text}: a bucket path starts with {scheme} (two slashes)")
    if is_remote(text):
        return epath.Path(text)
    return pathlib.Path(text)


def is_remote(value: "str | os.PathLike") -> bool:
    """Whether `value` names an object in a bucket (gs:// or s3://) rather than a local file."""
    return str(value).startswith(SCHEMES)


def local(value: "str | os.PathLike", what: str = "this path") -> pathlib.Path:
    """`value` as a `pathlib.Path`; a bucket URL is a `ValueError` naming `what` needs a local file."""
    if is_remote(value):
        raise ValueError(f"{value}: {what} must be on a local disk, not in a bucket")
    return pathlib.Path(os.fspath(value)).expanduser()


def size_and_mtime(value: "str | os.PathLike") -> tuple[int, float]:
    """(size in bytes, modification time in seconds) of a local file or a bucket object."""
    if not is_remote(value):
        stat = os.stat(value)
        return stat.st_size, stat.st_mtime
    info = filesystem(value).info(object_key(value))
    modified = _modified(info)
    if isinstance(modified, str):
        import datetime

        modified = datetime.datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp()
    elif hasattr(modified, "timestamp"):
        modified = modified.timestamp()
    return int(info.get("size") or 0), float(modified or 0.0)


def check_array_storage(value: "str | os.PathLike", what: str) -> None:
    """Refuse, in one line, arrays (checkpoints, model weights) on s3://: Orbax writes them to local disks and
    gs:// only (its TensorStore paths are local or GCS)."""
    if str(value).startswith("s3://"):
        raise ValueError(
            f"{value}: {what} cannot be on s3:// (Orbax writes arrays to local disks and gs:// only); "
            "use a gs:// bucket or a local folder for it (data and other outputs may stay on s3://)"
        )


def filesystem(value: "str | os.PathLike"):
    """The fsspec filesystem of a bucket URL (gcsfs or s3fs), shared by every call in this process."""
    import fsspec

    protocol = str(value).split("://", 1)[0]
    return fsspec.filesystem(protocol)


def object_key(value: "str | os.PathLike") -> str:
    """'bucket/key' of a bucket URL (what fsspec's filesystems take)."""
    return str(value).split("://", 1)[1]


# ---------------------------------------------------------------- the local cache of files read from buckets


def cache_dir() -> pathlib.Path:
    """The local cache of files read from buckets (`SLAM_JAX_CACHE`, default ~/.cache/slam_jax)."""
    return pathlib.Path(os.environ.get(CACHE_VARIABLE) or "~/.cache/slam_jax").expanduser()


def cache_limit_bytes() -> int:
    return int(float(os.environ.get(CACHE_LIMIT_VARIABLE) or 20) * (1 << 30))


def local_copy(value: "str | os.PathLike") -> pathlib.Path:
    """A local file or folder with the content of `value`: `value` itself when it is local, else a copy in the cache
    (downloaded once; reused while every object's size and modification time are unchanged).

    Safe for several processes (and threads) sharing one cache: each downloads into its own staging folder, which
    becomes the cache entry by one rename, so an entry appears complete or not at all. The entry is replaced only
    under its lock file (`.<entry>.lock`, flock): a process that finds a valid entry there (the same objects'
    stamps: it lost the race) drops its own copy and uses that one; a stale or invalid entry is renamed aside
    before it is deleted, and a valid one is never deleted."""
    import fcntl
    import secrets

    if not is_remote(value):
        return local(value)
    url = str(value).rstrip("/")
    fs = filesystem(url)
    key = object_key(url)
    try:
        info = fs.info(key)
        listing = (
            {name: fs.info(name) for name in sorted(fs.find(key))} if info.get("type") == "directory" else {key: info}
        )
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: no such object or folder in the bucket") from None
    stamp = {name: [entry.get("size"), str(_modified(entry))] for name, entry in listing.items()}
    wanted = {"url": url, "objects": stamp}
    entry = cache_dir() / "objects" / hashlib.sha256(url.encode()).hexdigest()[:24]
    target = entry / pathlib.PurePosixPath(key).name
    if _holds(entry, target, wanted):
        return target
    _make_room(sum(int(size or 0) for size, _ in stamp.values()))
    staging = entry.with_name(f".{entry.name}.tmp-{os.getpid()}-{secrets.token_hex(8)}")
    staging.mkdir(parents=True)
    try:
        for name in listing:
            relative = pathlib.PurePosixPath(name).relative_to(pathlib.PurePosixPath(key).parent)
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(destination))
        (staging / "source.json").write_text(json.dumps(wanted))
        with open(entry.with_name(f".{entry.name}.lock"), "a") as lock:
            # Only the holder of this lock replaces the entry, so what it finds there stays until it renames it.
            with contextlib.suppress(OSError):  # a filesystem without locks: the rename below still fails on a rival
                fcntl.flock(lock, fcntl.LOCK_EX)
            if not _holds(entry, target, wanted):  # else another process got there first: its copy is this one
                _retire(entry)  # stale or broken: out of the way first, so no reader sees it half deleted
                try:
                    os.rename(staging, entry)  # fails if another process placed the entry meanwhile (no lock)
                except OSError:
                    if not _holds(entry, target, wanted):
                        raise
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _holds(entry: pathlib.Path, target: pathlib.Path, wanted: dict) -> bool:
    """Whether the cache `entry` is the complete copy `wanted` describes (marked most recently used if so)."""
    record = entry / "source.json"
    try:
        if json.loads(record.read_text()) != wanted or not target.exists():
            return False
        os.utime(record)  # most recently used
    except (OSError, ValueError):  # absent, half written by an old version, or renamed away meanwhile
        return False
    return True


def _retire(entry: pathlib.Path) -> None:
    """Rename `entry` aside (a hidden sibling) and delete it there; nothing if it is gone already."""
    import secrets

    aside = entry.with_name(f".{entry.name}.old-{os.getpid()}-{secrets.token_hex(8)}")
    try:
        os.rename(entry, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _modified(entry: dict):
    return entry.get("updated") or entry.get("LastModified") or entry.get("mtime") or entry.get("generation")


_LEFTOVER_SECONDS = 24 * 3600  # a hidden staging folder this old was left by a killed process


def _make_room(needed: int) -> None:
    """Remove the least recently used cache entries until `needed` more bytes fit under the cache's limit (each
    renamed aside first, so that another process never finds one half deleted), and the staging folders that
    killed processes left behind."""
    import time

    root = cache_dir() / "objects"
    if not root.is_dir():
        return
    entries = []
    for entry in root.iterdir():
        try:
            if entry.name.startswith("."):  # a staging or retired folder, or an entry's lock file
                if entry.suffix == ".lock":  # never deleted: another process may hold it
                    continue
                if ".old-" in entry.name or time.time() - entry.stat().st_mtime > _LEFTOVER_SECONDS:
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            size = sum(file.stat().st_size for file in entry.rglob("*") if file.is_file())
            record = entry / "source.json"
            entries.append((record.stat().st_mtime if record.exists() else 0.0, size, entry))
        except OSError:  # renamed or removed by another process meanwhile
            continue
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries, key=lambda item: item[0]):
        if total + needed <= cache_limit_bytes():
            break
        _retire(entry)
        total -= size


# ---------------------------------------------------------------- folder outputs on buckets


def index_last(names: Iterable[str]) -> list[str]:
    """Relative file names in upload order: everything, then the folder's top-level `.json` files (its index)."""
    names = sorted(names)
    return [name for name in names if not _is_index(name)] + [name for name in names if _is_index(name)]


def _is_index(name: str) -> bool:
    return "/" not in name and name.endswith(".json")


def upload_dir(source: pathlib.Path, target: Path) -> None:
    """Upload the local folder `source` to the bucket folder `target` (replacing what `target` held): the old
    index files are removed first and the new ones uploaded last, so a reader never sees a mixed or partial
    folder as complete."""
    fs = filesystem(target)
    key = object_key(target).rstrip("/")
    if fs.exists(key):
        old = sorted(fs.find(key))
        for name in [name for name in old if _is_index(name[len(key) + 1 :])] + old:
            if fs.exists(name):
                fs.rm(name)
    names = [str(file.relative_to(source)) for file in source.rglob("*") if file.is_file()]
    for name in index_last(names):
        fs.put_file(str(source / name), f"{key}/{name}")


class Mirror:
    """A local copy of a few growing files of a bucket folder (logs), uploaded whole by `sync`.

    For a local folder, `root` is the folder itself and `sync` does nothing."""

    def __init__(self, folder: Path, names: Iterable[str] = ()):
        self.folder = path(folder)
        if not is_remote(self.folder):
            self.root = local(self.folder)
            return
        digest = hashlib.sha256(str(self.folder).encode()).hexdigest()[:24]
        self.root = cache_dir() / "mirrors" / digest
        shutil.rmtree(self.root, ignore_errors=True)  # what an earlier run left here is in the bucket already
        self.root.mkdir(parents=True, exist_ok=True)
        for name in names:  # resume: continue the bucket's copy
            source = self.folder / name
            if source.exists():
                (self.root / name).write_bytes(source.read_bytes())
        self._sent: dict[str, tuple[int, int]] = {}

    def sync(self) -> None:
        """Upload every file of the mirror that changed since the last sync."""
        if not is_remote(self.folder):
            return
        with naming(self.folder):
            self._upload_changed()

    def _upload_changed(self) -> None:
        for file in sorted(self.root.rglob("*")):
            if not file.is_file():
                continue
            name = str(file.relative_to(self.root))
            stat = file.stat()
            if self._sent.get(name) == (stat.st_size, stat.st_mtime_ns):
                continue
            (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / name).write_bytes(file.read_bytes())
            self._sent[name] = (stat.st_size, stat.st_mtime_ns)


# ---------------------------------------------------------------- lease objects (the workdir lock in a bucket)


def read_lease(value: "str | os.PathLike") -> dict | None:
    """A lease object ({holder, host, pid, token, renewed, lease}; written by
    `slam_jax.training.manifest.workdir_lock`), or None if absent; an unreadable one reads as expired."""
    try:
        lease = json.loads(path(value).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {"holder": "an unreadable lease", "renewed": 0.0, "lease": 0.0}
    return lease if isinstance(lease, dict) else None


def lease_holder(lease: dict | None, now: float | None = None) -> str | None:
    """Who holds a lease now ('pid 12 on host'), or None when it is absent or stale (not renewed for its `lease`
    seconds, or its process is gone from this host)."""
    if lease is None:
        return None
    now = time.time() if now is None else now
    if now - float(lease.get("renewed", 0.0)) > float(lease.get("lease", 0.0)):
        return None
    if lease.get("host") == socket.gethostname() and not _alive(lease.get("pid")):
        return None
    return str(lease.get("holder") or "another process")


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


# ---------------------------------------------------------------- one line for a failure of a bucket


def error_line(error: BaseException) -> str | None:
    """One line for a bucket failure anywhere behind `error` (None when it is not one)."""
    return next(filter(None, map(_bucket_failure, exception_chain(error))), None)


def _bucket_failure(error: BaseException) -> str | None:
    name, module, text = type(error).__name__, type(error).__module__, " ".join(str(error).split())
    credentials = name in ("DefaultCredentialsError", "NoCredentialsError", "RefreshError")
    if credentials or "credentials were not found" in text:
        return f"no credentials for the bucket ({text}); log in (gcloud auth application-default login, aws configure)"
    code = getattr(error, "code", None) or getattr(error, "status", None)
    gcs = module.startswith(("gcsfs", "google"))
    # s3fs raises PermissionError(message) (no errno); a local file's PermissionError carries errno 13: not ours
    s3_refusal = isinstance(error, PermissionError) and error.errno is None
    if (gcs and code in (401, 403)) or text.startswith("Forbidden:") or s3_refusal:
        return f"permission denied by the bucket ({text})"
    if "PERMISSION_DENIED" in text:
        return f"permission denied by the bucket ({text})"
    if name == "NoSuchBucket" or "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return f"no such bucket ({text})"
    network = module.startswith(("aiohttp", "botocore", "urllib3", "requests")) and any(
        word in name for word in ("Connect", "Connection", "Timeout", "ServerDisconnected", "Proxy")
    )
    if network or text.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")):
        return f"network error talking to the bucket, after the client's retries with backoff ({text})"
    return None


@contextlib.contextmanager
def naming(value: "str | os.PathLike"):
    """Turn a bucket failure inside the block into one `BucketError` line naming `value` (other errors pass)."""
    try:
        yield
    except BucketError:
        raise
    except Exception as error:  # noqa: BLE001 - gcsfs, s3fs, aiohttp, botocore and google-auth each raise their own
        line = error_line(error) if is_remote(value) else None
        if line is None:
            raise
        raise BucketError(f"{value}: {line}") from error


def absolute(value: "str | os.PathLike") -> "Path":
    """`value` as an absolute path: a bucket URL as it is (it is absolute already), a local path made absolute
    (`absolute()` of a bucket path would make the local folder `<cwd>/gs:/bucket/...`)."""
    made = path(value)
    return made if is_remote(made) else made.absolute()


def check_bucket(value: "str | os.PathLike") -> None:
    """Raise a `FileNotFoundError` naming `value` when it is a bucket URL whose bucket does not exist (so a job
    that writes there fails before its work, not at its upload); anything else (a local path, an existing bucket,
    a bucket this process may not inspect) passes."""
    if not is_remote(value):
        return
    scheme, key = str(value).split("://", 1)
    bucket = key.split("/", 1)[0]
    fs = filesystem(value)
    try:
        if scheme == "gs":  # one request (retried with backoff by gcsfs) rather than info's several
            fs.call("GET", "b/{}", bucket, json_out=True)
        else:
            fs.info(bucket)
    except FileNotFoundError:
        raise FileNotFoundError(f"{value}: no such bucket {scheme}://{bucket}") from None
    except Exception as error:  # noqa: BLE001 - gcsfs, s3fs, aiohttp, botocore and google-auth each raise their own
        line = error_line(error)
        if line is None or line.startswith("permission denied"):
            return  # no permission to inspect the bucket: the reads and writes themselves will tell
        raise BucketError(f"{value}: {line}") from error
