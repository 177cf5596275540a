"""HiFi-GAN's log-mel front end (the pip `hifi-gan`'s `meldataset.mel_spectrogram`) in JAX, differentiable: the
generator's mel L1 loss runs it on generated waveforms.

The reference, for y [batch, samples]: reflect-pads (n_fft - hop_size) / 2 samples on both ends (the edge sample not
repeated), takes frames of n_fft samples every hop_size samples with no further centring (torch.stft(center=False)),
windows each with the periodic Hann window of win_size samples zero-padded to n_fft, centred (as torch.stft pads a
shorter window), keeps the one-sided spectrum's magnitude sqrt(re^2 + im^2 + 1e-9), applies librosa's (Slaney) mel
filter bank and takes log(max(x, 1e-5)). It returns [batch, num_mels, frames]; this module returns channels last,
[batch, frames, num_mels].
"""

import functools

import jax
import jax.numpy as jnp
import librosa
import numpy as np

MAGNITUDE_EPS = 1e-9  # added to re^2 + im^2 before the square root
LOG_FLOOR = 1e-5  # the reference's dynamic_range_compression_torch clip_val
# The reference multiplies in float32; GPUs (TF32) and TPUs (one bf16 pass) would otherwise round the operands.
_PRECISION = jax.lax.Precision.HIGHEST


def padding(n_fft: int, hop_size: int) -> int:
    """Samples reflect-padded on each end: int((n_fft - hop_size) / 2), as the reference."""
    return int((n_fft - hop_size) / 2)


def num_frames(samples: int, n_fft: int, hop_size: int) -> int:
    """Frames of a `samples`-long waveform: 1 + (padded - n_fft) // hop_size, the padded length
    samples + 2 x padding (torch.stft with center=False)."""
    return 1 + (samples + 2 * padding(n_fft, hop_size) - n_fft) // hop_size


@functools.lru_cache(maxsize=16)
def mel_basis(sampling_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    """librosa's mel filter bank, transposed for channels last: [n_fft // 2 + 1, num_mels] float32 (fmax None is
    sampling_rate / 2, librosa's default)."""
    basis = librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)
    return np.ascontiguousarray(basis.T, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def window(win_size: int, n_fft: int) -> np.ndarray:
    """torch.hann_window(win_size) (periodic: 0.5 - 0.5 cos(2 pi n / win_size)) zero-padded to n_fft, centred with
    (n_fft - win_size) // 2 zeros on the left, as torch.stft places a shorter window; [n_fft] float32."""
    hann = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_size) / win_size)).astype(np.float32)
    left = (n_fft - win_size) // 2
    return np.pad(hann, (left, n_fft - win_size - left))


def frames(y: jax.Array, n_fft: int, hop_size: int) -> jax.Array:
    """y [batch, samples] -> [batch, num_frames, n_fft]: the reflect-padded waveform's frames every hop_size."""
    side = padding(n_fft, hop_size)
    padded = jnp.pad(y, ((0, 0), (side, side)), mode="reflect")
    count = num_frames(y.shape[1], n_fft, hop_size)
    index = hop_size * np.arange(count)[:, None] + np.arange(n_fft)[None, :]
    return padded[:, index]


def magnitudes(y: jax.Array, n_fft: int, hop_size: int, win_size: int) -> jax.Array:
    """[batch, frames, n_fft // 2 + 1]: sqrt(re^2 + im^2 + 1e-9) of each windowed frame's one-sided spectrum."""
    spectrum = jnp.fft.rfft(frames(y, n_fft, hop_size) * window(win_size, n_fft), axis=-1)
    return jnp.sqrt(jnp.square(spectrum.real) + jnp.square(spectrum.imag) + MAGNITUDE_EPS)


def mel_spectrogram(
    y: jax.Array,
    n_fft: int,
    num_mels: int,
    sampling_rate: int,
    hop_size: int,
    win_size: int,
    fmin: float,
    fmax: float | None,
) -> jax.Array:
    """HiFi-GAN's log-mel spectrogram of y [batch, samples] float32: [batch, num_frames(samples), num_mels]
    (channels last; the reference returns [batch, num_mels, frames]); differentiable in y."""
    mel = jnp.matmul(
        magnitudes(y, n_fft, hop_size, win_size),
        mel_basis(sampling_rate, n_fft, num_mels, fmin, fmax),
        precision=_PRECISION,
    )
    return jnp.log(jnp.maximum(mel, LOG_FLOOR))
