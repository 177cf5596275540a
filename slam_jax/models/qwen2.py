"""The Qwen2 decoder in Flax NNX, laid out like `transformers`' Qwen2ForCausalLM, and through its config the
Llama decoder (LlamaForCausalLM: no q/k/v biases, `attention_bias=False`, optionally llama3 RoPE scaling).

Parameters are float32 (master weights); matmuls run in `config.compute_dtype` and accumulate in float32, in
the forward and the backward pass alike (`precision.py`): a bf16 run multiplies bf16 by bf16 everywhere, while
RMSNorm, the softmax statistics and the logits stay float32.
The decoder layers are created stacked (one leading layer axis on every weight) so the forward pass can run
them under `jax.lax.scan` (one compiled layer, fast compiles) or unrolled, chosen by `config.scan_layers`.

Attention honours packed rows: `segment_ids` keep tokens of different segments apart and `positions`
restart the rotary phase per segment. A whole sequence goes through the kernel `config.attention` names
(`attention.py`: the einsum on CPUs, splash on TPUs, a Pallas flash kernel on GPUs). Incremental decoding
keeps a KV cache that the model creates (`init_cache`) and threads functionally through `decode`, so every
call stays a pure function under jit.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from slam_jax.models import attention, precision, weights
from slam_jax.models.config import ModelConfig

Cache = dict[str, jax.Array]

_INIT_STD = 0.02
# Matmul outputs are saved by name (precision.py): "dense" = projections (no batch dims), "attention" = the
# einsum attention's matmuls. A fused kernel's own residuals are recomputed unless no remat is asked for.
_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.save_only_these_names("dense", "attention"),
    "dots_no_batch": jax.checkpoint_policies.save_only_these_names("dense"),
}


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


class Dense(nnx.Module):
    """x @ kernel (+ bias): float32 weights, matmul in the compute dtype accumulated in float32, both passes."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool, dtype, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(_INIT_STD)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = checkpoint_name(
            precision.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype)), "dense"
        )
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square norm computed in float32, as Qwen2 does."""

    def __init__(self, features: int, eps: float, dtype):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * normed.astype(self.dtype)


def rope_inverse_frequencies(config: ModelConfig) -> jax.Array:
    """RoPE's [head_dim / 2] float32 inverse frequencies, llama3-rescaled when the config asks for it."""
    head_dim = config.head_dim
    if config.rope_scaling == "none":
        return 1.0 / (config.rope_theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    return jnp.asarray(llama3_inverse_frequencies(config))


def llama3_inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """transformers' `_compute_llama3_parameters`: wavelengths longer than the original context / low_freq_factor
    are slowed by `factor`, those shorter than original context / high_freq_factor kept, the band between
    interpolated. The unscaled frequencies are rounded to float32 from float64 (torch's float32 pow may differ by
    an ulp); the rescaling runs step by step in float32, as torch's does."""
    head_dim, factor = config.head_dim, np.float32(config.rope_factor)
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    old_context = config.rope_original_max_position_embeddings
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    inv_freq = (1.0 / config.rope_theta**exponents).astype(np.float32)
    wavelength = np.float32(2 * np.pi) / inv_freq
    low_freq_wavelength, high_freq_wavelength = old_context / low, old_context / high
    scaled = np.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
    smooth = ((np.float32(old_context) / wavelength - np.float32(low)) / np.float32(high - low)).astype(np.float32)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelength < high_freq_wavelength) & ~(wavelength > low_freq_wavelength)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rotary_embedding(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate `x` [batch, length, heads, head_dim] by `positions` [batch, length] (half-split convention)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with q/k/v biases (Qwen2; none for Llama) and no output bias."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        dtype = _dtype(config.compute_dtype)
        d, hd, bias = config.hidden_size, config.head_dim, config.attention_bias
        self.q_proj = Dense(d, config.num_heads * hd, use_bias=bias, dtype=dtype, rngs=rngs)
        self.k_proj = Dense(d, config.num_kv_heads * hd, use_bias=bias, dtype=dtype, rngs=rngs)
        self.v_proj = Dense(d, config.num_kv_heads * hd, use_bias=bias, dtype=dtype, rngs=rngs)
        self.o_proj = Dense(config.num_heads * hd, d, use_bias=False, dtype=dtype, rngs=rngs)
        self.config = config

    def __call__(self, x, positions, visible, layer_cache: Cache | None) -> tuple[jax.Array, Cache | None]:
        """Attention output and, when decoding, the layer's k/v cache with this call's keys written in.

        `visible`: the segment ids [batch, length] when this call's tokens are a whole sequence (training,
        scoring, the prefill of an empty cache: the configured kernel), or the boolean mask [batch, 1, 1, length,
        cache slots] of new tokens attending over a cache (the einsum attention).
        """
        cfg = self.config
        batch, length, _ = x.shape
        q = self.q_proj(x).reshape(batch, length, cfg.num_heads, cfg.head_dim)
        k = self.k_proj(x).reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(x).reshape(batch, length, cfg.num_kv_heads, cfg.head_dim)
        inv_freq = rope_inverse_frequencies(cfg)
        q = rotary_embedding(q, positions, inv_freq)
        k = rotary_embedding(k, positions, inv_freq)
        keys, values = k, v
        if layer_cache is not None:
            start = (0, layer_cache["index"], 0, 0)
            keys = jax.lax.dynamic_update_slice(layer_cache["k"], k.astype(layer_cache["k"].dtype), start)
            values = jax.lax.dynamic_update_slice(layer_cache["v"], v.astype(layer_cache["v"].dtype), start)
            layer_cache = {"k": keys, "v": values, "index": layer_cache["index"]}
        if visible.ndim == 2:  # a whole sequence: its own keys only, through the configured kernel
            backend = attention.resolve(cfg.attention)
            out = attention.causal_attention(q, k.astype(q.dtype), v.astype(q.dtype), visible, backend)
        else:  # new tokens over the cache
            out = attention.grouped_attention(q, keys.astype(q.dtype), values.astype(q.dtype), visible)
        return self.o_proj(out), layer_cache


class MLP(nnx.Module):
    """SwiGLU feed-forward without biases."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        dtype = _dtype(config.compute_dtype)
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = Dense(d, f, use_bias=False, dtype=dtype, rngs=rngs)
        self.up_proj = Dense(d, f, use_bias=False, dtype=dtype, rngs=rngs)
        self.down_proj = Dense(f, d, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        dtype = _dtype(config.compute_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, positions, visible, layer_cache):
        """The layer output and, when decoding, this layer's updated k/v cache (`visible`: see Attention)."""
        attended, layer_cache = self.self_attn(self.input_layernorm(x), positions, visible, layer_cache)
        h = x + attended
        return h + self.mlp(self.post_attention_layernorm(h)), layer_cache


class Qwen2(nnx.Module):
    """Qwen2 causal LM: embedding, stacked decoder layers, final norm and a tied or separate head."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = _dtype(config.compute_dtype)
        init = jax.nn.initializers.normal(_INIT_STD)
        self.embed_tokens = nnx.Param(init(rngs.params(), (config.vocab_size, config.hidden_size), jnp.float32))
        self.layers = weights.stacked_layers(DecoderLayer, config, config.num_layers, rngs)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Dense(config.hidden_size, config.vocab_size, use_bias=False, dtype=dtype, rngs=rngs)
        )

    def __call__(self, input_ids, segment_ids=None, positions=None) -> jax.Array:
        """Float32 logits [batch, length, vocab] of a full (possibly packed) sequence."""
        hidden, _, _ = self.forward(input_ids, segment_ids, positions)
        return self.logits(hidden)

    def hidden_states(self, input_ids, segment_ids=None, positions=None) -> list[jax.Array]:
        """Inputs of every layer plus the final normed output: `transformers`' `output_hidden_states`."""
        hidden, _, per_layer = self.forward(input_ids, segment_ids, positions, keep_hidden_states=True)
        return [per_layer[i] for i in range(self.config.num_layers)] + [hidden]

    def decode(self, input_ids, cache: Cache, segment_ids=None, positions=None) -> tuple[jax.Array, Cache]:
        """Logits of `input_ids` appended after what `cache` holds, and the updated cache."""
        hidden, cache, _ = self.forward(input_ids, segment_ids, positions, cache=cache)
        return self.logits(hidden), cache

    def prefill(self, input_ids, cache: Cache, segment_ids=None, positions=None) -> tuple[jax.Array, Cache]:
        """`decode` of a prompt into an EMPTY cache: its attention is a whole sequence's, so the configured
        kernel (`config.attention`) computes it, and the keys and values are written into the cache."""
        hidden, cache, _ = self.forward(input_ids, segment_ids, positions, cache=cache, whole_sequence=True)
        return self.logits(hidden), cache

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> Cache:
        """An empty KV cache for `max_length` tokens (slots with segment 0 are never attended)."""
        cfg = self.config
        dtype = dtype or _dtype(cfg.compute_dtype)
        shape = (cfg.num_layers, batch_size, max_length, cfg.num_kv_heads, cfg.head_dim)
        return {
            "k": jnp.zeros(shape, dtype),
            "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch_size, max_length), jnp.int32),
            "index": jnp.zeros((), jnp.int32),
        }

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [batch, length, hidden] in the compute dtype (a gather from the float32 table)."""
        return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(_dtype(self.config.compute_dtype))

    def logits(self, hidden: jax.Array) -> jax.Array:
        dtype = _dtype(self.config.compute_dtype)
        if self.lm_head is None:
            head, spec = self.embed_tokens[...], "btd,vd->btv"
        else:
            head, spec = self.lm_head.kernel[...], "btd,dv->btv"
        return precision.einsum(spec, hidden.astype(dtype), head.astype(dtype), jnp.float32)

    def forward(
        self, input_ids, segment_ids=None, positions=None, cache=None, keep_hidden_states=False, whole_sequence=False
    ):
        """Final normed hidden states, the updated cache (or None) and, if asked, every layer's input.

        `whole_sequence` (with an empty `cache`): the tokens attend only to each other, through the kernel.
        """
        batch, length = input_ids.shape
        start = cache["index"] if cache is not None else 0
        query_slots = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))
        segment_ids = jnp.ones((batch, length), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
        positions = query_slots if positions is None else positions
        visible, layer_caches = segment_ids, None
        if cache is not None:
            key_segments = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids, (0, start))
            key_slots = jnp.broadcast_to(jnp.arange(key_segments.shape[1], dtype=jnp.int32), key_segments.shape)
            if not whole_sequence:
                visible = attention.attention_mask(query_slots, key_slots, segment_ids, key_segments)
            layer_caches = {"k": cache["k"], "v": cache["v"]}
        x = self.embed(input_ids)
        x, layer_caches, per_layer = self._run_layers(x, positions, visible, layer_caches, start, keep_hidden_states)
        if cache is not None:
            cache = {
                "k": layer_caches["k"],
                "v": layer_caches["v"],
                "segment_ids": key_segments,
                "index": start + length,
            }
        return self.norm(x), cache, per_layer

    def _run_layers(self, x, positions, visible, caches, start, keep_hidden_states):
        """All decoder layers, scanned or unrolled; per-layer caches and inputs stacked on axis 0."""
        graphdef, kernels, rest = nnx.split(self.layers, nnx.PathContains("kernel"), ...)
        # One cast of the stacked kernels before the loop: cast inside it, each layer's compute-dtype copy
        # would also be stacked as a residual for the backward pass.
        kernels = jax.tree.map(lambda kernel: kernel.astype(_dtype(self.config.compute_dtype)), kernels)
        state = (kernels, rest)

        def body(carry, layer_inputs):
            layer_state, layer_cache = layer_inputs
            if layer_cache is not None:
                layer_cache = {**layer_cache, "index": start}
            out, layer_cache = nnx.merge(graphdef, *layer_state)(carry, positions, visible, layer_cache)
            if layer_cache is not None:
                layer_cache = {"k": layer_cache["k"], "v": layer_cache["v"]}
            return out, (layer_cache, carry if keep_hidden_states else None)

        if self.config.remat_policy != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[self.config.remat_policy])
        if self.config.scan_layers:
            x, (caches, per_layer) = jax.lax.scan(body, x, (state, caches))
            return x, caches, per_layer
        outputs = []
        for index in range(self.config.num_layers):
            x, output = body(x, jax.tree.map(lambda leaf, i=index: leaf[i], (state, caches)))
            outputs.append(output)
        caches, per_layer = jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)
        return x, caches, per_layer


FAMILY = weights.Family(Qwen2, ModelConfig, config_file="model_config.json", config_item="model_config")


def init_model(config: ModelConfig, seed: int = 0) -> Qwen2:
    """A randomly initialised model (normal(0.02) weights, zero biases, unit norms, as transformers does)."""
    return weights.init_model(FAMILY, config, seed)


def abstract_model(config: ModelConfig) -> Qwen2:
    """The model with shape-only parameters: nothing allocated."""
    return weights.abstract_model(FAMILY, config)


def param_shapes(config: ModelConfig) -> dict[str, Any]:
    """Pure-dict tree of `jax.ShapeDtypeStruct`s of the parameters."""
    return weights.param_shapes(FAMILY, config)


def count_params(config: ModelConfig) -> int:
    """Parameter count from abstract shapes (no weights allocated)."""
    return weights.count_params(FAMILY, config)


get_params = weights.get_params


def model_from_params(config: ModelConfig, params: dict[str, Any]) -> Qwen2:
    """A model holding `params` (a pure dict as `get_params` returns), built without random init."""
    return weights.model_from_params(FAMILY, config, params)
