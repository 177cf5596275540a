"""`SpeechLM`, the public handle on a trained or converted model, and `load_model`."""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import tokens
from slam_jax.models import qwen2, sampling, storage, weights
from slam_jax.models.config import ModelConfig
from slam_jax.paths import Path

_LENGTH_BUCKET = 32


def next_token_log_probs(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """[rows, length - 1] float32 log-probability that slot t's logits give the token at slot t + 1."""
    log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, input_ids[:, 1:, None], axis=-1)[..., 0]


def mean_log_likelihood(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """Minus the mean next-token NLL of each row of `[BOS, units..., EOS, PAD...]` (docs/recipe.md §6).

    Targets are `input_ids[:, 1:]`: BOS is never scored, EOS is, PAD targets are masked.
    """
    token_log_probs = next_token_log_probs(logits, input_ids)
    mask = (input_ids[:, 1:] != tokens.PAD_ID).astype(jnp.float32)
    return jnp.sum(token_log_probs * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, input_ids, segment_ids, positions):
    return nnx.merge(graphdef, state)(input_ids, segment_ids, positions)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _decode(graphdef, state, input_ids, cache, segment_ids, positions):
    return nnx.merge(graphdef, state).decode(input_ids, cache, segment_ids, positions)


@functools.partial(jax.jit, static_argnums=0)
def _log_likelihood(graphdef, state, input_ids):
    return mean_log_likelihood(nnx.merge(graphdef, state)(input_ids), input_ids)


def pad_batch(sequences: Sequence[Sequence[int]], bucket: int = _LENGTH_BUCKET) -> np.ndarray:
    """Right-pad id sequences with PAD to a common length rounded up to `bucket` (fewer recompiles)."""
    if not len(sequences):
        raise ValueError("log_likelihood: empty batch")
    longest = max(len(sequence) for sequence in sequences)
    batch = np.full((len(sequences), -(-longest // bucket) * bucket), tokens.PAD_ID, np.int32)
    for row, sequence in enumerate(sequences):
        batch[row, : len(sequence)] = sequence
    return batch


class SpeechLM:
    """A Qwen2 speech LM ready for inference: jit-compiled logits and log-likelihoods."""

    def __init__(self, model: qwen2.Qwen2):
        self.model = model
        self._graphdef, self._state = nnx.split(model)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def params(self) -> dict:
        return qwen2.get_params(self.model)

    def __call__(self, input_ids, segment_ids=None, positions=None) -> jax.Array:
        """Float32 logits [batch, length, vocab]."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        return _logits(self._graphdef, self._state, input_ids, segment_ids, positions)

    def init_cache(self, batch_size: int, max_length: int) -> qwen2.Cache:
        """An empty KV cache for `decode`."""
        return self.model.init_cache(batch_size, max_length)

    def decode(self, input_ids, cache: qwen2.Cache, segment_ids=None, positions=None) -> tuple[jax.Array, qwen2.Cache]:
        """Logits of `input_ids` appended to the cached prefix, and the updated cache (the old one is donated)."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        return _decode(self._graphdef, self._state, input_ids, cache, segment_ids, positions)

    def log_likelihood(self, batch) -> np.ndarray:
        """Minus the mean NLL of each sequence: `batch` is a PAD-padded id array or a list of id lists,
        each `[1, unit + 2, ..., 1]` (BOS not scored, EOS scored, PAD masked)."""
        if isinstance(batch, (list, tuple)):
            batch = pad_batch(batch)
        return np.asarray(_log_likelihood(self._graphdef, self._state, jnp.asarray(batch, jnp.int32)))

    def generate(
        self,
        prompt_ids,
        max_new_tokens: int = 150,
        temperature: float = 0.8,
        top_k: int = 25,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
    ) -> np.ndarray:
        """New ids [batch, max_new_tokens] continuing each prompt, PAD after a row's EOS; temperature 0 = greedy.

        `prompt_ids`: a list of id lists, each `[1, unit + 2, ...]` (no EOS), or a PAD-padded array (left or
        right). Sampling uses the KV cache in one compiled loop (`sampling.generate`); row i draws from
        `seed` and i, so a fixed seed reproduces the same continuations.
        """
        settings = sampling.SamplingSettings(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
        prompts = jnp.asarray(sampling.left_pad(prompt_ids))
        row_ids = jnp.arange(prompts.shape[0], dtype=jnp.int32)
        new_ids = sampling.generate(self._graphdef, self._state, prompts, row_ids, jnp.int32(seed), settings)
        return np.asarray(new_ids)


def load_model(path: str | Path, compute_dtype: str | None = None) -> SpeechLM:
    """The model at `path` (a converted model dir, a training workdir or a checkpoint step dir)."""
    overrides = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    return SpeechLM(weights.load_model(qwen2.FAMILY, storage.resolve_model_dir(path), **overrides))
