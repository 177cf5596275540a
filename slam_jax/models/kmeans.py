"""k-means in JAX: nearest-centroid assignment (the quantiser of the speech tokeniser) and fitting.

Assignment takes the centroid with the smallest squared Euclidean distance, as scikit-learn's
`KMeans.predict` does; ||x||^2 is the same for every centroid, so argmin(||c||^2 - 2 x.c) picks it with one
matmul. Fitting is k-means++ seeding (greedy, several candidates per step, as scikit-learn) followed by Lloyd
iterations, every step jitted; features are processed in chunks so memory stays bounded.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from slam_jax import files
from slam_jax.paths import Path

_CHUNK = 16_384
_PRECISION = jax.lax.Precision.HIGHEST


def assign(features: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid [...] int32 of `features` [..., dim] (float32 distances)."""
    features = features.astype(jnp.float32)
    centroids = centroids.astype(jnp.float32)
    scores = jnp.einsum("...d,kd->...k", features, centroids, precision=_PRECISION)
    distances = jnp.sum(jnp.square(centroids), axis=-1) - 2.0 * scores
    return jnp.argmin(distances, axis=-1).astype(jnp.int32)


@jax.jit
def _assign_with_distances(features: jax.Array, centroids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest centroid and the squared distance to it, per row of `features` [n, dim]."""
    scores = jnp.dot(features, centroids.T, precision=_PRECISION)
    distances = jnp.sum(jnp.square(centroids), axis=-1) - 2.0 * scores
    labels = jnp.argmin(distances, axis=-1)
    nearest = jnp.take_along_axis(distances, labels[:, None], axis=-1)[:, 0]
    return labels.astype(jnp.int32), jnp.maximum(nearest + jnp.sum(jnp.square(features), axis=-1), 0.0)


def predict(features: np.ndarray, centroids: np.ndarray, chunk: int = _CHUNK) -> np.ndarray:
    """Nearest-centroid labels [n] of `features` [n, dim], computed in jitted chunks of `chunk` rows."""
    labels, _ = _labels_and_inertia(np.asarray(features, np.float32), jnp.asarray(centroids, jnp.float32), chunk)
    return labels


def inertia(features: np.ndarray, centroids: np.ndarray, chunk: int = _CHUNK) -> float:
    """Sum of squared distances of every row to its nearest centroid (scikit-learn's `inertia_`)."""
    return _labels_and_inertia(np.asarray(features, np.float32), jnp.asarray(centroids, jnp.float32), chunk)[1]


def _labels_and_inertia(features: np.ndarray, centroids: jax.Array, chunk: int) -> tuple[np.ndarray, float]:
    labels, total = [], 0.0
    for start in range(0, len(features), chunk):
        rows = _pad_rows(features[start : start + chunk], chunk)
        count = min(chunk, len(features) - start)
        chunk_labels, distances = _assign_with_distances(jnp.asarray(rows), centroids)
        labels.append(np.asarray(chunk_labels)[:count])
        total += float(np.sum(np.asarray(distances, np.float64)[:count]))
    return (np.concatenate(labels) if labels else np.zeros(0, np.int32)), total


def _pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
    """`rows` padded with zero rows to `size` (one compiled shape per chunk size)."""
    if len(rows) == size:
        return rows
    return np.concatenate([rows, np.zeros((size - len(rows), rows.shape[1]), rows.dtype)])


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_candidates"))
def kmeans_plus_plus(features: jax.Array, key: jax.Array, num_clusters: int, num_candidates: int) -> jax.Array:
    """Greedy k-means++ seeding: each new centroid is the best (lowest potential) of `num_candidates` draws."""
    count, dim = features.shape
    sq_norms = jnp.sum(jnp.square(features), axis=-1)

    def squared_distances(points):
        cross = jnp.dot(points, features.T, precision=_PRECISION)
        return jnp.maximum(jnp.sum(jnp.square(points), -1)[:, None] - 2 * cross + sq_norms[None, :], 0.0)

    first_key, loop_key = jax.random.split(key)
    first = features[jax.random.randint(first_key, (), 0, count)]
    closest = squared_distances(first[None])[0]
    centroids = jnp.zeros((num_clusters, dim), features.dtype).at[0].set(first)

    def step(index, carry):
        centroids, closest = carry
        draw_key = jax.random.fold_in(loop_key, index)
        candidates = jax.random.categorical(draw_key, jnp.log(closest + 1e-30), shape=(num_candidates,))
        candidate_closest = jnp.minimum(closest[None, :], squared_distances(features[candidates]))
        best = jnp.argmin(jnp.sum(candidate_closest, axis=-1))
        return centroids.at[index].set(features[candidates[best]]), candidate_closest[best]

    centroids, _ = jax.lax.fori_loop(1, num_clusters, step, (centroids, closest))
    return centroids


@jax.jit
def lloyd_step(chunks: jax.Array, weights: jax.Array, centroids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One Lloyd iteration over `chunks` [num_chunks, chunk, dim] (rows with weight 0 are padding).

    Returns the new centroids (an empty cluster keeps its old centroid) and the inertia before the update.
    """
    num_clusters, dim = centroids.shape

    def accumulate(totals, chunk_and_weights):
        rows, row_weights = chunk_and_weights
        labels, distances = _assign_with_distances(rows, centroids)
        sums = jax.ops.segment_sum(rows * row_weights[:, None], labels, num_segments=num_clusters)
        counts = jax.ops.segment_sum(row_weights, labels, num_segments=num_clusters)
        return (totals[0] + sums, totals[1] + counts, totals[2] + jnp.sum(distances * row_weights)), None

    start = (jnp.zeros((num_clusters, dim), jnp.float32), jnp.zeros((num_clusters,), jnp.float32), jnp.float32(0))
    (sums, counts, total), _ = jax.lax.scan(accumulate, start, (chunks, weights))
    updated = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)
    return updated, total


def fit(
    features: np.ndarray,
    num_clusters: int,
    seed: int = 0,
    max_iterations: int = 300,
    tolerance: float = 1e-4,
    num_init: int = 1,
) -> np.ndarray:
    """Centroids [num_clusters, dim] (float32) of `features` [n, dim]: the best of `num_init` k-means++ + Lloyd runs.

    Lloyd stops after `max_iterations` or once the centroids move less than `tolerance` times the mean
    per-dimension variance of the data (scikit-learn's rule).
    """
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or len(features) < num_clusters:
        raise ValueError(f"k-means needs [n >= {num_clusters}, dim] features, got shape {features.shape}")
    data = jnp.asarray(features)
    threshold = tolerance * float(np.mean(np.var(features, axis=0)))
    num_candidates = 2 + int(math.log(num_clusters))
    best, best_inertia = None, math.inf
    for run in range(num_init):
        centroids = kmeans_plus_plus(data, jax.random.key(seed + run), num_clusters, num_candidates)
        centroids = _lloyd(data, centroids, max_iterations, threshold)
        run_inertia = inertia(features, np.asarray(centroids))
        if run_inertia < best_inertia:
            best, best_inertia = np.asarray(centroids, np.float32), run_inertia
    return best


def _lloyd(data: jax.Array, centroids: jax.Array, max_iterations: int, threshold: float) -> jax.Array:
    chunk = min(_CHUNK, data.shape[0])
    num_chunks = -(-data.shape[0] // chunk)
    padding = num_chunks * chunk - data.shape[0]
    chunks = jnp.pad(data, ((0, padding), (0, 0))).reshape(num_chunks, chunk, -1)
    weights = (jnp.arange(num_chunks * chunk) < data.shape[0]).astype(jnp.float32).reshape(num_chunks, chunk)
    return _lloyd_loop(chunks, weights, centroids, max_iterations, jnp.float32(threshold))


@functools.partial(jax.jit, static_argnames="max_iterations")
def _lloyd_loop(chunks, weights, centroids, max_iterations: int, threshold) -> jax.Array:
    """Lloyd steps until the squared centroid shift is <= `threshold` or `max_iterations` ran."""

    def keep_going(carry):
        _, iteration, shift = carry
        return (iteration < max_iterations) & (shift > threshold)

    def step(carry):
        centroids, iteration, _ = carry
        updated, _ = lloyd_step(chunks, weights, centroids)
        return updated, iteration + 1, jnp.sum(jnp.square(updated - centroids))

    start = (centroids, jnp.int32(0), jnp.float32(jnp.inf))
    return jax.lax.while_loop(keep_going, step, start)[0]


def load_centroids(path: str | Path) -> np.ndarray:
    """Centroids [num_units, dim] float32 from a `.npy` (never a pickle: convert a `.bin` with kmeans_to_npy), local
    or in a bucket (read whole into memory: a few MB at most, and nothing on disk for processes to share)."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(
            f"{path}: centroids must be a .npy file (convert a scikit-learn .bin with "
            "`python -m conversion.kmeans_to_npy --allow-pickle`)"
        )
    try:
        centroids = files.load_array(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: centroids file not found") from None
    except ValueError as error:
        raise ValueError(f"{path}: not a plain .npy array ({error})") from None
    if centroids.ndim != 2 or not np.issubdtype(centroids.dtype, np.floating):
        raise ValueError(f"{path}: centroids must be a 2-D float array, got {centroids.dtype} {centroids.shape}")
    return centroids.astype(np.float32)


def save_centroids(path: str | Path, centroids: np.ndarray) -> Path:
    """Write centroids as `.npy` atomically (`files.save_array`: a temporary sibling renamed into place; in a
    bucket, one upload)."""
    path = Path(path)
    files.save_array(path, np.asarray(centroids, np.float32))
    return path
