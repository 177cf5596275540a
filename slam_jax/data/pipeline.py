"""Grain pipelines over unit stores: chunk -> global shuffle -> per-process shard -> pack or pad -> batch.

Sequences are cut into consecutive `context_length` chunks as the reference does (BOS only in a file's
first chunk, EOS only in its last). The shuffle is over chunks, seeded, and different every epoch.
With packing, chunks share rows: `segment_ids` (1, 2, ...; 0 = padding) keep them apart and `positions`
restart per chunk. Every iterator is checkpointable (`get_state` / `set_state`, or Orbax through
`grain.checkpoint`), so a resumed run sees exactly the batches it would have seen.
"""

from dataclasses import dataclass

import grain
import numpy as np

from slam_jax.data.unit_store import UnitStore


class ChunkSource:
    """Random access to the `context_length` chunks of every sequence of a unit store."""

    def __init__(self, store: UnitStore, context_length: int):
        self.store = store
        self.context_length = context_length
        lengths = store.lengths().astype(np.int64)
        per_sequence = -(-lengths // context_length)
        self._sequence = np.repeat(np.arange(len(lengths)), per_sequence)
        first_chunk = np.concatenate([[0], np.cumsum(per_sequence)[:-1]])
        self._start = (np.arange(len(self._sequence)) - np.repeat(first_chunk, per_sequence)) * context_length
        self._end = np.minimum(self._start + context_length, np.repeat(lengths, per_sequence))

    def __len__(self) -> int:
        return len(self._sequence)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.store.slice(int(self._sequence[index]), int(self._start[index]), int(self._end[index]))

    def __repr__(self) -> str:
        return f"ChunkSource({self.store.directory}, context_length={self.context_length})"


@dataclass(frozen=True)
class PadToRow:
    """One chunk per row, right-padded: segment 1 for tokens, 0 for padding; positions from 0."""

    context_length: int

    def __call__(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        row = np.zeros(self.context_length, np.int32)
        row[: len(chunk)] = chunk
        segment_ids = (np.arange(self.context_length) < len(chunk)).astype(np.int32)
        return {
            "input_ids": row,
            "segment_ids": segment_ids,
            "positions": np.arange(self.context_length, dtype=np.int32),
        }


def _as_features(chunk: np.ndarray) -> dict[str, np.ndarray]:
    return {"input_ids": chunk}


def _rename_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "input_ids": row["input_ids"].astype(np.int32),
        "segment_ids": row["input_ids_segment_ids"].astype(np.int32),
        "positions": row["input_ids_positions"].astype(np.int32),
    }


def _rows(dataset: grain.IterDataset, context_length: int, packing: bool, bins: int) -> grain.IterDataset:
    if not packing:
        return dataset.map(PadToRow(context_length))
    packed = grain.experimental.FirstFitPackIterDataset(
        dataset.map(_as_features),
        length_struct={"input_ids": context_length},
        num_packing_bins=bins,
        shuffle_bins=False,
    )
    return packed.map(_rename_packed)


def _read_options() -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=4, prefetch_buffer_size=256)


def train_dataset(
    store_dirs: list[str],
    weights: list[float] | None,
    context_length: int,
    rows_per_batch: int,
    seed: int,
    packing: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Endless batches `{input_ids, segment_ids, positions}` [rows_per_batch, context_length] for this process.

    With `weights`, each store is shuffled on its own and the stores are mixed in those proportions;
    without, all chunks are shuffled together (each store contributes by its size, as in the paper).
    """
    sources = [grain.MapDataset.source(ChunkSource(UnitStore(path), context_length)) for path in store_dirs]
    if weights:
        if len(weights) != len(sources):
            raise ValueError(f"data.weights has {len(weights)} entries for {len(sources)} data.train_path entries")
        streams = [
            source.shuffle(seed=seed + index).repeat()[process_index::process_count].to_iter_dataset(_read_options())
            for index, source in enumerate(sources)
        ]
        chunks = grain.IterDataset.mix(streams, weights)
    else:
        combined = grain.MapDataset.concatenate(sources) if len(sources) > 1 else sources[0]
        chunks = combined.shuffle(seed=seed).repeat()[process_index::process_count].to_iter_dataset(_read_options())
    return _rows(chunks, context_length, packing, bins=rows_per_batch).batch(rows_per_batch, drop_remainder=True)


def eval_dataset(
    store_dirs: list[str],
    context_length: int,
    rows_per_batch: int,
    packing: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """One ordered pass over every chunk of the validation stores; the last batch is padded with empty rows."""
    sources = [grain.MapDataset.source(ChunkSource(UnitStore(path), context_length)) for path in store_dirs]
    combined = grain.MapDataset.concatenate(sources) if len(sources) > 1 else sources[0]
    chunks = combined[process_index::process_count].to_iter_dataset(_read_options())
    return _rows(chunks, context_length, packing, bins=rows_per_batch).batch(
        rows_per_batch, batch_fn=PadBatch(rows_per_batch)
    )


@dataclass(frozen=True)
class PadBatch:
    """Stack rows into a batch of exactly `rows` rows, adding all-padding rows (segment 0) if short."""

    rows: int

    def __call__(self, rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
        missing = self.rows - len(rows)
        return {key: np.pad(value, ((0, missing), (0, 0))) for key, value in batch.items()}
