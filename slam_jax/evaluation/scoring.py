"""Log-likelihoods of many unit sequences, batched and sharded; pair accuracy with ties and its breakdown.

Log-likelihood = minus the mean NLL over the targets of `[1, units + 2..., 1]` (docs/recipe.md §6, the same
value as `SpeechLM.log_likelihood`). Sequences are sorted by length (longest first, so memory runs out at
once if it will) and packed into batches of `batch_size` rows (`pack`): a batch's width is the length bucket
(a few per octave, so few shapes compile) of its longest sequence, and each shorter sequence goes into the row
with the least room that holds it (best fit), as its own segment (own positions, attending only itself). Rows
are split over the batch axes of a mesh of this host's devices; the parameters are replicated; a batch with fewer
rows runs with fewer (bucketed). No score depends on batching, packing or padding: a sequence's targets are read
from its own span of its row, and segments never attend each other.

Several hosts (`jax.distributed`, `split_over_processes`): every process packs all the sequences the same way and
scores every `process_count`-th batch on its own devices; the scores are then gathered on every process. Each
sequence is scored in the same batch, of the same shape, as on one process, so the scores are exactly those of one
process with the same number of local devices.
"""

import bisect
import functools
from collections import defaultdict
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import parallel, tokens
from slam_jax.models.speech_lm import SpeechLM, next_token_log_probs
from slam_jax.progress import track
from slam_jax.speech.encoder import bucket_length

LENGTH_QUANTUM = 16
BUCKETS_PER_OCTAVE = 4


class Scorer:
    """Jit-compiled, sharded log-likelihoods of lists of id sequences of any lengths."""

    def __init__(
        self, model: SpeechLM, batch_size: int = 32, mesh=None, progress: bool = False, split_over_processes=False
    ):
        """`split_over_processes`: deal the batches out to the processes of a multi-host job (every process calls
        the scorer with the same sequences) rather than score all of them on each."""
        self.config = model.config
        self.split_over_processes = split_over_processes
        self.mesh = mesh or parallel.local_mesh()
        self.devices = parallel.data_parallel_size(self.mesh)
        self.rows = -(-batch_size // self.devices) * self.devices
        self.progress = progress
        self.graphdef, state = nnx.split(model.model)
        self.state = jax.device_put(state, parallel.replicated(self.mesh))
        self.batch_sharding = parallel.batch_sharding(self.mesh)
        self._log_probs = parallel.traced_under(self.mesh, _target_log_probs)  # a fused attention kernel per shard

    def __call__(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Float32 log-likelihood of each sequence, in input order."""
        lengths = [len(sequence) for sequence in sequences]
        scores = np.zeros(len(sequences), np.float32)
        batches = pack(lengths, self.rows)
        if self.split_over_processes:
            batches = batches[jax.process_index() :: jax.process_count()]
        scored = []
        for width, rows in track(batches, "scoring", unit="batch", enabled=self.progress):
            # a batch with fewer rows (the last, or one of a few short sequences) runs with fewer, bucketed
            shape = (min(self.rows, bucket_length(len(rows), self.devices, BUCKETS_PER_OCTAVE)), width)
            input_ids = np.full(shape, tokens.PAD_ID, np.int32)
            segment_ids = np.zeros(shape, np.int32)
            positions = np.zeros(shape, np.int32)
            placements = list(_placements(rows, lengths))
            for row, (index, offset) in placements:
                span = slice(offset, offset + lengths[index])
                input_ids[row, span] = sequences[index]
                segment_ids[row, span] = offset + 1  # distinct within the row
                positions[row, span] = np.arange(lengths[index])
            arrays = (
                jax.device_put(jnp.asarray(array), self.batch_sharding) for array in (input_ids, segment_ids, positions)
            )
            target_log_probs = np.asarray(self._log_probs(self.graphdef, self.state, *arrays), np.float64)
            for row, (index, offset) in placements:
                targets = target_log_probs[row, offset : offset + lengths[index] - 1]  # token t scores t + 1
                scores[index] = targets.sum() / max(len(targets), 1)
                scored.append(index)
        if self.split_over_processes:  # float32 -> float -> JSON and back: exact
            for indices, values in parallel.gather_json([scored, scores[scored].tolist()]):
                scores[indices] = values
        return scores


def pack(lengths: Sequence[int], rows: int) -> list[tuple[int, list[list[int]]]]:
    """Batches of up to `rows` rows as (width, [sequence indices per row]): best fit in decreasing order. Longest
    sequence first, each goes into the row (of any batch so far) with the least room that holds it; one that
    fits nowhere opens a row in the newest batch, or a new batch whose width is the sequence's length bucket."""
    batches: list[tuple[int, list[list[int]]]] = []
    rooms: list[tuple[int, int, int]] = []  # sorted (room left, batch, row)
    for index in np.argsort(-np.asarray(lengths, np.int64), kind="stable").tolist():
        length = int(lengths[index])
        at = bisect.bisect_left(rooms, (length, -1, -1))
        if at < len(rooms):
            room, batch, row = rooms.pop(at)
        else:
            if not batches or len(batches[-1][1]) == rows:
                batches.append((bucket_length(max(length, 1), LENGTH_QUANTUM, BUCKETS_PER_OCTAVE), []))
            batch, room = len(batches) - 1, batches[-1][0]
            batches[batch][1].append([])
            row = len(batches[batch][1]) - 1
        batches[batch][1][row].append(index)
        bisect.insort(rooms, (room - length, batch, row))
    return batches


def _placements(rows: list[list[int]], lengths: Sequence[int]):
    """(row, (sequence index, offset in the row)) of every sequence of a packed batch."""
    for row, indices in enumerate(rows):
        offsets = np.cumsum([0] + [lengths[index] for index in indices[:-1]])
        for index, offset in zip(indices, offsets.tolist(), strict=True):
            yield row, (index, offset)


@functools.partial(jax.jit, static_argnums=0)
def _target_log_probs(graphdef, state, input_ids: jax.Array, segment_ids: jax.Array, positions: jax.Array):
    """[rows, width - 1] float32 log-probability of each next token (at every slot; the caller reads only the
    slots inside a sequence). Rows stay split as `input_ids` is (compiled once per model, shape and mesh)."""
    return next_token_log_probs(nnx.merge(graphdef, state)(input_ids, segment_ids, positions), input_ids)


def outcomes(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Per pair: 1 if the positive is more likely, 0 if less, 0.5 on a tie."""
    return np.where(positive > negative, 1.0, np.where(positive < negative, 0.0, 0.5))


def breakdown(subsets: Sequence[str], scores: np.ndarray) -> dict[str, dict]:
    """{subset: {"accuracy", "num_pairs"}} over the named subsets (pairs without one are left out)."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for subset, score in zip(subsets, scores, strict=True):
        if subset:
            grouped[subset].append(float(score))
    return {
        name: {"accuracy": float(np.mean(values)), "num_pairs": len(values)} for name, values in sorted(grouped.items())
    }
