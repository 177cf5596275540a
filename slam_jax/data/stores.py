"""From `data.train_path` / `data.valid_path` to prepared unit stores, preparing raw inputs on first use.

Each comma-separated entry of `data.train_path` is one of: a unit store; a prepared folder (holding
`train/` and `valid/` stores); raw unit files (a jsonl/parquet file, folder or glob), prepared once into
`WORKDIR/data/<name>/`; or `synthetic`, the grammar corpus of `slam_jax.data.synthetic`. A prepared folder
remembers its sources' fingerprints, `num_units` and held-out share (`prepare_summary.json`) and is prepared
again when one of them changes. With `data.valid_path` given nothing of `data.train_path` is held out (slamkit's
rule); without it, `data.valid_fraction` of each raw entry is.
"""

import dataclasses
import hashlib
import json

from slam_jax.data import fingerprints, ingest, synthetic
from slam_jax.data.unit_store import MANIFEST, UnitStore, is_store
from slam_jax.errors import DataError
from slam_jax.files import expand_paths
from slam_jax.paths import Path
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


def stale_reason(out: Path, num_units: int, valid_fraction: float, sources: dict[str, str] | None) -> str:
    """Why the prepared folder `out` cannot serve these settings and sources ('' when it can).

    `sources` None: the sources are generated from the settings (the synthetic corpus), so the settings decide."""
    if not (out / "train").is_dir():
        return "not prepared"
    try:
        summary = json.loads((out / ingest.SUMMARY).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return f"no readable {ingest.SUMMARY}"
    if summary.get("num_units") != num_units:
        return f"prepared with num_units={summary.get('num_units')}, now {num_units}"
    if summary.get("valid_fraction") != valid_fraction:
        return f"prepared with a held-out share of {summary.get('valid_fraction')}, now {valid_fraction}"
    if sources is None:
        return ""
    if "sources" not in summary:
        return "prepared without a record of its source files"
    return fingerprints.first_difference(summary["sources"], sources)


def prepare_entry(entry: str, data: DataSettings, workdir: Path, seed: int, valid_fraction: float) -> Path:
    """The prepared folder (train/ + valid/) for one raw entry, holding out `valid_fraction` of it; written if it
    does not exist yet, and written again (with a message) when its sources or `data.num_units` changed."""
    if entry == SYNTHETIC:
        out = workdir / "data" / f"synthetic-{data.synthetic_files}-{seed}"
        reason = stale_reason(out, data.num_units, valid_fraction, None)
    else:
        out = _prepared_dir(entry, workdir)
        reason = stale_reason(out, data.num_units, valid_fraction, fingerprints.files_fingerprints(expand_paths(entry)))
    if not reason:
        return out
    if reason != "not prepared":
        print(f"[data] {out}: {reason}; preparing it again from {entry}")
    spec = entry
    if entry == SYNTHETIC:
        raw = workdir / "data" / "raw" / f"synthetic-{seed}.jsonl"
        spec = str(synthetic.write_jsonl(raw, data.synthetic_files, data.num_units, seed))
    ingest.prepare(spec, out, data.num_units, valid_fraction, overwrite=True)
    return out


@dataclasses.dataclass(frozen=True)
class ResolvedStores:
    """The stores a run reads: `train` with one mixture weight each (`weights`, None: by size) and `valid`."""

    train: list[str]
    valid: list[str]
    weights: list[float] | None


def resolve(data: DataSettings, workdir: Path, seed: int) -> ResolvedStores:
    """Train and validation stores named by the config.

    Without `data.valid_path`, validation is the held-out splits of `data.train_path`. With it, as slamkit does,
    nothing of `data.train_path` is held out: raw entries are prepared whole and a prepared folder's valid/
    split is trained on too."""
    whole = bool(data.valid_path)
    entries = _entries(data.train_path, "data.train_path")
    weights = data.mixture_weights()
    if weights and len(weights) != len(entries):
        raise ValueError(f"data.weights has {len(weights)} entries for {len(entries)} data.train_path entries")
    train, train_weights, held_out = [], [], []
    for index, entry in enumerate(entries):
        entry_train, entry_held_out = _entry_stores(entry, data, workdir, seed, whole)
        train += entry_train
        held_out += [entry_held_out] if entry_held_out else []
        train_weights += _split_weight(weights[index], entry_train) if weights else []
    if whole:
        held_out = [_valid_store(entry, data, workdir, seed) for entry in _entries(data.valid_path, "data.valid_path")]
    return ResolvedStores(train, held_out, train_weights or None)


def _entry_stores(
    entry: str, data: DataSettings, workdir: Path, seed: int, whole: bool
) -> tuple[list[str], str | None]:
    """One `train_path` entry's training stores and its held-out store (None: nothing held out); `whole`: keep
    nothing out."""
    if is_store(entry):
        return [entry], None
    folder = Path(entry)
    if not is_store(folder / "train"):
        folder = prepare_entry(entry, data, workdir, seed, 0.0 if whole else data.valid_fraction)
    train, valid = [str(folder / "train")], folder / "valid"
    if not (is_store(valid) and _num_sequences(valid)):
        return train, None
    return (train + [str(valid)], None) if whole else (train, str(valid))


def _split_weight(weight: float, stores: list[str]) -> list[float]:
    """An entry's mixture weight shared among its stores by their token counts (what their chunks roughly are)."""
    tokens = [UnitStore(store).num_tokens for store in stores]
    return [weight * count / max(sum(tokens), 1) for count in tokens]


def _valid_store(entry: str, data: DataSettings, workdir: Path, seed: int) -> str:
    """A validation store: the store itself, a prepared folder's valid/ split, or raw files prepared whole."""
    folder = Path(entry)
    if is_store(folder):
        return str(folder)
    if is_store(folder / "valid"):
        return str(folder / "valid")
    return str(prepare_entry(entry, data, workdir, seed, 0.0) / "train")


def describe_sources(spec: str, data: DataSettings) -> str:
    """One line that changes when the data named by `spec` (a `train_path` / `valid_path` value) changes: per
    entry, the digest of a store's manifests, the fingerprints of raw files, or the synthetic corpus's size."""
    parts = []
    for entry in (piece.strip() for piece in str(spec).split(",") if piece.strip()):
        parts.append(f"{entry}: {_entry_fingerprint(entry, data)}")
    return "; ".join(parts)


def _entry_fingerprint(entry: str, data: DataSettings) -> str:
    if entry == SYNTHETIC:
        return f"{data.synthetic_files} generated files"
    folder = Path(entry)
    splits = {".": folder} if is_store(folder) else {name: folder / name for name in ("train", "valid")}
    manifests = {name: store / MANIFEST for name, store in splits.items() if is_store(store)}
    if manifests:
        found = {name: fingerprints.file_fingerprint(path) for name, path in manifests.items()}
        return f"unit store, digest {fingerprints.digest(found)}"
    try:
        files = expand_paths(entry)
    except DataError:
        return "missing"
    return fingerprints.summary(fingerprints.files_fingerprints(files)) if files else "no unit files"


def run_prepare(config, workdir: Path) -> dict:
    """`mode: prepare`: write the unit stores of `data.train_path` / `data.valid_path` and report them."""
    job = PrepareJob.from_dict({key: config[key] for key in ("mode", "seed", "data") if key in config}, "config")
    resolved = resolve(job.data, Path(workdir), job.seed)
    report = {
        "train": {path: UnitStore(path).manifest["num_tokens"] for path in resolved.train},
        "valid": {path: UnitStore(path).manifest["num_tokens"] for path in resolved.valid},
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
