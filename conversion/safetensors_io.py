"""Read and write safetensors files with numpy only (no torch), memory-mapped, with errors that name the file.

Reading maps each file once and hands out zero-copy views, dropping the pages of earlier tensors as it goes,
so a checkpoint read tensor by tensor is never held twice in RAM.
bfloat16 and float8 tensors come back as `ml_dtypes` arrays.
"""

import json
import math
import mmap
import os
import struct

import ml_dtypes
import numpy as np

from slam_jax.paths import Path

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as asked; the message names the file and, if any, the tensor."""


class SafetensorsFile:
    """One safetensors file: its tensor names, shapes and dtypes, and zero-copy array views."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header, data_start = _read_header(self.path)
        self.metadata = self.header.pop("__metadata__", {}) or {}
        size = self.path.stat().st_size
        self._mmap = None
        self._buffer = np.zeros(0, np.uint8)
        if size > data_start:
            with open(self.path, "rb") as handle:
                self._mmap = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._buffer = np.frombuffer(self._mmap, np.uint8)
        self._data_start = data_start
        for name, entry in self.header.items():
            _check_entry(self.path, name, entry, size - data_start)

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy view into the mapped file.

        The pages read for earlier tensors are dropped first (they come back from the file if touched again), so
        reading a checkpoint tensor by tensor keeps about one tensor of it in RAM, not the whole file.
        """
        if self._mmap is not None:
            self._mmap.madvise(mmap.MADV_DONTNEED)
        entry = self.header[name]
        begin, end = entry["data_offsets"]
        raw = self._buffer[self._data_start + begin : self._data_start + end]
        return raw.view(DTYPES[entry["dtype"]]).reshape(entry["shape"])


def _read_header(path: Path) -> tuple[dict, int]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: corrupt safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER or length + 8 > path.stat().st_size:
            raise CheckpointError(f"{path}: corrupt safetensors file (header length {length} exceeds the file)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: corrupt safetensors header ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + length


def _check_entry(path: Path, name: str, entry, data_size: int) -> None:
    try:
        dtype = DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        shape = [int(dim) for dim in entry["shape"]]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: tensor {name}: malformed or unsupported header entry {entry}") from None
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected or begin < 0 or end > data_size:
        raise CheckpointError(
            f"{path}: tensor {name}: data [{begin}, {end}) does not hold shape {shape} {entry['dtype']} "
            f"within the file's {data_size} data bytes (truncated or corrupt)"
        )


class CheckpointReader:
    """All tensors of an HF checkpoint folder: one `model.safetensors` or shards listed by an index."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise CheckpointError(f"{index}: not a safetensors index ({error})") from None
            files = {shard: SafetensorsFile(self.folder / shard) for shard in dict.fromkeys(weight_map.values())}
            self._where = {tensor: files[shard] for tensor, shard in weight_map.items()}
        elif (self.folder / SINGLE_FILE).is_file():
            single = SafetensorsFile(self.folder / SINGLE_FILE)
            self._where = {tensor: single for tensor in single.keys()}
        else:
            raise CheckpointError(f"{self.folder}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors are read)")

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def file_of(self, name: str) -> Path:
        return self._where[name].path

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Tensor `name`; with `shape`, an error naming file and tensor if the stored shape differs."""
        if name not in self._where:
            raise CheckpointError(f"{self.folder}: tensor {name} missing from the checkpoint")
        source = self._where[name]
        if name not in source.header:
            raise CheckpointError(f"{source.path}: tensor {name} listed in {INDEX_FILE} but not in the file")
        if shape is not None and source.shape(name) != tuple(shape):
            raise CheckpointError(
                f"{source.path}: tensor {name} has shape {source.shape(name)}, config.json implies {tuple(shape)}"
            )
        return source.get(name)


def save_file(tensors: dict[str, np.ndarray], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` as one safetensors file (streamed: no second copy of the data in RAM)."""
    header, offset = {}, 0
    for name, array in tensors.items():
        if array.dtype not in NAMES:
            raise CheckpointError(f"{path}: tensor {name}: dtype {array.dtype} has no safetensors name")
        header[name] = {
            "dtype": NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    if metadata:
        header["__metadata__"] = metadata
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for array in tensors.values():
            handle.write(np.ascontiguousarray(array).tobytes(order="C"))
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(tensors: dict[str, np.ndarray], folder: str | Path, max_shard_bytes: int = 0) -> list[str]:
    """Write `tensors` into `folder` as HF does: one file, or shards plus an index if over `max_shard_bytes`."""
    folder = Path(folder)
    metadata = {"format": "pt"}
    total = sum(array.nbytes for array in tensors.values())
    if not max_shard_bytes or total <= max_shard_bytes:
        save_file(tensors, folder / SINGLE_FILE, metadata)
        return [SINGLE_FILE]
    shards, current, size = [], {}, 0
    for name, array in tensors.items():
        if current and size + array.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = array
        size += array.nbytes
    shards.append(current)
    weight_map, names = {}, []
    for number, shard in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file_name, metadata)
        weight_map.update(dict.fromkeys(shard, file_name))
        names.append(file_name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return names
