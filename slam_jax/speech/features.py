"""MFCC and log-mel features in JAX: an offline frame encoder for a tokeniser fitted and used with no download.

Frames are placed like the 25 Hz HuBERT's: frame t of a file is centred on sample
`t * frame_samples + frame_samples / 2` and a file of n samples has `n // frame_samples` frames, so units
from either encoder have the same rate and alignment. Each frame is a Hann-windowed (periodic) `n_fft`-point
power spectrum, mel-filtered (Slaney mel scale and area norm, librosa's defaults), in dB (10 log10, floored at 1e-10);
MFCCs are its orthonormal DCT-II, first `num_mfcc` coefficients (librosa's `mfcc` without the top-dB clip).
Frames only read their own item's samples and zeros, so padded batches give per-item results.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("mfcc", "log_mel")
_POWER_FLOOR = 1e-10
_MEL_LINEAR_STEP = 200.0 / 3  # Hz per mel below 1 kHz
_MEL_LOG_STEP = np.log(6.4) / 27.0  # log-Hz per mel above 1 kHz


@dataclasses.dataclass(frozen=True)
class SpectralConfig:
    """Which features and their framing (16 kHz input)."""

    kind: str = "mfcc"
    frame_samples: int = 640
    n_fft: int = 1024
    num_mels: int = 40
    num_mfcc: int = 20
    sample_rate: int = 16_000

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"features kind {self.kind!r} not in {KINDS}")
        if self.n_fft < self.frame_samples or self.num_mfcc > self.num_mels:
            raise ValueError(f"need n_fft >= frame_samples and num_mfcc <= num_mels: {self}")

    @property
    def dim(self) -> int:
        return self.num_mfcc if self.kind == "mfcc" else self.num_mels

    @property
    def left_padding(self) -> int:
        """Zeros before sample 0 so that frame t's window is centred on t * frame + frame / 2."""
        return self.n_fft // 2 - self.frame_samples // 2

    def num_frames(self, num_samples):
        frames = np.asarray(num_samples, np.int64) // self.frame_samples
        return int(frames) if frames.ndim == 0 else frames


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    log_region = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / _MEL_LOG_STEP
    return np.where(hz >= 1000.0, log_region, hz / _MEL_LINEAR_STEP)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp(_MEL_LOG_STEP * (mel - 15.0)), mel * _MEL_LINEAR_STEP)


def mel_matrix(config: SpectralConfig) -> np.ndarray:
    """[n_fft // 2 + 1, num_mels] triangular mel filters from 0 Hz to Nyquist, area-normalised (Slaney)."""
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(config.sample_rate / 2), config.num_mels + 2))
    bins = np.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1)
    rising = (bins[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / np.diff(edges)[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return filters.T.astype(np.float32)


def dct_matrix(size: int, count: int) -> np.ndarray:
    """[size, count]: x @ D is the orthonormal DCT-II of x, first `count` coefficients."""
    n = np.arange(size)[:, None]
    k = np.arange(count)[None, :]
    matrix = np.sqrt(2.0 / size) * np.cos(np.pi * k * (2 * n + 1) / (2 * size))
    matrix[:, 0] /= np.sqrt(2.0)
    return matrix.astype(np.float32)


def hann(size: int) -> np.ndarray:
    """Periodic Hann window (scipy's `get_window('hann', size)`, librosa's default)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)).astype(np.float32)


def spectral_features(config: SpectralConfig, waveforms: jax.Array) -> jax.Array:
    """[batch, samples // frame_samples, dim] features of right-zero-padded waveforms [batch, samples]."""
    batch, samples = waveforms.shape
    frames = samples // config.frame_samples
    padded = jnp.pad(waveforms.astype(jnp.float32), ((0, 0), (config.left_padding, config.n_fft)))
    index = np.arange(frames)[:, None] * config.frame_samples + np.arange(config.n_fft)[None, :]
    windowed = padded[:, index] * hann(config.n_fft)
    power = jnp.square(jnp.abs(jnp.fft.rfft(windowed, axis=-1)))
    mel = jnp.dot(power, mel_matrix(config), precision=jax.lax.Precision.HIGHEST)
    log_mel = 10.0 * jnp.log10(jnp.maximum(mel, _POWER_FLOOR))
    if config.kind == "log_mel":
        return log_mel
    return jnp.dot(log_mel, dct_matrix(config.num_mels, config.num_mfcc), precision=jax.lax.Precision.HIGHEST)
