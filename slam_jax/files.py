"""Files: atomic writes (outputs appear complete or not at all) and the readers of jsonl / parquet records, on a
local disk or in a bucket (gs://, s3://; see `slam_jax.paths`).

The lowest layer of the package with `errors` and `paths`: every subpackage reads and writes through here.
On a bucket a file is one upload (atomic by itself) and a folder is staged locally and uploaded with its
top-level index files last (`paths.upload_dir`).
"""

import contextlib
import glob
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator

from slam_jax import paths
from slam_jax.errors import DataError
from slam_jax.paths import Path

RECORD_SUFFIXES = (".jsonl", ".parquet")


def refuse_overlap(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """Raise `ValueError` if `output` is, lies inside or contains one of the existing `inputs` (symlinks
    resolved): replacing it would delete or alter what the command reads, whatever `--overwrite` says."""
    target = _resolved(output)
    for source in inputs:
        if not Path(source).exists():
            continue
        origin = _resolved(source)
        if target == origin:
            relation = "is"
        elif target.is_relative_to(origin):
            relation = "is inside"
        elif origin.is_relative_to(target):
            relation = "contains"
        else:
            continue
        raise ValueError(f"{output}: the output {relation} the input {source}; write it to another folder")


def _resolved(value) -> Path:
    path = Path(value)
    return path if paths.is_remote(path) else path.resolve()


def make_staging_dir(directory: Path) -> Path:
    """A new empty sibling of `directory` named `.NAME.tmp-<16 hex digits>`, created by `mkdir` so that it gets the
    usual permissions (0o777 minus the umask) rather than `tempfile.mkdtemp`'s private 0o700."""
    staging = directory.with_name(f".{directory.name}.tmp-{secrets.token_hex(8)}")
    staging.mkdir()  # 64 random bits: a clash would fail here, never reuse another writer's folder
    return staging


@contextlib.contextmanager
def atomic_dir(directory: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty staging folder that becomes `directory` only if the block completes.

    A `directory` that is, lies inside or contains one of `inputs` is always refused (see `refuse_overlap`);
    a non-empty one is refused unless `overwrite`. On any error the staging folder is removed and `directory`
    is left exactly as it was.
    """
    refuse_overlap(directory, inputs)
    if paths.is_remote(directory):
        with _atomic_bucket_dir(Path(directory), overwrite) as staging:
            yield staging
        return
    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory}: already exists and is not empty (pass --overwrite to replace it)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(directory)
    try:
        yield staging
        if directory.exists():
            retired = directory.with_name(f".{directory.name}.old-{staging.name}")
            directory.rename(retired)
            staging.rename(directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def _atomic_bucket_dir(directory: Path, overwrite: bool) -> Iterator[Path]:
    """`atomic_dir` for a bucket folder: a local staging folder, uploaded index-last when the block completes."""
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory}: already exists and is not empty (pass --overwrite to replace it)")
    staging = Path(tempfile.mkdtemp(prefix=f"{directory.name}.upload-"))
    try:
        yield staging
        with paths.naming(directory):
            paths.upload_dir(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary sibling, flushed to disk, renamed into place (in a bucket,
    one upload, which is atomic by itself)."""
    write_bytes(path, text.encode())


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (as `write_text`)."""
    path = Path(path)
    if paths.is_remote(path):
        with paths.naming(path):
            path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(staging, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


def save_array(path: str | Path, array) -> None:
    """Write one array as a .npy file atomically (a local disk or a bucket)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    write_bytes(path, buffer.getvalue())


def load_array(path: str | Path):
    """Read a .npy file whole (a local disk or a bucket)."""
    import io

    import numpy as np

    return np.load(io.BytesIO(Path(path).read_bytes()), allow_pickle=False)


def read_jsonl(path: str | Path) -> list[dict]:
    """The objects of a jsonl file (blank lines skipped), or [] if the file does not exist."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def expand_paths(spec: str) -> list[Path]:
    """Files named by a comma-separated list of files, folders (searched recursively) and globs."""
    files: list[Path] = []
    for part in filter(None, (piece.strip() for piece in spec.split(","))):
        if paths.is_remote(part):
            files += _expand_bucket_path(part)
            continue
        path = Path(part)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in RECORD_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(match) for match in glob.glob(part, recursive=True))
            if not matches:
                raise DataError(f"{part}: no such file, folder or glob match")
            files += [match for match in matches if match.is_file()]
    return files


def _expand_bucket_path(part: str) -> list[Path]:
    """The record files a bucket URL names: an object, every record file under a folder, or a glob's matches."""
    fs = paths.filesystem(part)
    key = paths.object_key(part)
    with paths.naming(part):
        if any(char in key for char in "*?["):
            names = sorted(fs.glob(key))
        elif fs.isdir(key):
            names = sorted(name for name in fs.find(key) if name.endswith(RECORD_SUFFIXES))
        elif fs.isfile(key):
            names = [key]
        else:
            names = []
    if not names:
        raise DataError(f"{part}: no such file, folder or glob match")
    scheme = part.split("://", 1)[0]
    return [Path(f"{scheme}://{name}") for name in names]


def read_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(`file:line` or `file:row`, record) of a jsonl or parquet file; a line that is not a JSON object in UTF-8
    (a binary file's first line, say) is a `DataError` naming it."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            if paths.is_remote(path):
                with Path(path).open("rb") as handle:
                    table = pq.read_table(handle)
            else:
                table = pq.read_table(path)
        except Exception as error:  # noqa: BLE001 - any pyarrow failure becomes one line naming the file
            raise DataError(f"{path}: not a readable parquet file ({error})") from None
        for row, record in enumerate(table.to_pylist()):
            yield f"{path}:row {row}", record
        return
    # Read as bytes and decoded line by line, so that a binary or non-UTF-8 file is an error naming its line.
    with paths.naming(path), Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                byte = raw[error.start : error.start + 1]
                raise DataError(f"{path}:{number}: not UTF-8 text (byte {byte!r}); is it a binary file?") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            except (ValueError, RecursionError) as error:  # an integer of over 4300 digits, nesting too deep
                raise DataError(f"{path}:{number}: not readable JSON ({type(error).__name__}: {error})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object")
            yield f"{path}:{number}", record
