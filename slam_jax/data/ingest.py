"""`prepare`: read unit files in the reference's formats into train/validation unit stores.

Inputs (a file, folder or glob; comma-separated lists allowed):
- `*.jsonl` lines with `units` (the reference's / our tokeniser's features.jsonl) or `audio_repr`
  (the reference's tokens.jsonl, `<Un3><Un49>...`);
- `*.parquet` (HF datasets) with a `units` or `audio_repr` column.
Each file (row) becomes `[1, u0 + 2, ..., 1]`. The validation split takes the rows whose file name hashes
below `valid_fraction`: stable across runs, machines, folders and input order.
"""

import glob
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from slam_jax import tokens
from slam_jax.data.unit_store import UnitStoreWriter
from slam_jax.files import atomic_dir

_UNIT = re.compile(r"<Un(\d+)>")
_SUFFIXES = (".jsonl", ".parquet")
SUMMARY = "prepare_summary.json"


class DataError(ValueError):
    """Bad input data; the message names the file and line (or row)."""


def expand_paths(spec: str) -> list[Path]:
    """Files named by a comma-separated list of files, folders (searched recursively) and globs."""
    files: list[Path] = []
    for part in filter(None, (piece.strip() for piece in spec.split(","))):
        path = Path(part)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(match) for match in glob.glob(part, recursive=True))
            if not matches:
                raise DataError(f"{part}: no such file, folder or glob match")
            files += [match for match in matches if match.is_file()]
    return files


def parse_units(record: dict, where: str, num_units: int) -> np.ndarray:
    """The unit ids of one record (`units` list or `audio_repr` string), range-checked."""
    if "units" in record:
        units = record["units"]
        if isinstance(units, str):
            units = [int(match) for match in _UNIT.findall(units)]
    elif "audio_repr" in record:
        units = [int(match) for match in _UNIT.findall(record["audio_repr"])]
    else:
        raise DataError(f"{where}: no 'units' or 'audio_repr' field (keys: {sorted(record)})")
    try:
        array = np.asarray(units, np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: 'units' is not a list of integers") from None
    if array.ndim != 1:
        raise DataError(f"{where}: 'units' is not a flat list of integers")
    if array.size and (array.min() < 0 or array.max() >= num_units):
        raise DataError(
            f"{where}: unit {int(array.max() if array.max() >= num_units else array.min())} outside [0, {num_units})"
        )
    return array


def read_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(`file:line` or `file:row`, record) of a jsonl or parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as error:  # noqa: BLE001 - any pyarrow failure becomes one line naming the file
            raise DataError(f"{path}: not a readable parquet file ({error})") from None
        for row, record in enumerate(table.to_pylist()):
            yield f"{path}:row {row}", record
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object")
            yield f"{path}:{number}", record


def is_validation(name: str, valid_fraction: float) -> bool:
    """Stable split: the first 8 bytes of sha1(base name) as a fraction of 2**64.

    Only the base name counts (`/data/a/x.flac` -> `x.flac`), so moving a dataset or tokenising it into another
    working directory keeps its split; two files of the same base name land on the same side.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    digest = int.from_bytes(hashlib.sha1(base.encode()).digest()[:8], "big")
    return digest < valid_fraction * 2.0**64


def to_sequence(units: np.ndarray) -> np.ndarray:
    return np.concatenate([[tokens.BOS_ID], units + tokens.UNIT_OFFSET, [tokens.EOS_ID]])


def prepare(spec: str, out: str | Path, num_units: int, valid_fraction: float = 0.01, overwrite: bool = False) -> dict:
    """Write `out/train` and `out/valid` unit stores from the files of `spec`; returns the summary."""
    files = expand_paths(spec)
    if not files:
        raise DataError(f"{spec}: no .jsonl or .parquet files")
    start = time.perf_counter()
    vocab = tokens.vocab_size_for(num_units)
    with atomic_dir(out, overwrite=overwrite) as staging:
        writers = {split: UnitStoreWriter(staging / split, vocab) for split in ("train", "valid")}
        skipped = 0
        for path in files:
            for where, record in read_records(path):
                units = parse_units(record, where, num_units)
                if not units.size:
                    skipped += 1
                    continue
                name = str(record.get("file_name", where))
                split = "valid" if is_validation(name, valid_fraction) else "train"
                writers[split].add(to_sequence(units), source=path.name)
        manifests = {split: writer.close() for split, writer in writers.items()}
        if not manifests["train"]["num_sequences"]:
            raise DataError(f"{spec}: no non-empty sequences to train on")
        summary = {
            "inputs": [str(path) for path in files],
            "num_units": num_units,
            "valid_fraction": valid_fraction,
            "skipped_empty": skipped,
            "seconds": round(time.perf_counter() - start, 2),
            **{
                f"{split}_{key}": manifests[split][key]
                for split in manifests
                for key in ("num_sequences", "num_tokens")
            },
        }
        (staging / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
