"""HiFi-GAN's discriminators in Flax NNX, as the reference trains them (the pip `hifi-gan`'s `models.py`).

The multi-period discriminator (MPD) looks at a waveform folded by each of the periods 2, 3, 5, 7, 11: a
`DiscriminatorP` reflect-pads the waveform on the right to a multiple of its period, reshapes it to
[batch, samples / period, period] and runs width-1-across-periods 2-D convs down the frames (kernel (5, 1),
stride (3, 1) four times, then stride 1; channels 1 -> 32 -> 128 -> 512 -> 1024 -> 1024), a leaky ReLU of slope 0.1
after each, then a (3, 1) conv to one channel (`conv_post`); its scores are that map flattened. The multi-scale
discriminator (MSD) runs three `DiscriminatorS` (1-D grouped convs, channels 1 -> 128 -> ... -> 1024 -> 1) on the
waveform, on it average-pooled once and on it pooled twice (AvgPool1d(4, 2, padding=2), which counts the zero
padding in every mean). Every sub-discriminator returns its scores and its feature maps: each conv's output after
the activation, then `conv_post`'s output.

Parametrisation, as the reference trains (the generator's losses read the feature maps, so they must match
too): every conv is weight-normed (`torch.nn.utils.weight_norm`: kernel = v * (g / ||v||), one magnitude g per
output channel, the norm over every other axis), except the first DiscriminatorS's, which are spectral-normed
(`torch.nn.utils.spectral_norm` in training mode: kernel / sigma, sigma estimated by one power iteration per call
from a persistent vector u, a `SpectralVector`, updated on every call).

Layout: channels last, as the rest of slam_jax. Waveforms are [batch, samples]; a 1-D kernel is [width, in / groups,
out] (torch: [out, in / groups, width]), a 2-D one [height, width, in, out] (torch: [out, in, height, width]).
Feature maps are [batch, frames, period, channels] in a DiscriminatorP (torch: [batch, channels, frames, period])
and [batch, time, channels] in a DiscriminatorS (torch: [batch, channels, time]); the losses are means, which the
layout does not change. Scores are [batch, n] in the reference's flattened order (the channel is 1).

The reference calls each sub-discriminator on the real batch, then on the generated one (`forward(y, y_hat)`); these
modules take one waveform batch per call, so callers call them twice, real first, which advances the spectral
norm's u exactly as the reference does. `split` and `functional_call` run them inside jit / grad and hand back the
updated u's.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LEAKY_SLOPE = 0.1  # HiFi-GAN's LRELU_SLOPE
PERIODS = (2, 3, 5, 7, 11)  # the reference's MultiPeriodDiscriminator
SPECTRAL_EPS = 1e-12  # torch.nn.utils.spectral_norm's default eps (F.normalize's floor on the norm)
# DiscriminatorP: (in, out, stride) of each (5, 1) conv, padded (2, 0); conv_post is (1024, 1, (3, 1)), padded (1, 0).
PERIOD_CONVS = ((1, 32, 3), (32, 128, 3), (128, 512, 3), (512, 1024, 3), (1024, 1024, 1))
PERIOD_WIDTH = 5
# DiscriminatorS: (in, out, width, stride, groups, padding) of each conv; conv_post is Conv1d(1024, 1, 3, padding=1).
SCALE_CONVS = (
    (1, 128, 15, 1, 1, 7),
    (128, 128, 41, 2, 4, 20),
    (128, 256, 41, 2, 16, 20),
    (256, 512, 41, 4, 16, 20),
    (512, 1024, 41, 4, 16, 20),
    (1024, 1024, 41, 1, 16, 20),
    (1024, 1024, 5, 1, 1, 2),
)
# Channels may be divided for small runs (the tests, CPU recipes): every grouped conv keeps whole groups up to 8.
DIVISORS = (1, 2, 4, 8)
GROUPINGS = ("xla", "per_group")  # how a grouped convolution runs (`convolve`)
POOL_WIDTH, POOL_STRIDE, POOL_PADDING = 4, 2, 2  # the MSD's AvgPool1d(4, 2, padding=2)
_LAYOUTS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}
# The reference convolves in float32; GPUs (TF32) and TPUs (one bf16 pass) would otherwise round the operands.
_PRECISION = jax.lax.Precision.HIGHEST

Output = tuple[list[jax.Array], list[list[jax.Array]]]  # (scores per sub-discriminator, their feature maps)


class SpectralVector(nnx.Variable):
    """The spectral norm's persistent left singular vector estimate u [out] (torch's buffer `weight_u`): state,
    not a parameter; every call of a spectral-normed conv replaces it by one power iteration's result."""


def convolve(
    x: jax.Array,
    kernel: jax.Array,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int = 1,
    grouping: str = "xla",
):
    """Channels-last 1-D or 2-D convolution: x [batch, *spatial, in] * kernel [*widths, in / groups, out], zero
    padded `padding[i]` on both ends of spatial axis i, as torch's Conv1d / Conv2d(stride, padding, groups).

    `grouping` says how a grouped convolution (groups > 1) runs; both give the same numbers (float32 rounding):
    "xla" is one convolution with `feature_group_count` (cuDNN's grouped kernels on a GPU; a TPU compiles it faster);
    "per_group" is one ungrouped convolution per group, concatenated: XLA's CPU backend runs it 2-10x faster than its
    grouped convolutions, but compiles it several times longer (docs/vocoder.md)."""
    if groups > 1 and grouping == "per_group":
        inputs, outputs = x.shape[-1] // groups, kernel.shape[-1] // groups
        parts = [
            convolve(
                x[..., g * inputs : (g + 1) * inputs], kernel[..., g * outputs : (g + 1) * outputs], stride, padding
            )
            for g in range(groups)
        ]
        return jnp.concatenate(parts, axis=-1)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=tuple(stride),
        padding=tuple((side, side) for side in padding),
        dimension_numbers=_LAYOUTS[kernel.ndim - 2],
        feature_group_count=groups,
        precision=_PRECISION,
    )


def torch_default_init(rngs: nnx.Rngs, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default Conv init of kernels (kaiming_uniform_ with
    a = sqrt(5)) and of biases alike; fan_in = in / groups x the kernel's widths."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)


def direction_norm(v: jax.Array) -> jax.Array:
    """||v|| per output channel (the last axis), over every other axis: torch's norm_except_dim(v, 2, dim=0)."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))


def normalize(x: jax.Array) -> jax.Array:
    """x / max(||x||, eps), as torch's F.normalize(x, dim=0, eps=1e-12)."""
    return x / jnp.maximum(jnp.linalg.norm(x), SPECTRAL_EPS)


def torch_matrix(kernel: jax.Array) -> jax.Array:
    """A channels-last kernel [*widths, in / groups, out] as torch's weight reshaped to [out, -1], its columns in
    torch's [in / groups, *widths] order (spectral_norm's weight_mat with dim=0)."""
    order = (kernel.ndim - 1, kernel.ndim - 2, *range(kernel.ndim - 2))
    return jnp.transpose(kernel, order).reshape(kernel.shape[-1], -1)


def power_iteration(matrix: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One step of torch's spectral_norm power iteration (n_power_iterations=1, training mode) on W [out, n]:
    v = normalize(W^T u), then u = normalize(W v); returns (u, v), both outside the gradient (torch computes them
    under no_grad)."""
    matrix, u = jax.lax.stop_gradient(matrix), jax.lax.stop_gradient(u)
    v = normalize(jnp.matmul(u, matrix, precision=_PRECISION))
    u = normalize(jnp.matmul(matrix, v, precision=_PRECISION))
    return u, v


class WeightNormConv(nnx.Module):
    """torch's Conv1d / Conv2d under weight_norm: params `v` (the direction, kernel layout [*widths, in / groups,
    out]), `g` [out] (the magnitudes) and `bias` [out]; kernel = v * (g / ||v||) per output channel. Initialised as
    torch's default conv init, then g = ||v|| (so the first kernel is v), as weight_norm sets it."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        widths: tuple[int, ...],
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        groups: int = 1,
        *,
        grouping: str = "xla",
        rngs: nnx.Rngs,
    ):
        fan_in = in_features // groups * math.prod(widths)
        v = torch_default_init(rngs, (*widths, in_features // groups, out_features), fan_in)
        self.v = nnx.Param(v)
        self.g = nnx.Param(direction_norm(v))
        self.bias = nnx.Param(torch_default_init(rngs, (out_features,), fan_in))
        self.stride, self.padding, self.groups, self.grouping = tuple(stride), tuple(padding), groups, grouping

    def kernel(self) -> jax.Array:
        """The effective kernel: v * (g / ||v||) (torch's _weight_norm; no epsilon)."""
        v = self.v[...]
        return v * (self.g[...] / direction_norm(v))

    def __call__(self, x: jax.Array) -> jax.Array:
        return convolve(x, self.kernel(), self.stride, self.padding, self.groups, self.grouping) + self.bias[...]


class SpectralNormConv(nnx.Module):
    """torch's Conv1d / Conv2d under spectral_norm in training mode: params `kernel` (torch's weight_orig, layout
    [*widths, in / groups, out]) and `bias`, state `u` [out] (a SpectralVector, torch's weight_u).

    Every call runs one power iteration on W = the kernel as torch's [out, -1] matrix: v = normalize(W^T u),
    u = normalize(W v), stores the new u, and convolves with kernel / sigma, sigma = u . (W v), with u and v
    constants for the gradient (so sigma's gradient is u v^T, as torch's)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        widths: tuple[int, ...],
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        groups: int = 1,
        *,
        grouping: str = "xla",
        rngs: nnx.Rngs,
    ):
        fan_in = in_features // groups * math.prod(widths)
        self.kernel = nnx.Param(torch_default_init(rngs, (*widths, in_features // groups, out_features), fan_in))
        self.bias = nnx.Param(torch_default_init(rngs, (out_features,), fan_in))
        self.u = SpectralVector(normalize(jax.random.normal(rngs.params(), (out_features,), jnp.float32)))
        self.stride, self.padding, self.groups, self.grouping = tuple(stride), tuple(padding), groups, grouping

    def normalized_kernel(self) -> jax.Array:
        """kernel / sigma after one power iteration; updates `u` (call once per forward, as torch's pre-hook)."""
        kernel = self.kernel[...]
        matrix = torch_matrix(kernel)
        u, v = power_iteration(matrix, self.u[...])
        self.u[...] = u
        sigma = jnp.dot(u, jnp.matmul(matrix, v, precision=_PRECISION), precision=_PRECISION)
        return kernel / sigma

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.normalized_kernel()
        return convolve(x, kernel, self.stride, self.padding, self.groups, self.grouping) + self.bias[...]


def _run(convs: nnx.List, conv_post: nnx.Module, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """The reference's forward after the input layout: leaky ReLU(conv(x)) per conv, each kept as a feature map,
    then conv_post (also kept); the scores are conv_post's output flattened to [batch, n]."""
    fmap = []
    for conv in convs:
        x = jax.nn.leaky_relu(conv(x), LEAKY_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return x.reshape(x.shape[0], -1), fmap


class DiscriminatorP(nnx.Module):
    """The reference's DiscriminatorP(period) (weight norm): feature maps [batch, frames, period, channels]."""

    def __init__(self, period: int, divisor: int = 1, *, rngs: nnx.Rngs):
        self.period = period
        side = (PERIOD_WIDTH - 1) // 2  # the reference's get_padding(5, 1)
        self.convs = nnx.List(
            [
                WeightNormConv(
                    _divided(cin, divisor), cout // divisor, (PERIOD_WIDTH, 1), (stride, 1), (side, 0), rngs=rngs
                )
                for cin, cout, stride in PERIOD_CONVS
            ]
        )
        self.conv_post = WeightNormConv(PERIOD_CONVS[-1][1] // divisor, 1, (3, 1), (1, 1), (1, 0), rngs=rngs)

    def fold(self, y: jax.Array) -> jax.Array:
        """y [batch, samples] -> [batch, frames, period, 1]: reflect-padded on the right to a multiple of the period
        (torch's F.pad(mode="reflect"): the edge sample is not repeated), then row-major (frame, period)."""
        extra = -y.shape[1] % self.period
        if extra:
            y = jnp.pad(y, ((0, 0), (0, extra)), mode="reflect")
        return y.reshape(y.shape[0], -1, self.period, 1)

    def __call__(self, y: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """y [batch, samples] -> scores [batch, frames' x period] and the 6 feature maps."""
        return _run(self.convs, self.conv_post, self.fold(y))


class DiscriminatorS(nnx.Module):
    """The reference's DiscriminatorS (weight norm, or spectral norm with `use_spectral_norm`): feature maps
    [batch, time, channels]."""

    def __init__(self, use_spectral_norm: bool = False, divisor: int = 1, grouping: str = "xla", *, rngs: nnx.Rngs):
        conv = SpectralNormConv if use_spectral_norm else WeightNormConv
        self.convs = nnx.List(
            [
                conv(
                    _divided(cin, divisor),
                    cout // divisor,
                    (width,),
                    (stride,),
                    (side,),
                    groups,
                    grouping=grouping,
                    rngs=rngs,
                )
                for cin, cout, width, stride, groups, side in SCALE_CONVS
            ]
        )
        self.conv_post = conv(SCALE_CONVS[-1][1] // divisor, 1, (3,), (1,), (1,), rngs=rngs)

    def __call__(self, y: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """y [batch, samples] -> scores [batch, time'] and the 8 feature maps."""
        return _run(self.convs, self.conv_post, y[..., None])


def _divided(channels: int, divisor: int) -> int:
    """A conv's input channels divided by `divisor`, the waveform's single channel kept."""
    return channels if channels == 1 else channels // divisor


def _check_divisor(divisor: int) -> None:
    if divisor not in DIVISORS:
        raise ValueError(f"discriminator divisor {divisor}: must be one of {DIVISORS}")


def average_pool(y: jax.Array) -> jax.Array:
    """torch's AvgPool1d(4, 2, padding=2) on y [batch, samples] -> [batch, samples // 2 + 1]: the mean of each window
    of 4 of the zero-padded signal, the padding counted (count_include_pad=True: always divided by 4)."""
    padded = jnp.pad(y, ((0, 0), (POOL_PADDING, POOL_PADDING)))
    count = (padded.shape[1] - POOL_WIDTH) // POOL_STRIDE + 1
    span = POOL_STRIDE * (count - 1) + 1
    total = sum(padded[:, offset : offset + span : POOL_STRIDE] for offset in range(POOL_WIDTH))
    return total / POOL_WIDTH


class MultiPeriodDiscriminator(nnx.Module):
    """The reference's MultiPeriodDiscriminator, one waveform batch per call (call it on the real batch, then on the
    generated one, for the reference's forward(y, y_hat))."""

    def __init__(self, periods: Sequence[int] = PERIODS, divisor: int = 1, *, rngs: nnx.Rngs):
        """`divisor`: every hidden conv's channels divided by it (1: the reference's; see DIVISORS)."""
        _check_divisor(divisor)
        self.discriminators = nnx.List([DiscriminatorP(period, divisor, rngs=rngs) for period in periods])

    def __call__(self, y: jax.Array) -> Output:
        """y [batch, samples] float32 -> (scores [batch, n] per period, feature maps per period)."""
        outputs = [discriminator(y) for discriminator in self.discriminators]
        return [scores for scores, _ in outputs], [fmap for _, fmap in outputs]


class MultiScaleDiscriminator(nnx.Module):
    """The reference's MultiScaleDiscriminator: DiscriminatorS with spectral norm on the waveform, then two with
    weight norm on it average-pooled once and twice. One waveform batch per call: call it on the real batch, then
    on the generated one (the first discriminator's u then advances as in the reference's forward(y, y_hat))."""

    def __init__(self, divisor: int = 1, grouping: str = "xla", *, rngs: nnx.Rngs):
        """`divisor`: every hidden conv's channels divided by it (1: the reference's; see DIVISORS); `grouping`:
        how its grouped convolutions run (GROUPINGS, `convolve`): the parameters are the same either way."""
        _check_divisor(divisor)
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping {grouping!r}: must be one of {GROUPINGS}")
        self.discriminators = nnx.List(
            [
                DiscriminatorS(use_spectral_norm=True, divisor=divisor, grouping=grouping, rngs=rngs),
                DiscriminatorS(divisor=divisor, grouping=grouping, rngs=rngs),
                DiscriminatorS(divisor=divisor, grouping=grouping, rngs=rngs),
            ]
        )

    def __call__(self, y: jax.Array) -> Output:
        """y [batch, samples] float32 -> (scores [batch, n] per scale, feature maps per scale)."""
        scores, fmaps = [], []
        for index, discriminator in enumerate(self.discriminators):
            if index:
                y = average_pool(y)
            score, fmap = discriminator(y)
            scores.append(score)
            fmaps.append(fmap)
        return scores, fmaps


def split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, params, spectral): a discriminator's structure, its trainable parameters and its spectral-norm
    vectors (empty for the multi-period discriminator), for `functional_call` inside jit / grad."""
    return nnx.split(model, nnx.Param, SpectralVector)


def functional_call(
    graphdef: nnx.GraphDef, params: nnx.State, spectral: nnx.State, *waveforms: jax.Array
) -> tuple[list[Output], nnx.State]:
    """The discriminator called on each waveform batch in order (the real batch first, as the reference), as a pure
    function: ([(scores, feature maps) per batch], the spectral vectors after those calls). The module is merged from
    copies of the states (merging the caller's own variables would update them in place, which NNX refuses for
    variables made outside the jit / grad trace), so the inputs are left unchanged and it runs under jax.jit /
    jax.grad; write the new vectors back into a stateful model with `nnx.update(model, spectral)`.

    Typical discriminator step: `graphdef, params, spectral = split(model)`; in the loss,
    `[(real, _), (generated, _)], spectral = functional_call(graphdef, params, spectral, y, y_hat)`, the loss of
    real[0] and generated[0], the new spectral returned as aux of jax.value_and_grad(..., has_aux=True)."""
    model = nnx.merge(graphdef, params, spectral, copy=True)
    outputs = [model(y) for y in waveforms]
    return outputs, nnx.state(model, SpectralVector)
