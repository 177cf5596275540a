"""The global batch of every step, decided from global indices alone; each process builds only its rows of it.

    chunk -> global order (Grain: seeded shuffle, new every epoch; with weights, a mixture) -> packing plan of the
    step's rows (first fit over the rows, from the chunks' lengths alone) -> each process reads its rows' tokens

Sequences are cut into consecutive `context_length` chunks as the reference does (BOS only in a file's first chunk,
EOS only in its last). The plan of a step needs only chunk lengths (store metadata), so every process computes the
same plan cheaply, and the global batch at step t is the same rows in the same order whatever the number of
processes, devices or mesh shape: the host count changes only which rows each process reads. The data position
is one global integer (the next chunk of the global order), saved in a checkpoint's metadata and restored on any
layout; rows are built ahead of the step by a pool of reader threads. With packing, chunks share rows:
`segment_ids` (1, 2, ...; 0 = padding) keep them apart and `positions` restart per chunk.
"""

import collections
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grain
import numpy as np

from slam_jax.data.unit_store import UnitStore

READ_THREADS = 4  # reader threads building rows ahead of the step
PREFETCH_BATCHES = 4  # batches built ahead


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
        self.lengths = (self._end - self._start).astype(np.int64)  # every chunk's token count, without reading it

    def __len__(self) -> int:
        return len(self._sequence)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.store.slice(int(self._sequence[index]), int(self._start[index]), int(self._end[index]))

    def __repr__(self) -> str:
        return f"ChunkSource({self.store.directory}, context_length={self.context_length})"


class ChunkOrder:
    """Global position -> (store, chunk): the chunks of all stores shuffled together (each store contributes by its
    size, as in the paper), or with `weights` each store shuffled on its own and the stores mixed in those
    proportions; endless, reshuffled every epoch. `shuffle=False`: every chunk once, in order (validation)."""

    def __init__(self, sources: Sequence[ChunkSource], seed: int, weights: Sequence[float] | None = None, shuffle=True):
        self.offsets = np.cumsum([0] + [len(source) for source in sources])
        total = int(self.offsets[-1])
        if weights:
            if len(weights) != len(sources):
                raise ValueError(f"data.weights has {len(weights)} entries for {len(sources)} data.train_path entries")
            streams = [
                grain.MapDataset.range(len(source)).shuffle(seed=seed + index).repeat().map(_Offset(int(offset)))
                for index, (source, offset) in enumerate(zip(sources, self.offsets, strict=False))
            ]
            self.ids = grain.MapDataset.mix(streams, list(weights))
        elif shuffle:
            self.ids = grain.MapDataset.range(total).shuffle(seed=seed).repeat()
        else:
            self.ids = grain.MapDataset.range(total)
        self.size = None if (weights or shuffle) else total

    def __getitem__(self, position: int) -> int | None:
        """The global chunk id at `position` (None past the end of an ordered pass)."""
        if self.size is not None and position >= self.size:
            return None
        return int(self.ids[position])

    def locate(self, chunk_id: int) -> tuple[int, int]:
        """(store, chunk within it) of a global chunk id."""
        store = int(np.searchsorted(self.offsets, chunk_id, side="right")) - 1
        return store, chunk_id - int(self.offsets[store])


@dataclass(frozen=True)
class _Offset:
    offset: int

    def __call__(self, index: int) -> int:
        return index + self.offset


def pack_rows(
    order: ChunkOrder, lengths: np.ndarray, position: int, rows: int, context_length: int, packing: bool
) -> tuple[list[list[int]], int]:
    """The chunk ids of each of `rows` rows starting at `position` of `order`, and the position after them.

    Packing: first fit over the rows in the global order, until a chunk fits in no row (it opens the next batch).
    Without packing: one chunk per row. An ordered pass that runs out leaves the last rows empty."""
    plan: list[list[int]] = [[] for _ in range(rows)]
    free = np.full(rows, context_length, np.int64)
    while True:
        chunk = order[position]
        if chunk is None:
            break
        size = int(lengths[chunk])
        fits = np.flatnonzero(free >= size) if packing else np.flatnonzero(free == context_length)
        if not fits.size:
            break
        plan[fits[0]].append(chunk)
        free[fits[0]] -= context_length if not packing else size
        position += 1
    return plan, position


@dataclass(frozen=True)
class RowBuilder:
    """Tokens of planned rows: `{input_ids, segment_ids, positions}` [rows, context_length]."""

    sources: tuple[ChunkSource, ...]
    order: ChunkOrder
    context_length: int
    packing: bool

    def __call__(self, plan: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        shape = (len(plan), self.context_length)
        input_ids, segment_ids = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        positions = (
            np.zeros(shape, np.int32)
            if self.packing
            else np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy()
        )
        for row, chunks in enumerate(plan):
            start = 0
            for segment, chunk in enumerate(chunks, start=1):
                store, index = self.order.locate(chunk)
                tokens = self.sources[store][index]
                end = start + len(tokens)
                input_ids[row, start:end] = tokens
                segment_ids[row, start:end] = segment
                if self.packing:
                    positions[row, start:end] = np.arange(len(tokens))
                start = end
        return {"input_ids": input_ids, "segment_ids": segment_ids, "positions": positions}


class GlobalBatches:
    """Endless batches of this process's `rows` (indices into each global batch) from a global plan.

    `plan(position) -> (global rows, next position)` decides the whole batch; `build(rows) -> arrays` reads only
    this process's rows. The plan runs in order on one thread and reader threads build batches ahead; `position`
    is the global data position after the last batch returned, the iterator's whole state (`get_state` /
    `set_state`, or `start` when created)."""

    def __init__(
        self,
        plan: Callable,
        build: Callable,
        rows: Sequence[int] | None = None,
        start: int = 0,
        threads: int = READ_THREADS,
    ):
        self._plan, self._build = plan, build
        self.rows = None if rows is None else list(rows)
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, threads), thread_name_prefix="slam_jax-data")
        self._reset(start)

    def _reset(self, position: int) -> None:
        self.position = self._next_plan = position
        self._ahead: collections.deque = collections.deque()

    def _submit(self) -> None:
        rows, after = self._plan(self._next_plan)
        mine = rows if self.rows is None else [rows[index] for index in self.rows]
        self._ahead.append((self._pool.submit(self._build, mine), after))
        self._next_plan = after

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while len(self._ahead) < PREFETCH_BATCHES:
            self._submit()
        future, self.position = self._ahead.popleft()
        return future.result()

    def get_state(self) -> dict:
        return {"position": int(self.position)}

    def set_state(self, state: dict) -> None:
        for future, _ in self._ahead:
            future.cancel()
        self._reset(int(state["position"]))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def chunk_sources(store_dirs: Sequence[str], context_length: int) -> tuple[ChunkSource, ...]:
    return tuple(ChunkSource(UnitStore(path), context_length) for path in store_dirs)


def step_rows(rows_per_micro_batch: int, accumulation: int, local_rows: Sequence[int] | None) -> list[int] | None:
    """Indices into a step's flattened [accumulation x rows] plan of this process's rows (None: all)."""
    if local_rows is None:
        return None
    return [micro * rows_per_micro_batch + row for micro in range(accumulation) for row in local_rows]


def train_dataset(
    store_dirs: list[str],
    weights: list[float] | None,
    context_length: int,
    rows_per_batch: int,
    seed: int,
    packing: bool = True,
    rows: Sequence[int] | None = None,
    start: int = 0,
    threads: int = READ_THREADS,
) -> GlobalBatches:
    """Endless global batches of `rows_per_batch` rows `{input_ids, segment_ids, positions}` [rows, context_length];
    this process gets the rows numbered `rows` (default all), from global data position `start`, built by
    `threads` reader threads."""
    sources = chunk_sources(store_dirs, context_length)
    planner = _Planner.over(sources, ChunkOrder(sources, seed, weights), rows_per_batch, context_length, packing)
    build = RowBuilder(sources, planner.order, context_length, packing)
    return GlobalBatches(planner, build, rows, start, threads)


@dataclass(frozen=True)
class _Planner:
    order: ChunkOrder
    lengths: np.ndarray
    rows: int
    context_length: int
    packing: bool

    @classmethod
    def over(cls, sources, order: ChunkOrder, rows: int, context_length: int, packing: bool) -> "_Planner":
        """The planner of `rows`-row batches over `sources` in `order` (chunk lengths from the stores' metadata)."""
        lengths = np.concatenate([source.lengths for source in sources])
        return cls(order, lengths, rows, context_length, packing)

    def __call__(self, position: int) -> tuple[list[list[int]], int]:
        return pack_rows(self.order, self.lengths, position, self.rows, self.context_length, self.packing)


def position_after(store_dirs, weights, context_length, rows_per_batch, seed, packing, steps: int) -> int:
    """The data position after `steps` batches from the start (plans only, no tokens read): where a checkpoint
    that predates saved data positions resumes."""
    sources = chunk_sources(store_dirs, context_length)
    planner = _Planner.over(sources, ChunkOrder(sources, seed, weights), rows_per_batch, context_length, packing)
    position = 0
    for _ in range(steps):
        position = planner(position)[1]
    return position


def eval_dataset(
    store_dirs: list[str],
    context_length: int,
    rows_per_batch: int,
    packing: bool = True,
    rows: Sequence[int] | None = None,
):
    """One ordered pass over every chunk of the validation stores in global batches of `rows_per_batch` rows (the
    last padded with empty rows); the same number of batches on every process, each yielding its `rows`."""
    sources = chunk_sources(store_dirs, context_length)
    planner = _Planner.over(
        sources, ChunkOrder(sources, seed=0, shuffle=False), rows_per_batch, context_length, packing
    )
    build = RowBuilder(sources, planner.order, context_length, packing)
    position = 0
    while planner.order[position] is not None:
        plan, position = planner(position)
        yield build(plan if rows is None else [plan[index] for index in rows])
