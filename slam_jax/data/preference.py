"""Preference pairs for DPO: read the reference's jsonl, filter, store, and serve them through Grain.

A row has `prompt`, `chosen` and `rejected`, each `{"units": [...]}`, a `<UnN>` string or a list of
units, and optionally `prompt_text` / `chosen_text` for the Auto-BLEU-2 filter (docs/recipe.md §5).
Sequences are built as the reference does: prompt = `[1] + ids` (left-truncated, BOS kept), each
completion = `ids + [1]` (right-truncated). The prepared store is a folder of `.npy` arrays plus a
manifest; reference log-probs computed once are stored beside it.
"""

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import grain
import numpy as np

from slam_jax import paths, tokens
from slam_jax.data.auto_bleu import auto_bleu_text
from slam_jax.data.ingest import parse_units
from slam_jax.data.pipeline import GlobalBatches
from slam_jax.errors import DataError
from slam_jax.files import atomic_dir, expand_paths, load_array, read_records
from slam_jax.paths import Path

FIELDS = ("prompt", "chosen", "rejected")
MANIFEST = "preference_manifest.json"
# Keys of the rows `slam_jax.speech.preference_audio` rewrites: the row's file:line in the user's jsonl (what errors
# name), and, in place of a field's units, why its audio file gave none.
ORIGIN = "_origin"
AUDIO_ERROR = "audio_error"


def field_units(value, where: str, num_units: int) -> np.ndarray:
    """Units of one field: {"units": ...}, a `<UnN>` string or a plain list."""
    if isinstance(value, dict) and AUDIO_ERROR in value:
        raise DataError(f"{where}: {value[AUDIO_ERROR]}")
    if isinstance(value, dict):
        return parse_units(value, where, num_units)
    if isinstance(value, (str, list)):
        return parse_units({"units": value}, where, num_units)
    raise DataError(f"{where}: expected units, a <UnN> string or {{'units': [...]}}, got {type(value).__name__}")


def filter_score(prompt_text: str, chosen_text: str) -> float:
    """The SpokenSwag filter's score: Auto-BLEU-2 of prompt + " " + chosen, case kept (docs/recipe.md §5)."""
    return auto_bleu_text(f"{prompt_text} {chosen_text}")


@dataclass(frozen=True)
class Limits:
    max_prompt_length: int  # tokens, BOS included
    max_completion_length: int  # tokens, EOS included
    truncate: bool = True  # False: over-long rows are bad rows
    bad_rows: str = "error"  # "error" stops with file:line; "skip" counts and drops them
    auto_bleu_threshold: float = 0.3  # keep rows whose prompt+chosen text scores below this (0 = off)


def build_pair(record: dict, where: str, num_units: int, limits: Limits) -> tuple[np.ndarray, ...] | str:
    """(prompt, chosen, rejected) token arrays of one row, or the reason to skip it."""
    missing = [field for field in FIELDS if field not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")
    prompt, chosen, rejected = (field_units(record[field], f"{where} [{field}]", num_units) for field in FIELDS)
    if not chosen.size or not rejected.size:
        raise DataError(f"{where}: empty completion")
    if limits.auto_bleu_threshold and "prompt_text" in record and "chosen_text" in record:
        if filter_score(record["prompt_text"], record["chosen_text"]) >= limits.auto_bleu_threshold:
            return "auto_bleu"
    prompt = np.concatenate([[tokens.BOS_ID], prompt + tokens.UNIT_OFFSET])
    chosen = np.concatenate([chosen + tokens.UNIT_OFFSET, [tokens.EOS_ID]])
    rejected = np.concatenate([rejected + tokens.UNIT_OFFSET, [tokens.EOS_ID]])
    too_long = len(prompt) > limits.max_prompt_length or max(len(chosen), len(rejected)) > limits.max_completion_length
    if too_long and not limits.truncate:
        raise DataError(f"{where}: longer than max_prompt_length/max_completion_length and truncate is off")
    if too_long:
        keep = limits.max_prompt_length - 1
        prompt = np.concatenate([[tokens.BOS_ID], prompt[1:][len(prompt) - 1 - keep :]]) if keep else prompt[:1]
        chosen, rejected = chosen[: limits.max_completion_length], rejected[: limits.max_completion_length]
    return prompt, chosen, rejected


def _padded(rows: list[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    array = np.full((len(rows), width), tokens.PAD_ID, np.int32)
    for index, row in enumerate(rows):
        array[index, : len(row)] = row
    return array, np.array([len(row) for row in rows], np.int32)


def prepare(spec: str, out: str | Path, num_units: int, limits: Limits, overwrite: bool = False) -> dict:
    """Write the preference store of the jsonl files named by `spec` into `out`; returns the manifest."""
    files = [path for path in expand_paths(spec) if path.suffix == ".jsonl"]
    if not files:
        raise DataError(f"{spec}: no .jsonl preference files")
    start = time.perf_counter()
    columns = {field: [] for field in FIELDS}
    skipped: Counter = Counter()
    for path in files:
        for line, record in read_records(path):
            where = record.get(ORIGIN, line)
            try:
                pair = build_pair(record, where, num_units, limits)
            except DataError as error:
                if limits.bad_rows != "skip":
                    raise
                skipped[str(error).split(": ", 1)[1].split(" ")[0]] += 1
                continue
            if isinstance(pair, str):
                skipped[pair] += 1
                continue
            for field, sequence in zip(FIELDS, pair, strict=True):
                columns[field].append(sequence)
    if not columns["prompt"]:
        raise DataError(f"{spec}: no usable preference pairs (skipped: {dict(skipped)})")
    widths = {
        "prompt": limits.max_prompt_length,
        "chosen": limits.max_completion_length,
        "rejected": limits.max_completion_length,
    }
    with atomic_dir(out, overwrite=overwrite) as staging:
        for field in FIELDS:
            array, lengths = _padded(columns[field], widths[field])
            np.save(staging / f"{field}.npy", array)
            np.save(staging / f"{field}_lengths.npy", lengths)
        manifest = {
            "num_pairs": len(columns["prompt"]),
            "skipped": dict(skipped),
            "inputs": [str(p) for p in files],
            "limits": limits.__dict__,
            "num_units": num_units,
            "seconds": round(time.perf_counter() - start, 2),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _load_array(path: Path) -> np.ndarray:
    """A prepared array: memory-mapped on a local disk, read whole from a bucket (pairs are small)."""
    if paths.is_remote(path):
        return load_array(path)
    return np.load(path, mmap_mode="r")


class PairSource:
    """Random access to prepared pairs as model rows: chosen and rejected each = prompt + completion."""

    def __init__(self, directory: str | Path, reference_logps: np.ndarray | None = None):
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise FileNotFoundError(f"{directory}: not a prepared preference store (no {MANIFEST})")
        self.arrays = {
            name: _load_array(directory / f"{name}.npy") for field in FIELDS for name in (field, f"{field}_lengths")
        }
        self.reference_logps = reference_logps
        self.length = self.arrays["prompt"].shape[1] + self.arrays["chosen"].shape[1]

    def __len__(self) -> int:
        return len(self.arrays["prompt"])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        prompt = self.arrays["prompt"][index][: self.arrays["prompt_lengths"][index]]
        rows, masks = [], []
        for field in ("chosen", "rejected"):
            completion = self.arrays[field][index][: self.arrays[f"{field}_lengths"][index]]
            row = np.zeros(self.length, np.int32)
            row[: len(prompt)] = prompt
            row[len(prompt) : len(prompt) + len(completion)] = completion
            mask = np.zeros(self.length - 1, np.float32)  # over targets row[1:]
            mask[len(prompt) - 1 : len(prompt) - 1 + len(completion)] = 1.0
            rows.append(row)
            masks.append(mask)
        item = {
            "input_ids": np.stack(rows),
            "segment_ids": (np.stack(rows) != tokens.PAD_ID).astype(np.int32),
            "completion_mask": np.stack(masks),
        }
        if self.reference_logps is not None:
            item["reference_logps"] = np.asarray(self.reference_logps[index], np.float32)
        return item

    def __repr__(self) -> str:
        return f"PairSource({len(self)} pairs, length {self.length})"


def train_dataset(
    source: PairSource,
    pairs_per_batch: int,
    seed: int,
    rows: Sequence[int] | None = None,
    start: int = 0,
) -> GlobalBatches:
    """Endless, seeded, per-epoch reshuffled global batches of `pairs_per_batch` pairs, of which this process gets
    the pairs numbered `rows` (default all); the data position (`start`, `.position`) is the global count of pairs
    served, so the batches do not depend on the number of processes."""
    order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
    return GlobalBatches(_PairPlan(order, pairs_per_batch), _PairRows(source), rows, start)


@dataclass(frozen=True)
class _PairPlan:
    order: grain.MapDataset
    pairs: int

    def __call__(self, position: int) -> tuple[list[int], int]:
        return [int(self.order[position + index]) for index in range(self.pairs)], position + self.pairs


@dataclass(frozen=True)
class _PairRows:
    source: PairSource

    def __call__(self, pairs: Sequence[int]) -> dict[str, np.ndarray]:
        items = [self.source[index] for index in pairs]
        return {key: np.stack([item[key] for item in items]) for key in items[0]}


def ordered_dataset(source: PairSource, pairs_per_batch: int) -> grain.IterDataset:
    """Every pair once, in order, the last batch padded by repeating the first pair (marked invalid)."""
    return grain.MapDataset.source(source).to_iter_dataset().batch(pairs_per_batch)
