"""Waveforms -> frame units, a batch at a time on a mesh of local devices: HuBERT or MFCC features, then k-means.

Batch layouts (16 kHz float32 waveforms, rows right-padded with zeros):
- masked (default): each waveform gets `item_padding` zeros on both sides (40 samples for HuBERT, as the
  reference pads), the model is told every row's length, and a row's units never depend on the other rows.
  The padded length is rounded up to a length bucket (a few per octave) so few shapes are compiled.
- `reference_padding`: the reference's way exactly: rows padded to the longest waveform of the batch, then
  40 zeros on each side of every row, no mask, and row i keeps `ceil(n_i / longest * frames)` frames
  (float32 arithmetic, as torch computes it).
Rows are sharded over the mesh's `data` axis; with `micro_batch`, a masked batch goes through in steps of
`micro_batch` similar-length rows per device, each padded to its own bucket (`UnitEncoder.steps`);
parameters and centroids are replicated.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from slam_jax import parallel
from slam_jax.models import hubert, kmeans
from slam_jax.speech import features as spectral

HUBERT_ITEM_PADDING = 40  # samples of zeros the reference adds on each side of the waveform

FeaturesFn = Callable[[object, jax.Array, jax.Array], jax.Array]


def micro_batched(fn: Callable, mesh: Mesh, micro_batch: int) -> Callable:
    """`fn(params, waveforms, lengths)` run on each device's rows `micro_batch` rows at a time (0 = all at once).

    Smaller steps keep the activation buffers small: less memory and, on CPUs, fewer page faults and better
    cache use; rows never interact, so the result is the same.
    """
    spec = PartitionSpec(parallel.BATCH_AXES)

    def per_device(params, waveforms, lengths):
        rows = waveforms.shape[0]
        if not micro_batch or rows <= micro_batch or rows % micro_batch:
            return fn(params, waveforms, lengths)
        steps = (waveforms.reshape(-1, micro_batch, waveforms.shape[1]), lengths.reshape(-1, micro_batch))
        outputs = jax.lax.map(lambda step: fn(params, *step), steps)
        return outputs.reshape(rows, *outputs.shape[2:])

    return jax.shard_map(per_device, mesh=mesh, in_specs=(PartitionSpec(), spec, spec), out_specs=spec)


def bucket_length(length: int, quantum: int, per_octave: int) -> int:
    """`length` rounded up to a multiple of `quantum`, then to one of `per_octave` steps per octave (0 = off)."""
    units = max(1, -(-length // quantum))
    if per_octave > 0:
        step = max(1, 2 ** int(math.log2(units)) // per_octave)
        units = -(-units // step) * step
    return units * quantum


class UnitEncoder:
    """Frame features and nearest-centroid units of batches of waveforms."""

    def __init__(
        self,
        features_fn: FeaturesFn,
        params,
        centroids: np.ndarray | None,
        num_frames: Callable[[np.ndarray], np.ndarray],
        frame_samples: int,
        item_padding: int = 0,
        reference_padding: bool = False,
        batch_size: int = 8,
        devices: Sequence[jax.Device] | None = None,
        buckets_per_octave: int = 4,
        micro_batch: int = 0,
    ):
        devices = list(devices or jax.local_devices())
        self.mesh = parallel.make_mesh(devices=devices)
        self.num_devices = len(devices)
        self.rows = -(-batch_size // len(devices)) * len(devices)
        self.frame_samples, self.item_padding = frame_samples, item_padding
        self.reference_padding, self.buckets_per_octave = reference_padding, buckets_per_octave
        self.num_frames = num_frames
        self.step_rows = micro_batch * len(devices)
        replicated = parallel.replicated(self.mesh)
        rows = self.row_sharding = parallel.batch_sharding(self.mesh, trailing_axes=0)
        self.params = jax.device_put(params, replicated)
        self.centroids = None if centroids is None else jax.device_put(jnp.asarray(centroids, jnp.float32), replicated)
        features = micro_batched(features_fn, self.mesh, micro_batch)
        self._features = jax.jit(features, in_shardings=(replicated, rows, rows), out_shardings=rows)
        units = micro_batched(lambda p, w, n: kmeans.assign(features_fn(p[0], w, n), p[1]), self.mesh, micro_batch)
        self._units = jax.jit(units, in_shardings=(replicated, rows, rows), out_shardings=rows)

    @property
    def num_units(self) -> int:
        return 0 if self.centroids is None else int(self.centroids.shape[0])

    def set_centroids(self, centroids: np.ndarray) -> None:
        """Use `centroids` [num_units, dim] from now on (e.g. once fitted on this encoder's features)."""
        replicated = parallel.replicated(self.mesh)
        self.centroids = jax.device_put(jnp.asarray(centroids, jnp.float32), replicated)

    def encode(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Units [frames_i] int32 of each waveform (at most `rows` of them)."""
        if self.centroids is None:
            raise ValueError("no k-means centroids: set tokenize.kmeans_path (or tokenize.fit_units to fit them)")
        return self._run(self._units, (self.params, self.centroids), waveforms)

    def features(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Features [frames_i, dim] float32 of each waveform (what k-means is fitted on)."""
        return self._run(self._features, self.params, waveforms)

    def steps(self, waveforms: Sequence[np.ndarray]) -> list[list[int]]:
        """The waveforms' indices in the groups that go through the model together.

        Masked rows never interact, so when each device steps `micro_batch` rows at a time the batch is split
        into steps of similar-length rows (longest first), each padded only to its own length bucket: the
        short rows of a batch no longer pay for its longest one. With `reference_padding` (units depend on
        the whole batch) or no micro-batching, the batch is one step.
        """
        count = len(waveforms)
        if self.reference_padding or not self.step_rows or count <= self.step_rows:
            return [list(range(count))]
        order = sorted(range(count), key=lambda index: -len(waveforms[index]))
        return [order[start : start + self.step_rows] for start in range(0, count, self.step_rows)]

    def _run(self, fn, params, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`fn` on every step of `waveforms`, each row trimmed to its own frames, in the input order."""
        if not 0 < len(waveforms) <= self.rows:
            raise ValueError(f"a batch holds 1 to {self.rows} waveforms, got {len(waveforms)}")
        results: list[np.ndarray | None] = [None] * len(waveforms)
        for indices in self.steps(waveforms):
            batch, lengths, frames = self.layout([waveforms[index] for index in indices])
            # placed on this process's devices first: under jax.distributed, jit takes no numpy input sharded over
            # a mesh (even a local one)
            batch, lengths = jax.device_put((batch, lengths), self.row_sharding)
            values = np.asarray(fn(params, batch, lengths))
            for row, index in enumerate(indices):
                results[index] = values[row, : frames[row]]
        return results

    def rows_for(self, count: int) -> int:
        """Rows of a batch of `count` waveforms: a power-of-two number per device, so that a short last batch
        costs little and few shapes are compiled."""
        per_device = -(-count // self.num_devices)
        return min(self.rows, self.num_devices * 2 ** math.ceil(math.log2(per_device)))

    def layout(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The padded batch [rows_for(n), samples], per-row lengths for the model, and frames to keep per waveform."""
        if not 0 < len(waveforms) <= self.rows:
            raise ValueError(f"a batch holds 1 to {self.rows} waveforms, got {len(waveforms)}")
        rows = self.rows_for(len(waveforms))
        sizes = np.array([len(wave) for wave in waveforms], np.int64)
        pad = self.item_padding
        if self.reference_padding:
            longest = int(sizes.max())
            width = longest + 2 * pad
            lengths = np.full(rows, width, np.int32)
            total = np.float32(self.num_frames(width))
            frames = np.ceil(sizes.astype(np.float32) / np.float32(longest) * total).astype(np.int64)
        else:
            width = bucket_length(int(sizes.max()) + 2 * pad, self.frame_samples, self.buckets_per_octave)
            lengths = np.zeros(rows, np.int32)
            lengths[: len(sizes)] = sizes + 2 * pad
            frames = np.asarray(self.num_frames(sizes + 2 * pad))
        batch = np.zeros((rows, width), np.float32)
        for row, wave in enumerate(waveforms):
            batch[row, pad : pad + len(wave)] = wave
        return batch, lengths, frames


def hubert_encoder(
    model: hubert.Hubert, layer: int, centroids: np.ndarray | None, reference_padding: bool = False, **kwargs
) -> UnitEncoder:
    """Units from `hidden_states[layer]` of a HuBERT encoder (only layers up to `layer` run)."""
    if not 0 <= layer <= model.config.num_layers:
        raise ValueError(f"tokenize.layer={layer} not in [0, {model.config.num_layers}] for this encoder")
    _check_dim(centroids, model.config.hidden_size, f"layer {layer} of the encoder")
    graphdef, state = nnx.split(model)

    def features_fn(params, waveforms, lengths):
        return nnx.merge(graphdef, params)(waveforms, lengths, layer=layer)[0]

    return UnitEncoder(
        features_fn,
        state,
        centroids,
        num_frames=model.config.num_frames,
        frame_samples=model.config.frame_samples,
        item_padding=HUBERT_ITEM_PADDING,
        reference_padding=reference_padding,
        **kwargs,
    )


def spectral_encoder(config: spectral.SpectralConfig, centroids: np.ndarray | None, **kwargs) -> UnitEncoder:
    """Units from MFCC or log-mel frames (no weights: the offline tokeniser)."""
    _check_dim(centroids, config.dim, f"{config.kind} features")

    def features_fn(params, waveforms, lengths):
        del params, lengths  # frames read only their own row's samples and zeros
        return spectral.spectral_features(config, waveforms)

    return UnitEncoder(
        features_fn, {}, centroids, num_frames=config.num_frames, frame_samples=config.frame_samples, **kwargs
    )


def _check_dim(centroids: np.ndarray | None, dim: int, what: str) -> None:
    if centroids is not None and centroids.shape[1] != dim:
        raise ValueError(f"k-means centroids have dimension {centroids.shape[1]}, {what} has {dim}")
