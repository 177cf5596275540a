"""The HuBERT speech encoder in Flax NNX, laid out like `transformers`' HubertModel.

Covers both convolutional front ends (`group`: hubert-base style, a per-channel norm over time on the first
conv; `layer`: a per-frame layer norm after every conv), any stack of conv strides (mHuBERT-25Hz adds one
stride-2 layer: 640 samples = 40 ms per frame), the weight-normed grouped positional convolution, the
post-norm and the pre-norm ("stable layer norm") transformer stacks, and the output of any layer in HF's
`hidden_states` numbering (index 0 = the input of the first layer, index i = the output of layer i).

Batches may be right-padded: given per-item sample `lengths`, the group norm's statistics, the positional
convolution and attention see only each item's own frames, so an item's features do not depend on what else
is in the batch. Parameters are float32; matmuls and convolutions run in `config.compute_dtype` with float32
accumulation, and norms, softmax and the residual stream stay float32.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax.models import weights
from slam_jax.paths import Path
from slam_jax.settings import Settings, setting

CONFIG_FILE = "encoder_config.json"
PARAMS_DIR = weights.PARAMS_DIR
FRONT_ENDS = ("group", "layer")
COMPUTE_DTYPES = ("float32", "bfloat16")
_INIT_STD = 0.02
_GROUP_NORM_EPS = 1e-5  # torch.nn.GroupNorm / LayerNorm defaults used by the conv front end


@dataclasses.dataclass(frozen=True)
class HubertConfig(Settings):
    """Architecture of a HuBERT encoder plus its execution knobs (compute dtype, layer scan)."""

    hidden_size: int = setting(768, minimum=1)
    num_layers: int = setting(12, minimum=1)
    num_heads: int = setting(12, minimum=1)
    intermediate_size: int = setting(3072, minimum=1)
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = setting("group", choices=FRONT_ENDS)
    feat_proj_layer_norm: bool = True
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = setting(128, minimum=1)
    num_conv_pos_embedding_groups: int = setting(16, minimum=1)
    layer_norm_eps: float = 1e-5
    compute_dtype: str = setting("float32", choices=COMPUTE_DTYPES)
    scan_layers: bool = True
    # > 0: the conv front end runs over windows of this many output frames (same result); 0 = no windows
    conv_chunk_frames: int = setting(0, minimum=0)

    def validate(self) -> None:
        """The conv stack is described layer by layer, and the heads and pos-conv groups split the width."""
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError(
                f"{self._source}: conv_dim/conv_kernel/conv_stride lengths differ: "
                f"{self.conv_dim}, {self.conv_kernel}, {self.conv_stride}"
            )
        if self.hidden_size % self.num_heads or self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"{self._source}.hidden_size={self.hidden_size}: must divide by num_heads={self.num_heads} "
                f"and num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def frame_samples(self) -> int:
        """Input samples per output frame: the product of the conv strides (320 = 20 ms, 640 = 40 ms at 16 kHz)."""
        return math.prod(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        """Input samples that one output frame of the conv front end sees (400 for hubert-base, 720 at 25 Hz)."""
        field = 1
        for kernel, stride in zip(reversed(self.conv_kernel), reversed(self.conv_stride), strict=True):
            field = (field - 1) * stride + kernel
        return field

    def num_frames(self, num_samples):
        """Frames the conv front end makes of `num_samples` (int or integer array): HF's output-length rule."""
        frames = np.asarray(num_samples, np.int64)
        for kernel, stride in zip(self.conv_kernel, self.conv_stride, strict=True):
            frames = np.maximum((frames - kernel) // stride + 1, 0)
        return int(frames) if frames.ndim == 0 else frames


def hubert_base(**overrides) -> HubertConfig:
    """facebook/hubert-base-ls960: 12 layers x 768, group-norm front end, 50 Hz (320 samples per frame)."""
    return HubertConfig(**overrides)


def mhubert_25hz(**overrides) -> HubertConfig:
    """slprl/mhubert-base-25hz (the Slam tokeniser): hubert-base plus one stride-2 conv, 25 Hz (640 samples)."""
    values = dict(conv_dim=(512,) * 8, conv_kernel=(10, 3, 3, 3, 3, 2, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2, 2))
    return HubertConfig(**{**values, **overrides})


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """Layer norm over the last axis in float32 (biased variance, as torch)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(variance + eps) * scale + bias


def masked_group_norm(x, scale, bias, frame_mask, eps: float) -> jax.Array:
    """GroupNorm with one group per channel: statistics over each item's valid frames only.

    x: [batch, frames, channels]; frame_mask: [batch, frames] (all True = torch's GroupNorm exactly).
    """
    weights = frame_mask.astype(jnp.float32)[..., None]
    count = jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1.0)
    mean = jnp.sum(x * weights, axis=1, keepdims=True) / count
    variance = jnp.sum(jnp.square(x - mean) * weights, axis=1, keepdims=True) / count
    return (x - mean) * jax.lax.rsqrt(variance + eps) * scale + bias


def group_norm_affine(waveforms, lengths, kernel, bias, stride: int, dtype, scale, shift, eps: float):
    """The first conv's masked group norm as a per-item affine map (y * a + b), from the input alone.

    The first conv has one input channel and is linear, so its output's per-channel mean and variance over an
    item's valid frames follow from the mean and covariance of the `width` input samples under each frame:
    mean = mu . w (+ bias), var = w' C w. The same statistics as `masked_group_norm` on the conv output,
    without that [batch, frames, channels] output in memory. waveforms [batch, samples]; lengths [batch] samples;
    kernel [width, 1, out]. Returns (a, b), each [batch, out].
    """
    width = kernel.shape[0]
    frames = (waveforms.shape[1] - width) // stride + 1
    x = waveforms.astype(dtype).astype(jnp.float32)  # the values the conv multiplies
    patches = x[:, jnp.arange(frames)[:, None] * stride + jnp.arange(width)[None, :]]  # [batch, frames, width]
    valid = (jnp.arange(frames)[None, :] < (lengths[:, None] - width) // stride + 1).astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid, axis=1, keepdims=True), 1.0)
    mu = jnp.einsum("btk,bt->bk", patches, valid) / count
    centred = (patches - mu[:, None, :]) * valid[..., None]
    covariance = jnp.einsum("btk,btl->bkl", centred, centred) / count[..., None]
    w = kernel.astype(dtype).astype(jnp.float32)[:, 0, :]
    mean = mu @ w + (0.0 if bias is None else bias)
    variance = jnp.einsum("kc,bkl,lc->bc", w, covariance, w)
    a = scale * jax.lax.rsqrt(variance + eps)
    return a, shift - mean * a


class LayerNorm(nnx.Module):
    """Affine layer norm over the last axis (float32)."""

    def __init__(self, features: int, eps: float):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.scale[...], self.bias[...], self.eps)


class Dense(nnx.Module):
    """x @ kernel + bias: float32 weights, matmul in the compute dtype, float32 result."""

    def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(_INIT_STD)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        return jnp.dot(x.astype(self.dtype), kernel, preferred_element_type=jnp.float32) + self.bias[...]


def conv1d(x: jax.Array, kernel: jax.Array, stride: int, dtype, padding=((0, 0),), groups: int = 1) -> jax.Array:
    """1-D convolution, channels last: x [batch, time, in], kernel [width, in / groups, out], float32 result."""
    return jax.lax.conv_general_dilated(
        x.astype(dtype),
        kernel.astype(dtype),
        window_strides=(stride,),
        padding=padding,
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=groups,
        preferred_element_type=jnp.float32,
    )


class ConvLayer(nnx.Module):
    """One front-end layer: strided conv, then (per the front end) a norm, then GELU."""

    def __init__(self, config: HubertConfig, index: int, *, rngs: nnx.Rngs):
        in_dim = config.conv_dim[index - 1] if index else 1
        out_dim = config.conv_dim[index]
        width = config.conv_kernel[index]
        init = jax.nn.initializers.he_normal()
        self.kernel = nnx.Param(init(rngs.params(), (width, in_dim, out_dim), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_dim,), jnp.float32)) if config.conv_bias else None
        has_norm = config.feat_extract_norm == "layer" or index == 0
        self.layer_norm = LayerNorm(out_dim, _GROUP_NORM_EPS) if has_norm else None
        self.stride = config.conv_stride[index]
        self.group_norm = config.feat_extract_norm == "group"
        self.dtype = _dtype(config.compute_dtype)

    def __call__(self, x: jax.Array, frame_mask: jax.Array | None = None, group_affine=None) -> jax.Array:
        """x [batch, time, in] -> [batch, frames, out]. The group norm takes its statistics over the frames that
        `frame_mask` marks valid, or applies the given per-item `group_affine` (a, b) [batch, out] instead."""
        y = conv1d(x, self.kernel[...], self.stride, self.dtype)
        if self.bias is not None:
            y = y + self.bias[...]
        if self.layer_norm is not None:
            scale, bias = self.layer_norm.scale[...], self.layer_norm.bias[...]
            if not self.group_norm:
                y = layer_norm(y, scale, bias, _GROUP_NORM_EPS)
            elif group_affine is not None:
                y = y * group_affine[0][:, None, :] + group_affine[1][:, None, :]
            else:
                y = masked_group_norm(y, scale, bias, frame_mask, _GROUP_NORM_EPS)
        return jax.nn.gelu(y, approximate=False)

    def group_affine(self, waveforms: jax.Array, lengths: jax.Array):
        """This (first, group-norm) layer's norm as a per-item affine map: see `group_norm_affine`."""
        norm = self.layer_norm
        bias = None if self.bias is None else self.bias[...]
        return group_norm_affine(
            waveforms,
            lengths,
            self.kernel[...],
            bias,
            self.stride,
            self.dtype,
            norm.scale[...],
            norm.bias[...],
            _GROUP_NORM_EPS,
        )


class PositionalConv(nnx.Module):
    """Grouped 'same' convolution over frames with a weight-normed kernel (norm per kernel tap), then GELU."""

    def __init__(self, config: HubertConfig, *, rngs: nnx.Rngs):
        width, groups, d = config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups, config.hidden_size
        init = jax.nn.initializers.normal(_INIT_STD)
        self.weight_v = nnx.Param(init(rngs.params(), (width, d // groups, d), jnp.float32))
        self.weight_g = nnx.Param(jnp.ones((width,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((d,), jnp.float32))
        self.groups = groups
        self.dtype = _dtype(config.compute_dtype)

    def kernel(self) -> jax.Array:
        """g * v / ||v||, the norm taken over all axes but the tap axis (torch weight_norm with dim=2)."""
        v = self.weight_v[...]
        norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True))
        return self.weight_g[...][:, None, None] * v / norm

    def __call__(self, x: jax.Array) -> jax.Array:
        width = self.weight_v.shape[0]
        padding = ((width // 2, width // 2 - (1 - width % 2)),)  # HF pads width//2 and drops the last frame if even
        y = conv1d(x, self.kernel(), 1, self.dtype, padding=padding, groups=self.groups)
        return jax.nn.gelu(y + self.bias[...], approximate=False)


class Attention(nnx.Module):
    """Bidirectional multi-head self-attention with biases everywhere; padded keys are never attended."""

    def __init__(self, config: HubertConfig, *, rngs: nnx.Rngs):
        dtype, d = _dtype(config.compute_dtype), config.hidden_size
        self.q_proj = Dense(d, d, dtype=dtype, rngs=rngs)
        self.k_proj = Dense(d, d, dtype=dtype, rngs=rngs)
        self.v_proj = Dense(d, d, dtype=dtype, rngs=rngs)
        self.out_proj = Dense(d, d, dtype=dtype, rngs=rngs)
        self.num_heads, self.head_dim, self.dtype = config.num_heads, config.head_dim, dtype

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        batch, length, _ = x.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = (self.q_proj(x) * self.head_dim**-0.5).reshape(shape).astype(self.dtype)
        k = self.k_proj(x).reshape(shape).astype(self.dtype)
        v = self.v_proj(x).reshape(shape).astype(self.dtype)
        scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhts,bshd->bthd", probs, v, preferred_element_type=jnp.float32)
        return self.out_proj(out.reshape(batch, length, -1))


class FeedForward(nnx.Module):
    """Dense -> GELU -> dense."""

    def __init__(self, config: HubertConfig, *, rngs: nnx.Rngs):
        dtype = _dtype(config.compute_dtype)
        self.intermediate_dense = Dense(config.hidden_size, config.intermediate_size, dtype=dtype, rngs=rngs)
        self.output_dense = Dense(config.intermediate_size, config.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.output_dense(jax.nn.gelu(self.intermediate_dense(x), approximate=False))


class EncoderLayer(nnx.Module):
    """A transformer block: post-norm (hubert-base) or pre-norm (`do_stable_layer_norm`, hubert-large)."""

    def __init__(self, config: HubertConfig, *, rngs: nnx.Rngs):
        self.attention = Attention(config, rngs=rngs)
        self.layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.feed_forward = FeedForward(config, rngs=rngs)
        self.final_layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.pre_norm = config.do_stable_layer_norm

    def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
        if self.pre_norm:
            x = x + self.attention(self.layer_norm(x), key_mask)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, key_mask))
        return self.final_layer_norm(x + self.feed_forward(x))


class FeatureProjection(nnx.Module):
    """Optional layer norm of the conv features, then a projection to the model width."""

    def __init__(self, config: HubertConfig, *, rngs: nnx.Rngs):
        conv_out = config.conv_dim[-1]
        self.layer_norm = LayerNorm(conv_out, config.layer_norm_eps) if config.feat_proj_layer_norm else None
        self.projection = Dense(conv_out, config.hidden_size, dtype=_dtype(config.compute_dtype), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.projection(self.layer_norm(x) if self.layer_norm is not None else x)


class Hubert(nnx.Module):
    """HuBERT: conv front end, feature projection, positional conv and the transformer stack."""

    def __init__(self, config: HubertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.conv_layers = nnx.List([ConvLayer(config, index, rngs=rngs) for index in range(len(config.conv_dim))])
        self.feature_projection = FeatureProjection(config, rngs=rngs)
        self.pos_conv_embed = PositionalConv(config, rngs=rngs)
        self.layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.layers = weights.stacked_layers(EncoderLayer, config, config.num_layers, rngs)

    def __call__(self, waveforms: jax.Array, lengths: jax.Array | None = None, layer: int | None = None):
        """`hidden_states[layer]` (default: the last) [batch, frames, hidden] and the valid-frame mask.

        waveforms: [batch, samples] float; lengths: [batch] valid samples per row (None = no padding, no mask).
        Only the layers up to `layer` run.
        """
        layer = self.config.num_layers if layer is None else layer
        if not 0 <= layer <= self.config.num_layers:
            raise ValueError(f"layer {layer} not in [0, {self.config.num_layers}]")
        x, frame_mask = self.embed(waveforms, lengths)
        x, _ = self._run_layers(x, frame_mask, layer, keep_all=False)
        return x, frame_mask

    def hidden_states(self, waveforms: jax.Array, lengths: jax.Array | None = None) -> list[jax.Array]:
        """Every entry of HF's `output_hidden_states`: the input of each layer, then the last layer's output."""
        x, frame_mask = self.embed(waveforms, lengths)
        x, inputs = self._run_layers(x, frame_mask, self.config.num_layers, keep_all=True)
        return [inputs[index] for index in range(self.config.num_layers)] + [x]

    def embed(self, waveforms: jax.Array, lengths: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """The input of the first transformer layer and the [batch, frames] mask of valid frames."""
        batch, samples = waveforms.shape
        lengths = jnp.full((batch,), samples, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
        chunk = self.config.conv_chunk_frames
        if chunk and self.config.num_frames(samples) > chunk:
            x = self._conv_in_windows(waveforms, lengths, chunk)
        else:
            x = self._conv(waveforms, lengths)
        frames = lengths
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride, strict=True):
            frames = jnp.maximum((frames - kernel) // stride + 1, 0)
        frame_mask = jnp.arange(x.shape[1])[None, :] < frames[:, None]
        x = self.feature_projection(x) * frame_mask[..., None]
        x = x + self.pos_conv_embed(x)
        if not self.config.do_stable_layer_norm:
            x = self.layer_norm(x)
        return x, frame_mask

    def _conv(self, waveforms: jax.Array, lengths: jax.Array) -> jax.Array:
        """The conv front end over the whole input: [batch, samples] -> [batch, frames, conv_dim[-1]]."""
        x = waveforms.astype(jnp.float32)[:, :, None]
        for conv_layer, kernel, stride in zip(
            self.conv_layers, self.config.conv_kernel, self.config.conv_stride, strict=True
        ):
            lengths = jnp.maximum((lengths - kernel) // stride + 1, 0)
            frames = (x.shape[1] - kernel) // stride + 1
            x = conv_layer(x, jnp.arange(frames)[None, :] < lengths[:, None])
        return x

    def _conv_in_windows(self, waveforms: jax.Array, lengths: jax.Array, chunk: int) -> jax.Array:
        """`_conv`'s result, computed `chunk` output frames at a time under lax.scan.

        The convs are unpadded, so output frames [c, c + chunk) depend only on the input samples
        [c * hop, (c + chunk - 1) * hop + receptive_field): each window is exact. The group norm's statistics
        come from the whole input first (`group_norm_affine`). A window's buffers stay in cache, where the whole
        input's first conv output (512 channels at 3,200 frames per second) does not.
        """
        config = self.config
        batch, samples = waveforms.shape
        hop, total = config.frame_samples, config.num_frames(samples)
        count = -(-total // chunk)
        window = (chunk - 1) * hop + config.receptive_field
        padded = jnp.pad(
            waveforms.astype(jnp.float32), ((0, 0), (0, max((count - 1) * chunk * hop + window - samples, 0)))
        )
        first = self.conv_layers[0]
        affine = first.group_affine(waveforms, lengths) if first.group_norm else None

        def body(carry, start):
            x = jax.lax.dynamic_slice_in_dim(padded, start, window, axis=1)[:, :, None]
            x = first(x, group_affine=affine)
            for conv_layer in self.conv_layers[1:]:
                x = conv_layer(x)
            return carry, x

        _, windows = jax.lax.scan(body, None, jnp.arange(count) * (chunk * hop))  # [count, batch, chunk, out]
        return jnp.moveaxis(windows, 0, 1).reshape(batch, count * chunk, -1)[:, :total]

    def _run_layers(self, x, key_mask, depth: int, keep_all: bool):
        """The first `depth` layers, scanned or unrolled; with `keep_all`, every layer's input stacked on axis 0."""
        graphdef, state = nnx.split(self.layers)
        state = jax.tree.map(lambda leaf: leaf[:depth], state)

        def body(carry, layer_state):
            return nnx.merge(graphdef, layer_state)(carry, key_mask), carry if keep_all else None

        if self.config.scan_layers:
            return jax.lax.scan(body, x, state)
        inputs = []
        for index in range(depth):
            x, layer_input = body(x, jax.tree.map(lambda leaf, i=index: leaf[i], state))
            inputs.append(layer_input)
        return x, (jnp.stack(inputs) if keep_all and inputs else None)


FAMILY = weights.Family(Hubert, HubertConfig, CONFIG_FILE, noun="encoder")


def init_model(config: HubertConfig, seed: int = 0) -> Hubert:
    """A randomly initialised encoder (for shapes and benchmarks; real weights come from conversion)."""
    return weights.init_model(FAMILY, config, seed)


def abstract_model(config: HubertConfig) -> Hubert:
    """The encoder with shape-only parameters: nothing allocated."""
    return weights.abstract_model(FAMILY, config)


def param_shapes(config: HubertConfig) -> dict[str, Any]:
    """Pure-dict tree of `jax.ShapeDtypeStruct`s of the parameters."""
    return weights.param_shapes(FAMILY, config)


get_params = weights.get_params


def model_from_params(config: HubertConfig, params: dict[str, Any]) -> Hubert:
    """An encoder holding `params` (a pure dict as `get_params` returns), built without random init."""
    return weights.model_from_params(FAMILY, config, params)


def check_shapes(config: HubertConfig, params: dict[str, Any]) -> None:
    """Raise a one-line ValueError naming the parameters that do not fit `config`."""
    weights.check_shapes(FAMILY, config, params)


def is_encoder_dir(path: str | Path) -> bool:
    """A folder holding `encoder_config.json` and `params/`."""
    return weights.is_model_dir(FAMILY, path)


def save_encoder(directory: str | Path, config: HubertConfig, params: dict[str, Any], overwrite: bool = False) -> Path:
    """Write `encoder_config.json` + Orbax `params/` atomically; refuses a non-empty dir unless `overwrite`."""
    return weights.save_model_dir(FAMILY, directory, config, params, overwrite=overwrite)


def load_encoder(directory: str | Path, **config_overrides) -> Hubert:
    """The encoder saved in `directory` (e.g. by conversion.hubert_to_flax), with optional config overrides."""
    return weights.load_model(FAMILY, directory, **config_overrides)
