"""The project's random-access unit store: flat token arrays plus offsets, in shards, with a manifest.

    STORE/manifest.json                  counts, token dtype, shard list, per-source statistics
    STORE/shard-00000.tokens.npy         every sequence's token ids back to back ([1, u + 2, ..., 1])
    STORE/shard-00000.offsets.npy        int64 [num_sequences + 1]: sequence i is tokens[o[i]:o[i + 1]]

Shards are memory-mapped on read, so any number of hosts and Grain workers can read one store at once. A store
in a bucket (gs://, s3://) is read one of two ways, by `SLAM_JAX_STORE_CACHE` (`STORE_CACHE_VARIABLE`):
    auto    (default) its token shards are copied once into the local cache (`slam_jax.paths.local_copy`: named by
            their URL, reused while unchanged, within `SLAM_JAX_CACHE_GB`) and memory-mapped, when they take at
            most half the cache; otherwise streamed
    never   streamed: the offsets read whole (8 bytes per sequence), the tokens by byte ranges, one request per
            slice (the pipeline's reader threads keep several in flight); nothing is written to the local disk
Streaming is bound by the bucket's latency: benchmarks/RESULTS.md ("Unit stores in a bucket") has the figures.
A store is written once, atomically (see `slam_jax.files.atomic_dir`).
"""

import json
import os

import numpy as np

from slam_jax import files, paths
from slam_jax.paths import Path

FORMAT = "slam_jax.unit_store"
STORE_CACHE_VARIABLE = "SLAM_JAX_STORE_CACHE"
MANIFEST = "manifest.json"
_SHARD_TOKENS = 1 << 28


class UnitStoreWriter:
    """Appends token sequences into shards under `directory` (a staging folder); `close` writes the manifest."""

    def __init__(self, directory: Path, vocab_size: int, shard_tokens: int = _SHARD_TOKENS):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)
        self.vocab_size = vocab_size
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []
        self.sources: dict[str, dict[str, int]] = {}
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0

    def add(self, sequence: np.ndarray, source: str = "") -> None:
        self._pending.append(np.asarray(sequence, self.dtype))
        self._pending_tokens += len(sequence)
        stats = self.sources.setdefault(source, {"files": 0, "tokens": 0})
        stats["files"] += 1
        stats["tokens"] += len(sequence)
        if self._pending_tokens >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"shard-{len(self.shards):05d}"
        lengths = np.array([len(sequence) for sequence in self._pending], np.int64)
        np.save(self.directory / f"{name}.tokens.npy", np.concatenate(self._pending))
        np.save(self.directory / f"{name}.offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
        self.shards.append({"name": name, "num_sequences": len(lengths), "num_tokens": int(lengths.sum())})
        self._pending, self._pending_tokens = [], 0

    def close(self) -> dict:
        self._flush()
        manifest = {
            "format": FORMAT,
            "version": 1,
            "vocab_size": self.vocab_size,
            "token_dtype": self.dtype.name,
            "num_sequences": sum(shard["num_sequences"] for shard in self.shards),
            "num_tokens": sum(shard["num_tokens"] for shard in self.shards),
            "shards": self.shards,
            "sources": self.sources,
        }
        (self.directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


class BucketArray:
    """A one-dimensional .npy file in a bucket, read by byte ranges: `array[start:end]` is one request."""

    def __init__(self, path: Path):
        self.fs, self.key = paths.filesystem(path), paths.object_key(path)
        with self.fs.open(self.key, "rb", block_size=1 << 12) as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            self.header_bytes = handle.tell()
        if len(shape) != 1 or fortran:
            raise ValueError(f"{path}: expected a one-dimensional token array, found shape {shape}")
        self.dtype, self.length = np.dtype(dtype), shape[0]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: slice) -> np.ndarray:
        start, end, _ = index.indices(self.length)
        if end <= start:
            return np.zeros(0, self.dtype)
        size = self.dtype.itemsize
        data = self.fs.cat_file(self.key, start=self.header_bytes + start * size, end=self.header_bytes + end * size)
        return np.frombuffer(data, self.dtype)


def cached(manifest: dict) -> bool:
    """Whether a store in a bucket is read from the local cache (`SLAM_JAX_STORE_CACHE`, see the module's doc)."""
    mode = os.environ.get(STORE_CACHE_VARIABLE) or "auto"
    if mode not in ("auto", "never"):
        raise ValueError(f"{STORE_CACHE_VARIABLE}={mode!r}: use 'auto' or 'never'")
    token_bytes = manifest["num_tokens"] * np.dtype(manifest["token_dtype"]).itemsize
    return mode == "auto" and token_bytes <= paths.cache_limit_bytes() // 2


def is_store(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class UnitStore:
    """Read-only random access to the sequences of a store (memory-mapped)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        try:
            self.manifest = json.loads((self.directory / MANIFEST).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.directory}: not a unit store (no {MANIFEST}; run mode=prepare)") from None
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{self.directory / MANIFEST}: format {self.manifest.get('format')!r} is not {FORMAT}")
        streamed = paths.is_remote(self.directory) and not cached(self.manifest)
        shards = [self._open_shard(shard["name"], streamed) for shard in self.shards]
        self._tokens, self._offsets = [tokens for tokens, _ in shards], [offsets for _, offsets in shards]
        counts = [shard["num_sequences"] for shard in self.shards]
        self._first_index = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _open_shard(self, name: str, streamed: bool):
        """(tokens, offsets) of shard `name`: memory-mapped from the local disk or from the local cache of a bucket
        store, or (`streamed`) read by byte ranges and whole."""
        tokens, offsets = self.directory / f"{name}.tokens.npy", self.directory / f"{name}.offsets.npy"
        if streamed:
            return BucketArray(tokens), files.load_array(offsets)
        if paths.is_remote(self.directory):
            tokens, offsets = paths.local_copy(tokens), paths.local_copy(offsets)
        return np.load(tokens, mmap_mode="r"), np.load(offsets)

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def num_tokens(self) -> int:
        return self.manifest["num_tokens"]

    def __len__(self) -> int:
        return self.manifest["num_sequences"]

    def lengths(self) -> np.ndarray:
        """Token count of every sequence, in store order."""
        return np.concatenate([np.diff(offsets) for offsets in self._offsets]) if self._offsets else np.zeros(0)

    def __getitem__(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self._first_index, index, side="right") - 1)
        local = index - self._first_index[shard]
        start, end = self._offsets[shard][local], self._offsets[shard][local + 1]
        return np.asarray(self._tokens[shard][start:end], np.int32)

    def slice(self, index: int, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of sequence `index`."""
        shard = int(np.searchsorted(self._first_index, index, side="right") - 1)
        base = self._offsets[shard][index - self._first_index[shard]]
        return np.asarray(self._tokens[shard][base + start : base + end], np.int32)
