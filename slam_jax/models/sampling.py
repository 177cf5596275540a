"""Sampling continuations: logits processors as pure functions and a jit-compiled decode loop over the KV cache.

The processors compute exactly what transformers' `RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`,
`TopKLogitsWarper` and `TopPLogitsWarper` compute, and run in transformers' order (penalty, temperature, top-k,
top-p); greedy decoding (temperature 0) applies the penalty only, as transformers' greedy search does.

Prompts are left-padded with PAD (or, for a text vocabulary whose every id is a token, marked by `prompt_mask`): pad
slots get segment 0 (never attended) and positions count from each row's first real token, so a row's continuation
does not depend on how much padding it got. A row stops at any of `SamplingSettings.eos_ids` (the speech LM's EOS by
default; a chat model's end-of-turn ids for the LLM judge, evaluation/llm_judge.py). The whole loop (prefill,
then one cached step per new token, stopping once every row has emitted EOS) is one `jax.lax.while_loop` inside
one jit. Each row samples with its own key, `fold_in(fold_in(key(seed), row_id), step)`, so a prompt's
continuation does not depend on the other rows of its batch either.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import tokens
from slam_jax.models import attention, qwen2

_MATRICES = ("kernel", "embed_tokens")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How to pick each new token (static under jit: each distinct setting compiles once)."""

    max_new_tokens: int = 150
    temperature: float = 0.8
    top_k: int = 25
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_ids: tuple[int, ...] = (tokens.EOS_ID,)  # a row is done after any of these

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 = off)")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")
        if not self.eos_ids:
            raise ValueError("eos_ids: name at least one id that ends a row")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """Tokens already in the sequence (`seen`, boolean [batch, vocab]): negative logits times `penalty`,
    positive ones divided by it."""
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def apply_temperature(logits: jax.Array, temperature: float) -> jax.Array:
    return logits / temperature


def apply_top_k(logits: jax.Array, top_k: int) -> jax.Array:
    """-inf below the k-th largest logit of each row (ties with it are kept)."""
    top_k = min(top_k, logits.shape[-1])
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    return jnp.where(logits < kth_largest, -jnp.inf, logits)


def apply_top_p(logits: jax.Array, top_p: float) -> jax.Array:
    """-inf on the least likely tokens whose probabilities sum to at most 1 - `top_p` (the most likely is kept)."""
    order = jnp.argsort(logits, axis=-1)
    ascending = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    remove_sorted = (cumulative <= 1 - top_p).at[..., -1].set(False)
    remove = jnp.take_along_axis(remove_sorted, jnp.argsort(order, axis=-1), axis=-1)
    return jnp.where(remove, -jnp.inf, logits)


def process_logits(logits: jax.Array, seen: jax.Array, settings: SamplingSettings) -> jax.Array:
    """Float32 scores to pick from: the penalty, then (unless greedy) temperature, top-k and top-p."""
    logits = logits.astype(jnp.float32)
    if settings.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
    if settings.greedy:
        return logits
    if settings.temperature != 1.0:
        logits = apply_temperature(logits, settings.temperature)
    if settings.top_k:
        logits = apply_top_k(logits, settings.top_k)
    if settings.top_p < 1.0:
        logits = apply_top_p(logits, settings.top_p)
    return logits


def next_tokens(logits: jax.Array, seen: jax.Array, row_keys: jax.Array, settings: SamplingSettings) -> jax.Array:
    """One token per row [batch] from last-position logits [batch, vocab]."""
    scores = process_logits(logits, seen, settings)
    if settings.greedy:
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    return jax.vmap(jax.random.categorical)(row_keys, scores).astype(jnp.int32)


def left_pad_layout(prompt_ids: jax.Array, prompt_mask: jax.Array | None = None) -> tuple[jax.Array, ...]:
    """Segment ids (1 real, 0 PAD, or `prompt_mask`'s), positions from each row's first real token, real lengths."""
    real = prompt_ids != tokens.PAD_ID if prompt_mask is None else prompt_mask
    segment_ids = real.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    return segment_ids, positions, segment_ids.sum(axis=1)


def inference_state(state: nnx.State, compute_dtype: str) -> nnx.State:
    """Matmul weights (kernels, the embedding) cast once to the compute dtype, so no decode step re-casts the
    float32 master weights; biases and norm scales stay float32, as the layers use them."""
    dtype = jnp.dtype(compute_dtype)

    def cast(path, leaf):
        names = {getattr(key, "key", None) for key in path}
        is_matrix = any(name in names for name in _MATRICES)
        return leaf.astype(dtype) if is_matrix and jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

    return jax.tree_util.tree_map_with_path(cast, state)


class LayerwiseDecoder:
    """`Qwen2.decode` run layer by layer on separate per-layer weight and KV-cache arrays.

    `Qwen2.decode` slices each layer's weights out of the stacked arrays at every call, and XLA materialises
    those slices as copies: three times the weight traffic of a memory-bound decode step. Here the slices
    are taken once per `generate` call, outside the decode loop, so the loop's matmuls read the weights in
    place. The model's own embedding, layers, norm and head do the arithmetic, in `Qwen2.forward`'s order.
    The prompt goes through `Qwen2.decode` itself (one pass, one compiled layer when layers are scanned).
    """

    def __init__(self, model: qwen2.Qwen2):
        self.model = model
        self.layer_graphdef, stacked = nnx.split(model.layers)
        self.layer_states = [
            jax.tree.map(lambda leaf, i=index: leaf[i], stacked) for index in range(model.config.num_layers)
        ]

    def prefill(self, prompt_ids, max_length: int, segment_ids, positions) -> tuple[jax.Array, dict]:
        """Logits of the prompt's last slot [batch, 1, vocab] (only they are read: a text vocabulary's logits of
        every slot would be the program's largest array) and a per-layer cache of `max_length` slots holding it."""
        cache = self.model.init_cache(prompt_ids.shape[0], max_length)
        hidden, cache, _ = self.model.forward(prompt_ids, segment_ids, positions, cache=cache, whole_sequence=True)
        logits = self.model.logits(hidden[:, -1:])
        layers = [{"k": cache["k"][i], "v": cache["v"][i]} for i in range(self.model.config.num_layers)]
        return logits, {"layers": layers, "segment_ids": cache["segment_ids"], "index": cache["index"]}

    def __call__(self, input_ids, cache: dict, segment_ids, positions) -> tuple[jax.Array, dict]:
        """Float32 logits of `input_ids` appended after what `cache` holds, and the updated cache."""
        batch, length = input_ids.shape
        start = cache["index"]
        query_slots = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))
        key_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, start))
        key_slots = jnp.broadcast_to(jnp.arange(key_segments.shape[1], dtype=jnp.int32), key_segments.shape)
        mask = attention.attention_mask(query_slots, key_slots, segment_ids, key_segments)
        x = self.model.embed(input_ids)
        layers = []
        for layer_state, layer_cache in zip(self.layer_states, cache["layers"], strict=True):
            layer = nnx.merge(self.layer_graphdef, layer_state)
            x, layer_cache = layer(x, positions, mask, {**layer_cache, "index": start})
            layers.append({"k": layer_cache["k"], "v": layer_cache["v"]})
        logits = self.model.logits(self.model.norm(x))
        return logits, {"layers": layers, "segment_ids": key_segments, "index": start + length}


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def generate(
    graphdef,
    state,
    prompt_ids: jax.Array,
    row_ids: jax.Array,
    seed: jax.Array,
    settings: SamplingSettings,
    prompt_mask: jax.Array | None = None,
):
    """New ids [batch, max_new_tokens] after left-padded `prompt_ids` [batch, length]; PAD after a row's EOS.

    `row_ids` [batch] name each row's random stream (keep them fixed to make a prompt's sample independent of
    its batch); `seed` is an int32 scalar. `prompt_mask` [batch, length] (True on real tokens) marks the padding
    where PAD is a real token of the vocabulary (a text LM's); without it, PAD ids are the padding.
    """
    state = inference_state(state, nnx.merge(graphdef, state).config.compute_dtype)
    decoder = LayerwiseDecoder(nnx.merge(graphdef, state))
    batch, prompt_length = prompt_ids.shape
    segment_ids, positions, lengths = left_pad_layout(prompt_ids, prompt_mask)
    logits, cache = decoder.prefill(prompt_ids, prompt_length + settings.max_new_tokens, segment_ids, positions)
    vocab = logits.shape[-1]
    seen = jnp.any(jax.nn.one_hot(prompt_ids, vocab, dtype=jnp.bool_) & (segment_ids[..., None] > 0), axis=1)
    row_keys = jax.vmap(lambda row: jax.random.fold_in(jax.random.key(seed), row))(row_ids)
    carry = {
        "step": jnp.zeros((), jnp.int32),
        "logits": logits[:, -1],
        "cache": cache,
        "seen": seen,
        "done": jnp.zeros((batch,), jnp.bool_),
        "new_ids": jnp.full((batch, settings.max_new_tokens), tokens.PAD_ID, jnp.int32),
    }

    def record(carry):
        """Pick this step's tokens (PAD for finished rows) and write them down."""
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, carry["step"])
        token = next_tokens(carry["logits"], carry["seen"], step_keys, settings)
        token = jnp.where(carry["done"], tokens.PAD_ID, token)
        return token, {
            **carry,
            "new_ids": carry["new_ids"].at[:, carry["step"]].set(token),
            "seen": carry["seen"] | jax.nn.one_hot(token, vocab, dtype=jnp.bool_),
            "done": carry["done"] | jnp.isin(token, jnp.asarray(settings.eos_ids, jnp.int32)),
        }

    def step(carry):
        token, carry = record(carry)
        step_positions = (lengths + carry["step"])[:, None]
        logits, cache = decoder(token[:, None], carry["cache"], jnp.ones((batch, 1), jnp.int32), step_positions)
        return {**carry, "step": carry["step"] + 1, "logits": logits[:, -1], "cache": cache}

    def keep_going(carry):
        return (carry["step"] < settings.max_new_tokens - 1) & ~jnp.all(carry["done"])

    carry = jax.lax.while_loop(keep_going, step, carry)
    _, carry = record(carry)  # the last token needs no forward pass after it
    return carry["new_ids"]


def left_pad(prompts, bucket: int = 16) -> np.ndarray:
    """Prompts as one left-padded int32 array whose width is rounded up to `bucket` (fewer compiles).

    `prompts`: a list of id sequences, or a PAD-padded 2-D array (left or right padded: PADs are dropped).
    """
    rows = [np.asarray(row, np.int64).reshape(-1) for row in prompts]
    rows = [row[row != tokens.PAD_ID] for row in rows]
    if not rows:
        raise ValueError("generate: no prompts")
    for index, row in enumerate(rows):
        if not row.size:
            raise ValueError(f"generate: prompt {index} is empty (start each prompt with BOS = {tokens.BOS_ID})")
    width = -(-max(row.size for row in rows) // bucket) * bucket
    batch = np.full((len(rows), width), tokens.PAD_ID, np.int32)
    for index, row in enumerate(rows):
        batch[index, width - row.size :] = row
    return batch
