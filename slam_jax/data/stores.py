"""From `data.train_path` / `data.valid_path` to prepared unit stores, preparing raw inputs on first use.

Each comma-separated entry of `data.train_path` is one of: a unit store; a prepared folder (holding
`train/` and `valid/` stores); raw unit files (a jsonl/parquet file, folder or glob), prepared once into
`WORKDIR/data/<name>/`; or `synthetic`, the grammar corpus of `slam_jax.data.synthetic`.
"""

import dataclasses
import hashlib
from pathlib import Path

from slam_jax.data import ingest, synthetic
from slam_jax.data.unit_store import UnitStore, is_store
from slam_jax.settings import Settings, setting

SYNTHETIC = "synthetic"


@dataclasses.dataclass(frozen=True)
class DataSettings(Settings):
    """`data`: where the unit sequences come from and how they become rows (configs/slam.py documents each)."""

    train_path: str = ""
    valid_path: str = ""
    weights: str = ""
    num_units: int = setting(500, above=0)
    context_length: int = setting(1024, minimum=2)
    packing: bool = True
    valid_fraction: float = setting(0.01, minimum=0.0, maximum=1.0)
    synthetic_files: int = setting(20_000, above=0)

    def mixture_weights(self) -> list[float] | None:
        """One weight per `train_path` entry, or None (by size)."""
        try:
            return [float(weight) for weight in self.weights.split(",") if weight.strip()] or None
        except ValueError:
            raise ValueError(f"{self._source}.weights={self.weights!r}: expected comma-separated numbers") from None


@dataclasses.dataclass(frozen=True)
class PrepareJob(Settings):
    """A `prepare` config: only its `data` section and seed matter; the other sections a pre-training config
    carries are accepted as they are (the same file runs both jobs)."""

    mode: str = "prepare"
    seed: int = 42
    data: DataSettings = DataSettings()


def _prepared_dir(entry: str, workdir: Path) -> Path:
    digest = hashlib.sha1(entry.encode()).hexdigest()[:8]
    return workdir / "data" / f"{Path(entry.rstrip('/')).stem or 'data'}-{digest}"


def prepare_entry(entry: str, data: DataSettings, workdir: Path, seed: int) -> Path:
    """The prepared folder (train/ + valid/) for one raw entry, written if it does not exist yet."""
    if entry == SYNTHETIC:
        out = workdir / "data" / f"synthetic-{data.synthetic_files}-{seed}"
        if not (out / "train").is_dir():
            raw = synthetic.write_jsonl(
                workdir / "data" / "raw" / f"synthetic-{seed}.jsonl", data.synthetic_files, data.num_units, seed
            )
            ingest.prepare(str(raw), out, data.num_units, data.valid_fraction, overwrite=True)
        return out
    out = _prepared_dir(entry, workdir)
    if not (out / "train").is_dir():
        ingest.prepare(entry, out, data.num_units, data.valid_fraction, overwrite=True)
    return out


def resolve(data: DataSettings, workdir: Path, seed: int) -> tuple[list[str], list[str]]:
    """Train and validation store folders named by the config (validation defaults to the held-out splits)."""
    train, held_out = [], []
    for entry in _entries(data.train_path, "data.train_path"):
        if is_store(entry):
            train.append(entry)
            continue
        folder = Path(entry) if is_store(Path(entry) / "train") else prepare_entry(entry, data, workdir, seed)
        train.append(str(folder / "train"))
        if is_store(folder / "valid") and _num_sequences(folder / "valid"):
            held_out.append(str(folder / "valid"))
    if not data.valid_path:
        return train, held_out
    return train, [_valid_store(entry, data, workdir, seed) for entry in _entries(data.valid_path, "data.valid_path")]


def _valid_store(entry: str, data: DataSettings, workdir: Path, seed: int) -> str:
    """A validation store: the store itself, a prepared folder's valid/ split, or raw files prepared whole."""
    folder = Path(entry)
    if is_store(folder):
        return str(folder)
    if is_store(folder / "valid"):
        return str(folder / "valid")
    return str(prepare_entry(entry, data, workdir, seed) / "train")


def run_prepare(config, workdir: Path) -> dict:
    """`mode: prepare`: write the unit stores of `data.train_path` / `data.valid_path` and report them."""
    job = PrepareJob.from_dict({key: config[key] for key in ("mode", "seed", "data") if key in config}, "config")
    train, valid = resolve(job.data, Path(workdir), job.seed)
    report = {
        "train": {path: UnitStore(path).manifest["num_tokens"] for path in train},
        "valid": {path: UnitStore(path).manifest["num_tokens"] for path in valid},
    }
    for split, paths in report.items():
        for path, count in paths.items():
            print(f"[prepare] {split}: {path} ({count:,} tokens)")
    return report


def _entries(spec: str, key: str) -> list[str]:
    entries = [piece.strip() for piece in str(spec).split(",") if piece.strip()]
    if not entries:
        raise ValueError(f"{key} is empty: name prepared stores, unit jsonl/parquet files or 'synthetic'")
    return entries


def _num_sequences(store: Path) -> int:
    return len(UnitStore(store))
