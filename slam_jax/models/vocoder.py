"""The unit vocoder, CodeHiFiGAN (textlesslib's unit HiFi-GAN) in Flax NNX, and its Python API `load_vocoder`.

Units become speech as in the reference (slamkit's `vocoder_hubert_25`: textlesslib's `CodeHiFiGANVocoder`
with the mhubert-base-25hz + 500-unit k-means checkpoint): each unit id looks up an embedding; an optional
duration predictor (conv, ReLU, layer norm, twice, then a linear head) gives each unit round(exp(x) - 1)
frames, at least 1; optional speaker and style embeddings are appended to every frame; then the HiFi-GAN
generator: a width-7 conv in, per stage a leaky ReLU (slope 0.1), a transposed conv upsampling by the stage's
rate and the mean of the stage's multi-receptive-field residual blocks (type 1: pairs of a dilated and a
plain conv; type 2: single dilated convs), then a leaky ReLU of slope 0.01 (the reference calls
`F.leaky_relu(x)` there, with torch's default slope), a width-7 conv to one channel and tanh.

Weight norm is folded into plain kernels at conversion (`conversion/vocoder_to_flax.py`), as the reference
does before inference (`remove_weight_norm`). Kernels are channels last, [width, in, out]; an upsampling
kernel is stored flipped in time, so that the transposed convolution is a plain convolution of the
zero-stuffed input.

Padding rule: batches are right-padded, with each item's frame count. Every convolution reads zeros past the
ends of its input, so an item of a padded batch gets the waveform it gets alone when, at every convolution,
the input is zero past the item's own end. Hence every convolution's output is multiplied by the item's
mask at that rate before anything reads it (leaky ReLU, ReLU, the residual sums and the mean keep zeros
zero; the duration predictor's layer norm does not, so its output is masked after the norm).
"""

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import parallel
from slam_jax.models import hubert, weights
from slam_jax.paths import Path
from slam_jax.settings import Settings, setting

CONFIG_FILE = "vocoder_config.json"
RESBLOCK_TYPES = ("1", "2")
RESBLOCK_CONVS = {"1": 3, "2": 2}  # dilations per residual block: the reference's ResBlock1 and ResBlock2
LEAKY_SLOPE = 0.1  # HiFi-GAN's LRELU_SLOPE
FINAL_LEAKY_SLOPE = 0.01  # torch's default slope: the reference's last `F.leaky_relu(x)` passes none
EDGE_WIDTH = 7  # the generator's first and last convs
DURATION_WIDTH = 3  # the duration predictor's convs (the reference pads its second conv by 1: width 3 only)
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, the duration predictor's
_KERNEL_STD = 0.01  # the reference's init_weights (random models are for shapes, tests and benchmarks)
_LAYOUT = ("NWC", "WIO", "NWC")
# The reference convolves in float32; GPUs (TF32) and TPUs (one bf16 pass) would otherwise round the operands.
_PRECISION = jax.lax.Precision.HIGHEST
_LENGTH_QUANTUM = 16  # padded lengths are multiples of this, in 4 steps per octave: few compiled shapes
_STEPS_PER_OCTAVE = 4


@dataclasses.dataclass(frozen=True)
class VocoderConfig(Settings):
    """A CodeHiFiGAN's architecture, named as the reference's JSON config names it where it has the key."""

    num_embeddings: int = setting(minimum=1)  # unit ids 0..num_embeddings - 1
    embedding_dim: int = setting(minimum=1)  # unit, speaker and style embeddings alike
    upsample_rates: tuple[int, ...] = setting()
    upsample_kernel_sizes: tuple[int, ...] = setting()
    upsample_initial_channel: int = setting(minimum=1)  # channels after the first conv, halved by every stage
    resblock_kernel_sizes: tuple[int, ...] = setting()
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = setting()
    resblock: str = setting("1", choices=RESBLOCK_TYPES)
    duration_predictor_dim: int = setting(0, minimum=0)  # var_pred_hidden_dim; 0 = no duration predictor
    num_speakers: int = setting(0, minimum=0)  # 0 = no speaker embedding
    num_styles: int = setting(0, minimum=0)  # 0 = no style embedding
    sampling_rate: int = setting(16_000, minimum=1)

    def validate(self) -> None:
        """Stages and residual blocks are described layer by layer, and every layer keeps a valid shape."""
        source, rates, widths = self._source, self.upsample_rates, self.upsample_kernel_sizes
        if not rates or len(rates) != len(widths):
            raise ValueError(f"{source}: upsample_rates {rates} and upsample_kernel_sizes {widths} differ in length")
        for index, (rate, width) in enumerate(zip(rates, widths, strict=True)):
            if rate < 1 or width < rate:
                raise ValueError(
                    f"{source}.upsample_kernel_sizes[{index}]={width}: must be >= upsample_rates[{index}]={rate} >= 1"
                )
        if self.upsample_initial_channel >> len(rates) < 1:
            raise ValueError(
                f"{source}.upsample_initial_channel={self.upsample_initial_channel}: halved by {len(rates)} stages "
                "leaves no channel"
            )
        kernels, dilations = self.resblock_kernel_sizes, self.resblock_dilation_sizes
        if not kernels or len(kernels) != len(dilations):
            raise ValueError(
                f"{source}: resblock_kernel_sizes {kernels} and resblock_dilation_sizes {dilations} differ in length"
            )
        for index, (width, rates_of_block) in enumerate(zip(kernels, dilations, strict=True)):
            if width < 1 or width % 2 == 0:
                raise ValueError(f"{source}.resblock_kernel_sizes[{index}]={width}: must be odd (same-length convs)")
            if len(rates_of_block) != RESBLOCK_CONVS[self.resblock] or min(rates_of_block) < 1:
                raise ValueError(
                    f"{source}.resblock_dilation_sizes[{index}]={list(rates_of_block)}: resblock type "
                    f"{self.resblock} needs {RESBLOCK_CONVS[self.resblock]} dilations >= 1"
                )

    @property
    def input_dim(self) -> int:
        """Channels of a frame before the first conv: the unit embedding, then the speaker's and the style's."""
        return self.embedding_dim * (1 + bool(self.num_speakers) + bool(self.num_styles))

    @property
    def hop_length(self) -> int:
        """Samples per unit frame: the product of the upsampling rates (640 = 40 ms at 16 kHz for 25 Hz units)."""
        return math.prod(self.upsample_rates)

    def stage_channels(self, index: int) -> int:
        """Channels of stage `index`'s output."""
        return self.upsample_initial_channel >> (index + 1)

    def num_samples(self, frames):
        """Samples the generator makes of `frames` frames (int or integer array): frames x hop_length when every
        upsampling kernel and rate differ by an even number, as in the released vocoders."""
        for rate, width in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            frames = upsampled_length(frames, rate, width)
        return frames


def upsampled_length(length, rate: int, width: int):
    """Output length of the reference's ConvTranspose1d(width, stride=rate, padding=(width - rate) // 2)."""
    return (length - 1) * rate - 2 * ((width - rate) // 2) + width


def convolve(x: jax.Array, kernel: jax.Array, padding: tuple[int, int], dilation: int = 1, upsample: int = 1):
    """Channels-last 1-D convolution, x [batch, time, in] * kernel [width, in, out]; `upsample` > 1 convolves
    the input with `upsample - 1` zeros stuffed between its frames (a transposed convolution's form)."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1,),
        padding=(padding,),
        lhs_dilation=(upsample,),
        rhs_dilation=(dilation,),
        dimension_numbers=_LAYOUT,
        precision=_PRECISION,
    )


def frame_mask(lengths: jax.Array, size: int) -> jax.Array:
    """[batch, size, 1] float32: 1 on each item's first `lengths` frames, 0 on its padding."""
    return (jnp.arange(size)[None, :] < lengths[:, None]).astype(jnp.float32)[..., None]


def durations_from_log(log_durations: jax.Array) -> jax.Array:
    """Frames per unit from the duration predictor's output x: round(exp(x) - 1), at least 1 (the reference's
    rule; rounding half to even, as torch.round)."""
    return jnp.maximum(jnp.round(jnp.exp(log_durations) - 1.0), 1.0).astype(jnp.int32)


def _kernel(rngs: nnx.Rngs, shape: tuple[int, ...]) -> nnx.Param:
    return nnx.Param(jax.nn.initializers.normal(_KERNEL_STD)(rngs.params(), shape, jnp.float32))


class Conv(nnx.Module):
    """A same-length conv plus bias: the reference pads (width - 1) * dilation / 2 on each side."""

    def __init__(self, in_features: int, out_features: int, width: int, dilation: int = 1, *, rngs: nnx.Rngs):
        self.kernel = _kernel(rngs, (width, in_features, out_features))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.dilation = dilation

    def __call__(self, x: jax.Array) -> jax.Array:
        side = (self.kernel.shape[0] - 1) * self.dilation // 2
        return convolve(x, self.kernel[...], (side, side), dilation=self.dilation) + self.bias[...]


class Upsample(nnx.Module):
    """The reference's ConvTranspose1d(width, stride=rate, padding=(width - rate) // 2), as a convolution of the
    zero-stuffed input with the time-flipped kernel."""

    def __init__(self, in_features: int, out_features: int, width: int, rate: int, *, rngs: nnx.Rngs):
        self.kernel = _kernel(rngs, (width, in_features, out_features))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.rate = rate

    def __call__(self, x: jax.Array) -> jax.Array:
        width = self.kernel.shape[0]
        side = width - 1 - (width - self.rate) // 2
        return convolve(x, self.kernel[...], (side, side), upsample=self.rate) + self.bias[...]


class ResBlock1(nnx.Module):
    """HiFi-GAN's residual block type 1: per dilation, x += conv(lrelu(conv_dilated(lrelu(x))))."""

    def __init__(self, channels: int, width: int, dilations: tuple[int, ...], *, rngs: nnx.Rngs):
        self.convs1 = nnx.List([Conv(channels, channels, width, dilation, rngs=rngs) for dilation in dilations])
        self.convs2 = nnx.List([Conv(channels, channels, width, rngs=rngs) for _ in dilations])

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        for dilated, plain in zip(self.convs1, self.convs2, strict=True):
            step = dilated(jax.nn.leaky_relu(x, LEAKY_SLOPE)) * mask
            x = x + plain(jax.nn.leaky_relu(step, LEAKY_SLOPE)) * mask
        return x


class ResBlock2(nnx.Module):
    """HiFi-GAN's residual block type 2: per dilation, x += conv_dilated(lrelu(x))."""

    def __init__(self, channels: int, width: int, dilations: tuple[int, ...], *, rngs: nnx.Rngs):
        self.convs = nnx.List([Conv(channels, channels, width, dilation, rngs=rngs) for dilation in dilations])

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        for conv in self.convs:
            x = x + conv(jax.nn.leaky_relu(x, LEAKY_SLOPE)) * mask
        return x


class Stage(nnx.Module):
    """One upsampling stage: leaky ReLU, transposed conv, then the mean of the residual blocks."""

    def __init__(self, config: VocoderConfig, index: int, *, rngs: nnx.Rngs):
        channels, rate = config.stage_channels(index), config.upsample_rates[index]
        in_channels = config.upsample_initial_channel >> index
        self.upsample = Upsample(in_channels, channels, config.upsample_kernel_sizes[index], rate, rngs=rngs)
        block = ResBlock1 if config.resblock == "1" else ResBlock2
        self.resblocks = nnx.List(
            [
                block(channels, width, dilations, rngs=rngs)
                for width, dilations in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)
            ]
        )

    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [batch, frames, in] (zero past each item's end) -> [batch, frames', out] and the new lengths."""
        lengths = upsampled_length(lengths, self.upsample.rate, self.upsample.kernel.shape[0])
        x = self.upsample(jax.nn.leaky_relu(x, LEAKY_SLOPE))
        mask = frame_mask(lengths, x.shape[1])
        x = x * mask
        return sum(block(x, mask) for block in self.resblocks) / len(self.resblocks), lengths


class DurationPredictor(nnx.Module):
    """The reference's VariancePredictor at inference (dropout off): log(1 + frames) per unit."""

    def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv(in_features, hidden, DURATION_WIDTH, rngs=rngs)
        self.layer_norm1 = hubert.LayerNorm(hidden, LAYER_NORM_EPS)
        self.conv2 = Conv(hidden, hidden, DURATION_WIDTH, rngs=rngs)
        self.layer_norm2 = hubert.LayerNorm(hidden, LAYER_NORM_EPS)
        self.proj = hubert.Dense(hidden, 1, dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x [batch, units, in] (zero past each item's end) -> [batch, units] float32."""
        hidden = self.layer_norm1(jax.nn.relu(self.conv1(x))) * mask
        hidden = self.layer_norm2(jax.nn.relu(self.conv2(hidden)))
        return self.proj(hidden)[..., 0]


class CodeHiFiGAN(nnx.Module):
    """Embeddings, the optional duration predictor and the HiFi-GAN generator."""

    def __init__(self, config: VocoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        embedding = jax.nn.initializers.normal(1.0)  # torch.nn.Embedding's init
        dim = config.embedding_dim
        self.unit_embedding = nnx.Param(embedding(rngs.params(), (config.num_embeddings, dim), jnp.float32))
        self.speaker_embedding = (
            nnx.Param(embedding(rngs.params(), (config.num_speakers, dim), jnp.float32))
            if config.num_speakers
            else None
        )
        self.style_embedding = (
            nnx.Param(embedding(rngs.params(), (config.num_styles, dim), jnp.float32)) if config.num_styles else None
        )
        hidden = config.duration_predictor_dim
        self.duration_predictor = DurationPredictor(dim, hidden, rngs=rngs) if hidden else None
        self.conv_pre = Conv(config.input_dim, config.upsample_initial_channel, EDGE_WIDTH, rngs=rngs)
        self.stages = nnx.List([Stage(config, index, rngs=rngs) for index in range(len(config.upsample_rates))])
        self.conv_post = Conv(config.stage_channels(len(config.upsample_rates) - 1), 1, EDGE_WIDTH, rngs=rngs)

    def log_durations(self, units: jax.Array, lengths: jax.Array) -> jax.Array:
        """The duration predictor's output [batch, units] for unit ids [batch, units] (each item `lengths` long)."""
        mask = frame_mask(lengths, units.shape[1])
        return self.duration_predictor(self.unit_embedding[...][units] * mask, mask)

    def features(self, units: jax.Array, lengths: jax.Array, speakers: jax.Array, styles: jax.Array) -> jax.Array:
        """[batch, frames, input_dim]: each frame's unit embedding, then the item's speaker and style embeddings
        (where the vocoder has them), zero past each item's end. speakers, styles: [batch] ids."""
        parts = [self.unit_embedding[...][units]]
        for table, ids in ((self.speaker_embedding, speakers), (self.style_embedding, styles)):
            if table is not None:
                parts.append(jnp.broadcast_to(table[...][ids][:, None, :], parts[0].shape))
        return jnp.concatenate(parts, axis=-1) * frame_mask(lengths, units.shape[1])

    def __call__(self, units: jax.Array, lengths: jax.Array, speakers: jax.Array, styles: jax.Array) -> jax.Array:
        """Waveforms [batch, num_samples(frames)] in [-1, 1] of frame units [batch, frames], each item `lengths`
        frames long; an item's samples past `num_samples(its length)` are padding."""
        x = self.conv_pre(self.features(units, lengths, speakers, styles)) * frame_mask(lengths, units.shape[1])
        for stage in self.stages:
            x, lengths = stage(x, lengths)
        return jnp.tanh(self.conv_post(jax.nn.leaky_relu(x, FINAL_LEAKY_SLOPE)))[..., 0]


FAMILY = weights.Family(CodeHiFiGAN, VocoderConfig, CONFIG_FILE, noun="vocoder")


def init_model(config: VocoderConfig, seed: int = 0) -> CodeHiFiGAN:
    """A randomly initialised vocoder (for shapes, tests and benchmarks; real weights come from conversion)."""
    return weights.init_model(FAMILY, config, seed)


def param_shapes(config: VocoderConfig) -> dict[str, Any]:
    """Pure-dict tree of `jax.ShapeDtypeStruct`s of the parameters."""
    return weights.param_shapes(FAMILY, config)


get_params = weights.get_params


def check_shapes(config: VocoderConfig, params: dict[str, Any]) -> None:
    """Raise a one-line ValueError naming the parameters that do not fit `config`."""
    weights.check_shapes(FAMILY, config, params)


def save_vocoder(
    directory: str | Path,
    config: VocoderConfig,
    params: dict[str, Any],
    overwrite: bool = False,
    this_process_only: bool = False,
) -> Path:
    """Write `vocoder_config.json` + Orbax `params/` atomically; refuses a non-empty dir unless `overwrite`;
    `this_process_only`: one process of several writes numpy `params` alone (`weights.save_model_dir`)."""
    return weights.save_model_dir(
        FAMILY, directory, config, params, overwrite=overwrite, this_process_only=this_process_only
    )


@functools.partial(jax.jit, static_argnums=0)
def waveforms(graphdef, state, units, lengths, speakers, styles):
    """Waveforms [rows, samples] of frame units [rows, frames] (each row valid up to its length)."""
    return nnx.merge(graphdef, state)(units, lengths, speakers, styles)


@functools.partial(jax.jit, static_argnums=0)
def unit_durations(graphdef, state, units, lengths):
    """Frames per unit [rows, units] the duration predictor gives deduplicated units [rows, units]."""
    return durations_from_log(nnx.merge(graphdef, state).log_durations(units, lengths))


def bucket_length(length: int) -> int:
    """`length` rounded up to a multiple of 16, then to one of 4 steps per octave: few compiled lengths, at most
    25% padding."""
    quanta = max(1, -(-length // _LENGTH_QUANTUM))
    step = max(1, (1 << (quanta.bit_length() - 1)) // _STEPS_PER_OCTAVE)
    return -(-quanta // step) * step * _LENGTH_QUANTUM


def batches(lengths: Sequence[int], batch_size: int, max_batch_frames: int) -> Iterator[tuple[list[int], int]]:
    """Groups of item indices, longest first, with their padded length. The items of a group share their
    `bucket_length`, so no item is padded past its own bucket, and a group's size is a power of two (few compiled
    shapes, no empty rows): at most `batch_size`, and rows x length at most `max_batch_frames` (one row at least)."""
    by_bucket: dict[int, list[int]] = {}
    for index in sorted(range(len(lengths)), key=lambda index: -lengths[index]):
        by_bucket.setdefault(bucket_length(lengths[index]), []).append(index)
    for padded, members in by_bucket.items():
        cap = max(1, min(batch_size, max_batch_frames // padded))
        while members:
            size = 1 << (min(cap, len(members)).bit_length() - 1)
            yield members[:size], padded
            members = members[size:]


def _pad(sequences: Sequence[np.ndarray], group: list[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    """The group's sequences as [len(group), length] int32 right-padded with 0, and their lengths."""
    batch, lengths = np.zeros((len(group), length), np.int32), np.zeros((len(group),), np.int32)
    for row, index in enumerate(group):
        batch[row, : len(sequences[index])] = sequences[index]
        lengths[row] = len(sequences[index])
    return batch, lengths


def check_ids(values, limit: int, name: str, what: str) -> np.ndarray:
    """`values` as a non-empty 1-D int32 array of ids in 0..limit - 1, or a one-line ValueError naming `name`."""
    try:
        array = np.asarray(values)
    except ValueError:
        raise ValueError(f"{name}: expected a 1-D sequence of {what}") from None
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of {what}, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: empty sequence (needs at least one)")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected integer {what}, got {array.dtype}")
    bad = np.flatnonzero((array < 0) | (array >= limit))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}]={array[bad[0]]}: {what} must be in 0..{limit - 1}")
    return array.astype(np.int32)


def _check_choice(value: int, count: int, name: str) -> int:
    """A speaker or style id: in 0..count - 1, or 0 for a vocoder without that embedding (count 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < max(count, 1):
        having = f"ids 0..{count - 1}" if count else "only 0 (it has no such embedding)"
        raise ValueError(f"{name}={value!r}: this vocoder takes {having}")
    return int(value)


class Vocoder:
    """Unit ids -> float32 waveforms at `sample_rate`: jit-compiled, batched and padded by length internally.

    The interface every unit vocoder of slam_jax offers: `sample_rate`, `hop_length`, `vocode`, `vocode_batch`.
    """

    def __init__(self, model: CodeHiFiGAN, batch_size: int = 8, max_batch_frames: int = 6000, mesh=None):
        self.model = model
        self.batch_size, self.max_batch_frames = batch_size, max_batch_frames
        self.mesh = parallel.local_mesh() if mesh is None else mesh
        self._graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, parallel.replicated(self.mesh))

    @property
    def config(self) -> VocoderConfig:
        return self.model.config

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def hop_length(self) -> int:
        """Samples per unit frame (640 for 25 Hz units at 16 kHz)."""
        return self.config.hop_length

    @property
    def num_units(self) -> int:
        return self.config.num_embeddings

    @property
    def predicts_durations(self) -> bool:
        return self.model.duration_predictor is not None

    def vocode(
        self, units, predict_durations: bool = False, *, durations=None, speaker: int = 0, style: int = 0
    ) -> np.ndarray:
        """The waveform [samples] float32 of one sequence of unit ids (0..K-1).

        Each unit lasts one frame, or `durations[i]` frames (e.g. the run lengths of deduplicated units), or, with
        `predict_durations`, the frames the duration predictor gives it (as the reference, which predicts them
        whenever the vocoder has a predictor). `speaker` and `style` pick the embeddings of a vocoder that has them.
        """
        return self._vocode(
            [units], ["units"], predict_durations, None if durations is None else [durations], [speaker], [style]
        )[0]

    def vocode_batch(
        self, units_list, predict_durations: bool = False, *, durations=None, speakers=None, styles=None
    ) -> list[np.ndarray]:
        """`vocode` of every sequence in `units_list` (with per-sequence `durations`, `speakers`, `styles`);
        each waveform is the one its sequence gets alone."""
        names = [f"units_list[{index}]" for index in range(len(units_list))]
        zeros = [0] * len(units_list)
        speakers, styles = zeros if speakers is None else speakers, zeros if styles is None else styles
        return self._vocode(list(units_list), names, predict_durations, durations, speakers, styles)

    def durations(self, units_list) -> list[np.ndarray]:
        """The frames per unit [units] int32 the duration predictor gives each sequence of `units_list`."""
        if not self.predicts_durations:
            raise ValueError("durations: this vocoder has no duration predictor")
        names = [f"units_list[{index}]" for index in range(len(units_list))]
        return self._predicted(
            [check_ids(units, self.num_units, name, "unit ids") for units, name in zip(units_list, names, strict=True)]
        )

    def _vocode(self, sequences, names, predict_durations, durations, speakers, styles) -> list[np.ndarray]:
        """Check every input first (nothing runs on bad input), then expand units to frames and generate."""
        if not sequences:
            raise ValueError("units_list: empty (needs at least one sequence)")
        if predict_durations and not self.predicts_durations:
            raise ValueError("predict_durations: this vocoder has no duration predictor")
        if predict_durations and durations is not None:
            raise ValueError("durations: give durations or predict_durations, not both")
        for given, name in ((durations, "durations"), (speakers, "speakers"), (styles, "styles")):
            if given is not None and len(given) != len(sequences):
                raise ValueError(f"{name}: {len(given)} entries for {len(sequences)} sequences")
        units = [
            check_ids(sequence, self.num_units, name, "unit ids")
            for sequence, name in zip(sequences, names, strict=True)
        ]
        speakers = np.array([_check_choice(value, self.config.num_speakers, "speaker") for value in speakers], np.int32)
        styles = np.array([_check_choice(value, self.config.num_styles, "style") for value in styles], np.int32)
        if durations is not None:
            durations = [
                self._checked_durations(given, len(unit_ids), name)
                for given, unit_ids, name in zip(durations, units, names, strict=True)
            ]
        elif predict_durations:
            durations = self._predicted(units)
        if durations is not None:
            units = [np.repeat(ids, counts) for ids, counts in zip(units, durations, strict=True)]
        return self._generate(units, speakers, styles)

    @staticmethod
    def _checked_durations(values, count: int, name: str) -> np.ndarray:
        """Frames per unit: `count` integers >= 1."""
        array = np.asarray(values)
        if array.shape != (count,) or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"durations of {name}: expected {count} integers, got {array.dtype} of shape {array.shape}"
            )
        if array.min() < 1:
            raise ValueError(f"durations of {name}[{int(np.argmin(array))}]={array.min()}: must be >= 1")
        return array

    def _predicted(self, units: list[np.ndarray]) -> list[np.ndarray]:
        """Frames per unit of every (checked) sequence, predicted in padded batches."""
        result: list[np.ndarray] = [np.zeros(0, np.int32)] * len(units)
        for group, length in batches([len(ids) for ids in units], self.batch_size, self.max_batch_frames):
            batch, lengths = self._spread(*_pad(units, group, length))
            predicted = np.asarray(unit_durations(self._graphdef, self._state, batch, lengths))
            for row, index in enumerate(group):
                result[index] = predicted[row, : len(units[index])].copy()
        return result

    def _spread(self, *arrays: np.ndarray) -> list[jax.Array]:
        """A batch's arrays with their rows split over the mesh's devices: rows padded to a multiple of the devices
        with copies of the first (computed and dropped; a real row keeps every padded shape valid)."""
        rows = len(arrays[0])
        wanted = -(-rows // parallel.data_parallel_size(self.mesh)) * parallel.data_parallel_size(self.mesh)
        padded = [np.concatenate([array, np.repeat(array[:1], wanted - rows, axis=0)]) for array in arrays]
        return [
            jax.device_put(array, parallel.batch_sharding(self.mesh, trailing_axes=array.ndim - 1)) for array in padded
        ]

    def _generate(self, frames: list[np.ndarray], speakers: np.ndarray, styles: np.ndarray) -> list[np.ndarray]:
        """The waveform of every (checked) sequence of frame units, generated in padded batches."""
        result: list[np.ndarray] = [np.zeros(0, np.float32)] * len(frames)
        for group, length in batches([len(ids) for ids in frames], self.batch_size, self.max_batch_frames):
            inputs = self._spread(*_pad(frames, group, length), speakers[group], styles[group])
            waves = np.asarray(waveforms(self._graphdef, self._state, *inputs))
            for row, index in enumerate(group):
                result[index] = waves[row, : self.config.num_samples(len(frames[index]))].copy()
        return result


def load_vocoder(path: str | Path, batch_size: int = 8) -> Vocoder:
    """The vocoder converted into the folder `path` (by `python -m conversion.vocoder_to_flax`); needs no torch."""
    return Vocoder(weights.load_model(FAMILY, path), batch_size=batch_size)
