"""Fingerprints of input files: what a prepared store and a run's manifest remember of the data they were made from.

A small file (up to `HASHED_BYTES`) is known by its size and a hash of its content, so copying or touching it
changes nothing; a large one by its size and modification time, so that a start never reads gigabytes to hash
them. A prepared store (`slam_jax/data/stores.py`) compares the fingerprints of its sources to decide whether
to prepare them again; the run manifest (`slam_jax/training/manifest.py`) compares the digest of a whole entry.
"""

import hashlib
import json

from slam_jax import paths
from slam_jax.paths import Path

HASHED_BYTES = 1 << 20


def file_fingerprint(path: Path) -> str:
    """'size N, sha1 X' for a small file, 'size N, mtime T' (nanoseconds) for a large one."""
    path = Path(path)
    if not paths.is_remote(path):
        stat = path.stat()
        size, modified = stat.st_size, stat.st_mtime_ns
    else:  # an object in a bucket: its size and update time (to the microsecond)
        size, seconds = paths.size_and_mtime(path)
        modified = round(seconds * 1e6) * 1000
    if size <= HASHED_BYTES:
        return f"size {size}, sha1 {hashlib.sha1(path.read_bytes()).hexdigest()}"
    return f"size {size}, mtime {modified}"


def files_fingerprints(files: list[Path]) -> dict[str, str]:
    """{file name as given: its fingerprint}."""
    return {str(path): file_fingerprint(path) for path in files}


def digest(fingerprints: dict[str, str]) -> str:
    """A short hash of many fingerprints (order-independent), for one-line comparisons."""
    return hashlib.sha1(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()[:12]


def summary(fingerprints: dict[str, str]) -> str:
    """'N files, B bytes, digest D': the one line a run manifest keeps of a set of files."""
    total = sum(int(value.split(",")[0].removeprefix("size ")) for value in fingerprints.values())
    count = len(fingerprints)
    return f"{count} file{'s' if count != 1 else ''}, {total:,} bytes, digest {digest(fingerprints)}"


def first_difference(old: dict[str, str], new: dict[str, str]) -> str:
    """The first file that was added, removed or changed between two fingerprint sets ('' if none)."""
    for name in sorted(set(old) | set(new)):
        if name not in old:
            return f"{name} is new"
        if name not in new:
            return f"{name} is gone"
        if old[name] != new[name]:
            return f"{name} changed ({old[name]} -> {new[name]})"
    return ""
