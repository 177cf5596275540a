"""Atomic writes: outputs appear complete or not at all."""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(directory: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder that becomes `directory` only if the block completes.

    A non-empty `directory` is refused unless `overwrite`; on any error the staging folder is removed and
    `directory` is left exactly as it was.
    """
    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory}: already exists and is not empty (pass --overwrite to replace it)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
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


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary sibling, flushed to disk, renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(staging, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


def read_jsonl(path: str | Path) -> list[dict]:
    """The objects of a jsonl file (blank lines skipped), or [] if the file does not exist."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
