"""Log-likelihoods of many unit sequences, batched and sharded; pair accuracy with ties and its breakdown.

Log-likelihood = minus the mean NLL over the targets of `[1, units + 2..., 1]` (RECIPE.md section 6, the same
function as `SpeechLM.log_likelihood`). Sequences are sorted by length (longest first, so memory runs out at
once if it will) and cut into batches of `batch_size` rows; each batch is right-padded with PAD to a length
bucket (a few per octave), so few shapes compile and padding stays under ~25%. Rows are split over the
batch axes of a mesh of this host's devices; the parameters are replicated (evaluation is a one-host job:
under `jax.distributed` every host scores everything). No score depends on batching or padding: pads are
masked and never attended.
"""

import functools
from collections import defaultdict
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from slam_jax import tokens
from slam_jax.models.speech_lm import SpeechLM, mean_log_likelihood
from slam_jax.speech.encoder import bucket_length
from slam_jax.training import sharding

LENGTH_QUANTUM = 16
BUCKETS_PER_OCTAVE = 4


def to_sequence(units: Sequence[int]) -> np.ndarray:
    """`[BOS, u0 + 2, ..., EOS]` of a unit sequence."""
    return np.concatenate([[tokens.BOS_ID], np.asarray(units, np.int64) + tokens.UNIT_OFFSET, [tokens.EOS_ID]])


class Scorer:
    """Jit-compiled, sharded log-likelihoods of lists of id sequences of any lengths."""

    def __init__(self, model: SpeechLM, batch_size: int = 32, mesh=None, progress: bool = False):
        self.config = model.config
        self.mesh = mesh or sharding.make_mesh(devices=jax.local_devices())
        devices = int(np.prod([self.mesh.shape[axis] for axis in sharding.BATCH_AXES]))
        self.rows = -(-batch_size // devices) * devices
        self.progress = progress
        self.graphdef, state = nnx.split(model.model)
        self.state = jax.device_put(state, sharding.replicated(self.mesh))
        self.batch_sharding = sharding.batch_sharding(self.mesh)

    def __call__(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Float32 log-likelihood of each sequence, in input order."""
        lengths = np.array([len(sequence) for sequence in sequences])
        order = np.argsort(-lengths, kind="stable")
        scores = np.zeros(len(sequences), np.float32)
        starts = range(0, len(order), self.rows)
        for start in tqdm(starts, desc="scoring", unit="batch", disable=not self.progress):
            chosen = order[start : start + self.rows]
            width = bucket_length(int(lengths[chosen].max()), LENGTH_QUANTUM, BUCKETS_PER_OCTAVE)
            batch = np.full((self.rows, width), tokens.PAD_ID, np.int32)
            for row, index in enumerate(chosen):
                batch[row, : lengths[index]] = sequences[index]
            result = _log_likelihoods(
                self.graphdef, self.state, jax.device_put(jnp.asarray(batch), self.batch_sharding)
            )
            scores[chosen] = np.asarray(result)[: len(chosen)]
        return scores


@functools.partial(jax.jit, static_argnums=0)
def _log_likelihoods(graphdef, state, input_ids: jax.Array) -> jax.Array:
    """Per-row scores; rows stay split as `input_ids` is (compiled once per model structure, shape and mesh)."""
    return mean_log_likelihood(nnx.merge(graphdef, state)(input_ids), input_ids)


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
