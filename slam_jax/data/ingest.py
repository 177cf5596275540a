"""`prepare`: read unit files in the reference's formats into train/validation unit stores.

Inputs (a file, folder or glob; comma-separated lists allowed):
- `*.jsonl` lines with `units` (the reference's / our tokeniser's features.jsonl) or `audio_repr`
  (the reference's tokens.jsonl, `<Un3><Un49>...`);
- `*.parquet` (HF datasets) with a `units` or `audio_repr` column.
Each file (row) becomes `[1, u0 + 2, ..., 1]`. The validation split takes the rows whose file name hashes
below `valid_fraction`: stable across runs, machines, folders and input order.
"""

import hashlib
import json
import re
import time

import numpy as np

from slam_jax import tokens
from slam_jax.data import fingerprints
from slam_jax.data.unit_store import UnitStoreWriter
from slam_jax.errors import DataError
from slam_jax.files import atomic_dir, expand_paths, read_records
from slam_jax.paths import Path

_UNIT = re.compile(r"<Un(\d+)>")
SUMMARY = "prepare_summary.json"


def _shown(value) -> str:
    """`value` as an error message quotes it: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _string_units(text: str, where: str, key: str) -> list[int]:
    """The units of a `<Un3><Un49>...` string; anything else in it (`"3 49"`, a path) is an error naming it."""
    stray = _UNIT.sub(" ", text).split()
    if stray:
        raise DataError(f"{where}: '{key}' is {_shown(text)}, not <UnN> units like '<Un3><Un49>'")
    return [int(match) for match in _UNIT.findall(text)]


def parse_units(record: dict, where: str, num_units: int) -> np.ndarray:
    """The unit ids of one record (`units`: a list or a `<UnN>` string; or an `audio_repr` string), checked.

    Only JSON integers are units: a float (even 3.0), a boolean or a nested list is an error naming the value,
    never coerced, and an integer outside [0, num_units) (however large) is one too.
    """
    key = next((name for name in ("units", "audio_repr") if name in record), None)
    if key is None:
        raise DataError(f"{where}: no 'units' or 'audio_repr' field (keys: {sorted(record)})")
    units = record[key]
    if isinstance(units, str):
        units = _string_units(units, where, key)
    if not isinstance(units, list):
        raise DataError(f"{where}: '{key}' is {_shown(units)} ({type(units).__name__}), not a list of integers")
    # type() rather than isinstance: a boolean is an int to isinstance, and numpy would turn True into 1.
    if set(map(type, units)) - {int}:
        bad = next(unit for unit in units if type(unit) is not int)
        raise DataError(f"{where}: '{key}' holds {_shown(bad)} ({type(bad).__name__}); units are integers")
    # Checked as Python integers, before numpy, so that one too large for int64 is reported, not overflowed.
    if units and (min(units) < 0 or max(units) >= num_units):
        bad = min(units) if min(units) < 0 else max(units)
        raise DataError(f"{where}: unit {_shown(bad)} outside [0, {num_units})")
    return np.asarray(units, np.int64)


def is_validation(name: str, valid_fraction: float) -> bool:
    """Stable split: the first 8 bytes of sha1(base name) as a fraction of 2**64.

    Only the base name counts (`/data/a/x.flac` -> `x.flac`), so moving a dataset or tokenising it into another
    working directory keeps its split; two files of the same base name land on the same side.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    digest = int.from_bytes(hashlib.sha1(base.encode()).digest()[:8], "big")
    return digest < valid_fraction * 2.0**64


def prepare(spec: str, out: str | Path, num_units: int, valid_fraction: float = 0.01, overwrite: bool = False) -> dict:
    """Write `out/train` and `out/valid` unit stores from the files of `spec`; returns the summary.

    The summary (`out/prepare_summary.json`) records the inputs' fingerprints, taken before they are read, so a
    later change of a source file is seen (`slam_jax.data.stores` prepares the folder again)."""
    files = expand_paths(spec)
    if not files:
        raise DataError(f"{spec}: no .jsonl or .parquet files")
    sources = fingerprints.files_fingerprints(files)
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
                writers[split].add(tokens.unit_sequence(units), source=path.name)
        manifests = {split: writer.close() for split, writer in writers.items()}
        if not manifests["train"]["num_sequences"]:
            raise DataError(f"{spec}: no non-empty sequences to train on")
        summary = {
            "inputs": [str(path) for path in files],
            "sources": sources,
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
