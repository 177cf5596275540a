"""Whisper (speech recognition) in Flax NNX, laid out like `transformers`' WhisperForConditionalGeneration.

Encoder: log-mel features [batch, mels, 2 x max_source_positions] -> a width-3 conv and a width-3 stride-2 conv,
each followed by exact (erf) GELU, plus the position table (sinusoids in every released checkpoint, but kept as
a parameter so that a checkpoint's own values are used), then pre-norm layers (self-attention whose key
projection has no bias, GELU MLP) and a final layer norm. Decoder: token embedding plus learned positions,
pre-norm layers (causal self-attention, cross-attention over the encoder output, GELU MLP), a final layer norm
and the head tied to the token embedding. Queries are scaled after their projection (bias included), as the
reference does.

Parameters are float32; matmuls and convolutions run in `config.compute_dtype` with float32 accumulation
(`precision.py`), while norms, softmax and the residual stream stay float32. Encoder layers are stacked and run
under `lax.scan`; on a CPU their attention runs a head and a block of queries at a time (`encoder_attention`).
The decoder's few layers are sliced out of their stacked weights once per call (`DecoderSteps`), so a decode
loop reads every layer's weights in place at each step; keys and values (the self-attention cache, threaded
functionally, and the cross-attention memory, computed once) are stored heads first, the layout the attention
dots read without copying. `greedy_decode` is the whole greedy search, to run inside one jit; language detection,
beam search (whose beams share their clip's cross-attention memory) and the seek loop's windows are in
`whisper_search.py`.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax.models import hubert, precision, sampling, weights
from slam_jax.paths import Path
from slam_jax.settings import Settings, setting

CONFIG_FILE = "whisper_config.json"
COMPUTE_DTYPES = ("float32", "bfloat16")
MEL_BINS = (80, 128)
CONV_WIDTH = 3
CONV_STRIDES = (1, 2)  # the encoder's two convs: mel frames per encoder position = their product
_INIT_STD = 0.02
# Encoder attention on a CPU: queries in blocks of this many per head (see `encoder_attention`).
CPU_QUERY_BLOCK = 750

Cache = list[dict[str, jax.Array]]  # per decoder layer: {"k", "v"} [batch, heads, slots, head_dim]


@dataclasses.dataclass(frozen=True)
class WhisperConfig(Settings):
    """A Whisper architecture (named as transformers' WhisperConfig names it) plus its compute dtype."""

    vocab_size: int = setting(51866, minimum=1)
    num_mel_bins: int = setting(128, choices=MEL_BINS)
    d_model: int = setting(1280, minimum=1)
    encoder_layers: int = setting(32, minimum=1)
    encoder_attention_heads: int = setting(20, minimum=1)
    encoder_ffn_dim: int = setting(5120, minimum=1)
    decoder_layers: int = setting(4, minimum=1)
    decoder_attention_heads: int = setting(20, minimum=1)
    decoder_ffn_dim: int = setting(5120, minimum=1)
    max_source_positions: int = setting(1500, minimum=1)  # encoder positions: 30 s of 20 ms frames
    max_target_positions: int = setting(448, minimum=1)  # decoder positions: prompt plus generated tokens
    scale_embedding: bool = False
    layer_norm_eps: float = setting(1e-5, above=0)  # torch.nn.LayerNorm's default, which every Whisper uses
    compute_dtype: str = setting("float32", choices=COMPUTE_DTYPES)

    def validate(self) -> None:
        """The heads split the width; token embeddings are not scaled (transformers never applies the scale)."""
        for key in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, key):
                raise ValueError(f"{self._source}.d_model={self.d_model}: must divide by {key}={getattr(self, key)}")
        if self.scale_embedding:
            raise ValueError(
                f"{self._source}.scale_embedding=True: not supported (transformers' Whisper computes the scale but "
                "never applies it, and no released checkpoint sets it)"
            )

    @property
    def num_mel_frames(self) -> int:
        """Mel frames the encoder reads (3000 = 30 s at a 10 ms hop)."""
        return self.max_source_positions * math.prod(CONV_STRIDES)


def tiny(**overrides) -> WhisperConfig:
    """A small Whisper for tests: 2 + 2 layers x 64, 80 mel bins, 30 s windows, 266 ids (the 256 bytes and
    Whisper's 10 special tokens)."""
    values = dict(
        vocab_size=266,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=2,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
    )
    return WhisperConfig(**{**values, **overrides})


def large_v3_turbo(**overrides) -> WhisperConfig:
    """openai/whisper-large-v3-turbo: 32 encoder layers, 4 decoder layers, 1280 wide, 20 heads, 128 mel bins."""
    return WhisperConfig(**overrides)


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


class Dense(nnx.Module):
    """x @ kernel (+ bias): float32 weights, matmul in the compute dtype, float32 result."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True, dtype, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(_INIT_STD)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = precision.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype), jnp.float32)
        return y if self.bias is None else y + self.bias[...]


class Conv(nnx.Module):
    """A width-3 conv over time with one frame of zero padding on each side (the reference's Conv1d), channels
    last: [batch, frames, in] -> [batch, frames / stride, out]."""

    def __init__(self, in_features: int, out_features: int, stride: int, *, dtype, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(_INIT_STD)
        self.kernel = nnx.Param(init(rngs.params(), (CONV_WIDTH, in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.stride, self.dtype = stride, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        side = CONV_WIDTH // 2
        return hubert.conv1d(x, self.kernel[...], self.stride, self.dtype, padding=((side, side),)) + self.bias[...]


def attend(queries: jax.Array, keys: jax.Array, values: jax.Array, visible: jax.Array | None) -> jax.Array:
    """Softmax attention, queries [batch, heads, length, head_dim] (already scaled) over keys and values
    [batch, heads, slots, head_dim], all in the compute dtype; `visible` [length, slots] masks slots (None: all).
    Returns [batch, length, heads * head_dim] float32.

    Heads come before positions: with positions first, a CPU's dots would copy the keys and values into that
    order at every call (15 ms of a 20 ms decode step per layer for whisper-base's 1500 encoder positions).
    """
    scores = precision.einsum("bhtd,bhsd->bhts", queries, keys, jnp.float32)
    if visible is not None:
        scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    out = precision.einsum("bhts,bhsd->bthd", probs, values, jnp.float32)
    return out.reshape(*out.shape[:2], -1)


def encoder_attention(queries: jax.Array, keys: jax.Array, values: jax.Array) -> jax.Array:
    """`attend` without a mask, computed on a CPU one head and `CPU_QUERY_BLOCK` queries at a time.

    Whole, the scores of 1500 positions are 9 MB per head (576 MB for 8 clips x 8 heads), and XLA's CPU softmax
    over them streams through memory: 0.8 s per whisper-base layer on 2 cores, against 0.26 s blockwise, where a
    block's 4.5 MB of scores stay near the cores. Accelerators take the whole batched computation.
    """
    if jax.default_backend() != "cpu":
        return attend(queries, keys, values, None)
    batch, heads, length, head_dim = queries.shape
    block = CPU_QUERY_BLOCK if length % CPU_QUERY_BLOCK == 0 else length
    blocks = length // block
    flat_queries = queries.reshape(batch * heads * blocks, block, head_dim)
    flat_keys, flat_values = (x.reshape(batch * heads, length, head_dim) for x in (keys, values))

    def one_block(index):
        head = index // blocks
        block_queries = jax.lax.dynamic_index_in_dim(flat_queries, index, keepdims=False)
        block_keys, block_values = (
            jax.lax.dynamic_index_in_dim(x, head, keepdims=False) for x in (flat_keys, flat_values)
        )
        scores = precision.einsum("td,sd->ts", block_queries, block_keys, jnp.float32)
        probs = jax.nn.softmax(scores, axis=-1).astype(block_values.dtype)
        return precision.einsum("ts,sd->td", probs, block_values, jnp.float32)

    out = jax.lax.map(one_block, jnp.arange(batch * heads * blocks))  # [batch * heads * blocks, block, head_dim]
    out = out.reshape(batch, heads, length, head_dim)
    return jnp.swapaxes(out, 1, 2).reshape(batch, length, heads * head_dim)


class Attention(nnx.Module):
    """Multi-head attention with q/v/out biases and none on k; self- or cross-attention alike."""

    def __init__(self, width: int, heads: int, *, dtype, rngs: nnx.Rngs):
        self.q_proj = Dense(width, width, dtype=dtype, rngs=rngs)
        self.k_proj = Dense(width, width, use_bias=False, dtype=dtype, rngs=rngs)
        self.v_proj = Dense(width, width, dtype=dtype, rngs=rngs)
        self.out_proj = Dense(width, width, dtype=dtype, rngs=rngs)
        self.heads, self.head_dim, self.dtype = heads, width // heads, dtype

    def split_heads(self, x: jax.Array) -> jax.Array:
        """[batch, length, width] -> [batch, heads, length, head_dim] in the compute dtype."""
        return jnp.swapaxes(x.reshape(*x.shape[:2], self.heads, self.head_dim), 1, 2).astype(self.dtype)

    def keys_and_values(self, x: jax.Array) -> dict[str, jax.Array]:
        """{"k", "v"} [batch, heads, length, head_dim] of `x` [batch, length, width], in the compute dtype."""
        return {"k": self.split_heads(self.k_proj(x)), "v": self.split_heads(self.v_proj(x))}

    def __call__(self, x: jax.Array, memory: dict[str, jax.Array], visible: jax.Array | None = None) -> jax.Array:
        """`x` [batch, length, width] attending over `memory` (keys_and_values of itself or of the encoder)."""
        return self.out_proj(attend(self.queries(x), memory["k"], memory["v"], visible))

    def queries(self, x: jax.Array) -> jax.Array:
        """Scaled queries [batch, heads, length, head_dim] of `x` [batch, length, width]."""
        return self.split_heads(self.q_proj(x) * self.head_dim**-0.5)

    def encoder_self_attention(self, x: jax.Array) -> jax.Array:
        """Unmasked self-attention of `x` [batch, length, width] (see `encoder_attention`)."""
        memory = self.keys_and_values(x)
        return self.out_proj(encoder_attention(self.queries(x), memory["k"], memory["v"]))


class MLP(nnx.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, width: int, hidden: int, *, dtype, rngs: nnx.Rngs):
        self.fc1 = Dense(width, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = Dense(hidden, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class EncoderLayer(nnx.Module):
    """Pre-norm block: x + self_attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: WhisperConfig, *, rngs: nnx.Rngs):
        dtype, width, eps = _dtype(config.compute_dtype), config.d_model, config.layer_norm_eps
        self.self_attn = Attention(width, config.encoder_attention_heads, dtype=dtype, rngs=rngs)
        self.self_attn_layer_norm = hubert.LayerNorm(width, eps)
        self.mlp = MLP(width, config.encoder_ffn_dim, dtype=dtype, rngs=rngs)
        self.final_layer_norm = hubert.LayerNorm(width, eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn.encoder_self_attention(self.self_attn_layer_norm(x))
        return x + self.mlp(self.final_layer_norm(x))


class Encoder(nnx.Module):
    """The conv front end, the position table, the stacked layers (scanned) and the final norm."""

    def __init__(self, config: WhisperConfig, *, rngs: nnx.Rngs):
        dtype, width = _dtype(config.compute_dtype), config.d_model
        self.conv1 = Conv(config.num_mel_bins, width, CONV_STRIDES[0], dtype=dtype, rngs=rngs)
        self.conv2 = Conv(width, width, CONV_STRIDES[1], dtype=dtype, rngs=rngs)
        self.embed_positions = nnx.Param(jnp.asarray(sinusoids(config.max_source_positions, width)))
        self.layers = weights.stacked_layers(EncoderLayer, config, config.encoder_layers, rngs)
        self.layer_norm = hubert.LayerNorm(width, config.layer_norm_eps)

    def __call__(self, features: jax.Array) -> jax.Array:
        """Log-mel features [batch, mels, num_mel_frames] (the reference's layout) -> [batch, positions, width]."""
        x = jax.nn.gelu(self.conv1(jnp.swapaxes(features, 1, 2)), approximate=False)
        x = jax.nn.gelu(self.conv2(x), approximate=False)
        x = x + self.embed_positions[...]
        graphdef, state = nnx.split(self.layers)

        def body(carry, layer_state):
            return nnx.merge(graphdef, layer_state)(carry), None

        x, _ = jax.lax.scan(body, x, state)
        return self.layer_norm(x)


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> np.ndarray:
    """[length, channels] float32: sines then cosines at geometric timescales (the released encoders' table)."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inverse_timescales = np.exp(-increment * np.arange(channels // 2))
    scaled_time = np.arange(length)[:, None] * inverse_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


class DecoderLayer(nnx.Module):
    """Pre-norm block: causal self-attention, cross-attention over the encoder output, MLP."""

    def __init__(self, config: WhisperConfig, *, rngs: nnx.Rngs):
        dtype, width, eps = _dtype(config.compute_dtype), config.d_model, config.layer_norm_eps
        heads = config.decoder_attention_heads
        self.self_attn = Attention(width, heads, dtype=dtype, rngs=rngs)
        self.self_attn_layer_norm = hubert.LayerNorm(width, eps)
        self.encoder_attn = Attention(width, heads, dtype=dtype, rngs=rngs)
        self.encoder_attn_layer_norm = hubert.LayerNorm(width, eps)
        self.mlp = MLP(width, config.decoder_ffn_dim, dtype=dtype, rngs=rngs)
        self.final_layer_norm = hubert.LayerNorm(width, eps)

    def __call__(self, x, start, layer_cache: dict, cross: dict, visible) -> tuple[jax.Array, dict]:
        """x [batch, length, width] at positions start.. -> the layer output and its cache with x's keys written."""
        normed = self.self_attn_layer_norm(x)
        new = self.self_attn.keys_and_values(normed)
        layer_cache = {
            name: jax.lax.dynamic_update_slice(layer_cache[name], new[name], (0, 0, start, 0)) for name in ("k", "v")
        }
        x = x + self.self_attn(normed, layer_cache, visible)
        # Rows of a beam search come as a clip's beams side by side (batch x beams): they share the clip's memory,
        # so its beams' queries go together as one row of the memory's batch (no memory copied per beam).
        normed = self.encoder_attn_layer_norm(x)
        grouped = normed.reshape(cross["k"].shape[0], -1, normed.shape[-1])
        x = x + self.encoder_attn(grouped, cross).reshape(x.shape)
        return x + self.mlp(self.final_layer_norm(x)), layer_cache


class Decoder(nnx.Module):
    """Token and position embeddings, the stacked layers, the final norm; the head is the token embedding."""

    def __init__(self, config: WhisperConfig, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(_INIT_STD)
        width = config.d_model
        self.embed_tokens = nnx.Param(init(rngs.params(), (config.vocab_size, width), jnp.float32))
        self.embed_positions = nnx.Param(init(rngs.params(), (config.max_target_positions, width), jnp.float32))
        self.layers = weights.stacked_layers(DecoderLayer, config, config.decoder_layers, rngs)
        self.layer_norm = hubert.LayerNorm(width, config.layer_norm_eps)


class DecoderSteps:
    """The decoder run on its layers sliced out of the stacked weights once, for a prompt or one step at a time.

    Slicing inside a decode loop would copy every layer's weights at every step (XLA materialises the slices);
    taken once, outside the loop, the loop's matmuls read them in place.
    """

    def __init__(self, decoder: Decoder, config: WhisperConfig):
        self.decoder, self.config = decoder, config
        graphdef, stacked = nnx.split(decoder.layers)
        self.layers = [
            nnx.merge(graphdef, jax.tree.map(lambda leaf, i=index: leaf[i], stacked))
            for index in range(config.decoder_layers)
        ]

    def cross_attention_memory(self, encoded: jax.Array) -> Cache:
        """Every layer's cross-attention keys and values of the encoder output [batch, positions, width]."""
        return [layer.encoder_attn.keys_and_values(encoded) for layer in self.layers]

    def init_cache(self, batch: int, slots: int) -> Cache:
        """An empty self-attention cache of `slots` positions per layer (empty slots are never attended)."""
        cfg = self.config
        shape = (batch, cfg.decoder_attention_heads, slots, cfg.d_model // cfg.decoder_attention_heads)
        zeros = jnp.zeros(shape, _dtype(cfg.compute_dtype))
        return [{"k": zeros, "v": zeros} for _ in self.layers]

    def __call__(self, input_ids: jax.Array, start, cache: Cache, cross: Cache) -> tuple[jax.Array, Cache]:
        """Float32 logits [batch, length, vocab] of `input_ids` [batch, length] at positions start..start+length-1,
        after the tokens `cache` holds, and the cache with these tokens' keys and values written in."""
        decoder, dtype = self.decoder, _dtype(self.config.compute_dtype)
        length, slots = input_ids.shape[1], cache[0]["k"].shape[2]
        positions = jax.lax.dynamic_slice_in_dim(decoder.embed_positions[...], start, length)
        x = jnp.take(decoder.embed_tokens[...], input_ids, axis=0).astype(jnp.float32) + positions
        visible = jnp.arange(slots)[None, :] <= start + jnp.arange(length)[:, None]
        new_cache = []
        for layer, layer_cache, layer_cross in zip(self.layers, cache, cross, strict=True):
            x, layer_cache = layer(x, start, layer_cache, layer_cross, visible)
            new_cache.append(layer_cache)
        hidden = decoder.layer_norm(x).astype(dtype)
        return precision.einsum("btd,vd->btv", hidden, decoder.embed_tokens[...].astype(dtype), jnp.float32), new_cache


class Whisper(nnx.Module):
    """Whisper's encoder and decoder."""

    def __init__(self, config: WhisperConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)

    def __call__(self, features: jax.Array, decoder_input_ids: jax.Array) -> jax.Array:
        """Float32 logits [batch, length, vocab] of whole decoder sequences [batch, length] given log-mel
        `features` [batch, mels, num_mel_frames] (the reference's forward pass)."""
        steps = DecoderSteps(self.decoder, self.config)
        cache = steps.init_cache(*decoder_input_ids.shape)
        logits, _ = steps(decoder_input_ids, 0, cache, steps.cross_attention_memory(self.encoder(features)))
        return logits


@dataclasses.dataclass(frozen=True)
class GreedySettings:
    """What transformers' Whisper `generate` applies to a greedy search without timestamps (static under jit)."""

    max_new_tokens: int
    eos_token_id: int
    suppress_tokens: tuple[int, ...] = ()  # never generated
    begin_suppress_tokens: tuple[int, ...] = ()  # not generated first (a blank, EOS)


def suppression_mask(vocab_size: int, token_ids: tuple[int, ...]) -> np.ndarray:
    """[vocab_size] bool, True at `token_ids` (ids past the vocabulary are ignored, as torch.isin ignores them)."""
    mask = np.zeros((vocab_size,), bool)
    ids = np.asarray([token for token in token_ids if 0 <= token < vocab_size], np.int64)
    mask[ids] = True
    return mask


def greedy_decode(
    model: Whisper,
    features: jax.Array,
    prompt: jax.Array,
    live: jax.Array,
    settings: GreedySettings,
    limit: jax.Array | None = None,
) -> jax.Array:
    """Greedy ids [batch, max_new_tokens] after `prompt` ([prompt_length], or [batch, prompt_length] per row) for
    log-mel `features`; EOS after a row's end. Rows where `live` [batch] is False (batch padding) count as done
    from the start; `limit` [batch] (optional) caps each row's new tokens below `max_new_tokens`. Stops once every
    row has emitted EOS. Meant to be traced inside a jit (the loop is one `lax.while_loop`).

    Like transformers' greedy search: at each step the logits of `suppress_tokens` (and, at the first step, of
    `begin_suppress_tokens`) become -inf, the highest remaining logit wins (the first on ties), and finished
    rows get EOS (Whisper's pad token).
    """
    steps = DecoderSteps(model.decoder, model.config)
    cross = steps.cross_attention_memory(model.encoder(features))
    return greedy_search(steps, cross, prompt, live, settings, limit)


def greedy_search(
    steps: DecoderSteps,
    cross: Cache,
    prompt: jax.Array,
    live: jax.Array,
    settings: GreedySettings,
    limit: jax.Array | None = None,
) -> jax.Array:
    """`greedy_decode` over the cross-attention memory `cross` of encoded features (see there)."""
    config = steps.config
    batch, prompt_length = live.shape[0], prompt.shape[-1]
    cache = steps.init_cache(batch, prompt_length + settings.max_new_tokens)
    logits, cache = steps(jnp.broadcast_to(prompt, (batch, prompt_length)), 0, cache, cross)
    always = suppression_mask(config.vocab_size, settings.suppress_tokens)
    first = always | suppression_mask(config.vocab_size, settings.begin_suppress_tokens)

    def pick(carry, step_logits, suppressed):
        token = jnp.argmax(jnp.where(suppressed, -jnp.inf, step_logits), axis=-1).astype(jnp.int32)
        token = jnp.where(carry["done"], settings.eos_token_id, token)
        done = carry["done"] | (token == settings.eos_token_id)
        if limit is not None:  # transformers' max_length: the row stops at its cap
            done = done | (carry["step"] + 1 >= limit)
        return token, {**carry, "new_ids": carry["new_ids"].at[:, carry["step"]].set(token), "done": done}

    carry = {
        "step": jnp.zeros((), jnp.int32),
        "done": ~live,
        "new_ids": jnp.full((batch, settings.max_new_tokens), settings.eos_token_id, jnp.int32),
        "cache": cache,
    }
    token, carry = pick(carry, logits[:, -1], first)

    def step(state):
        token, carry = state
        carry = {**carry, "step": carry["step"] + 1}
        logits, cache = steps(token[:, None], prompt_length + carry["step"] - 1, carry["cache"], cross)
        return pick({**carry, "cache": cache}, logits[:, -1], always)

    def keep_going(state):
        _, carry = state
        return (carry["step"] < settings.max_new_tokens - 1) & ~jnp.all(carry["done"])

    _, carry = jax.lax.while_loop(keep_going, step, (token, carry))
    return carry["new_ids"]


def inference_state(state: nnx.State, config: WhisperConfig) -> nnx.State:
    """The model's state with its matmul weights cast once to the compute dtype (see `sampling.inference_state`)."""
    return sampling.inference_state(state, config.compute_dtype)


FAMILY = weights.Family(Whisper, WhisperConfig, CONFIG_FILE, noun="Whisper model")


def init_model(config: WhisperConfig, seed: int = 0) -> Whisper:
    """A randomly initialised Whisper (for shapes, tests and benchmarks; real weights come from conversion)."""
    return weights.init_model(FAMILY, config, seed)


def abstract_model(config: WhisperConfig) -> Whisper:
    """The model with shape-only parameters: nothing allocated."""
    return weights.abstract_model(FAMILY, config)


def param_shapes(config: WhisperConfig) -> dict[str, Any]:
    """Pure-dict tree of `jax.ShapeDtypeStruct`s of the parameters."""
    return weights.param_shapes(FAMILY, config)


def count_params(config: WhisperConfig) -> int:
    """Parameter count from abstract shapes (no weights allocated)."""
    return weights.count_params(FAMILY, config)


get_params = weights.get_params


def check_shapes(config: WhisperConfig, params: dict[str, Any]) -> None:
    """Raise a one-line ValueError naming the parameters that do not fit `config`."""
    weights.check_shapes(FAMILY, config, params)


def save_whisper(directory: str | Path, config: WhisperConfig, params: dict[str, Any], **kwargs) -> Path:
    """Write `whisper_config.json` + Orbax `params/` (+ `extra_files`) atomically (see `weights.save_model_dir`)."""
    return weights.save_model_dir(FAMILY, directory, config, params, **kwargs)


def load_whisper(directory: str | Path, **config_overrides) -> Whisper:
    """The model saved in `directory` (e.g. by conversion.whisper_to_flax), with optional config overrides."""
    return weights.load_model(FAMILY, directory, **config_overrides)
