"""Whisper's log-mel front end in JAX (runs on any backend), equal to transformers' `WhisperFeatureExtractor`.

16 kHz audio is zero-padded or cut to 30 s (480,000 samples); its short-time Fourier transform (400-point
periodic Hann window, 160-sample hop, frames centred on multiples of the hop with reflect padding at the ends,
as torch.stft with center=True) has 3001 frames, of which the last is dropped; the power spectrum goes through
Slaney-style mel filters from 0 to 8 kHz (area-normalised), then log10 of the power clamped at 1e-10, each
item's values raised to at least its own maximum minus 8, and finally (x + 4) / 4.
"""

import jax
import jax.numpy as jnp
import numpy as np

from slam_jax.speech import features
from slam_jax.speech.audio import SAMPLE_RATE

N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
NUM_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480,000: every input is padded or cut to this
NUM_FRAMES = NUM_SAMPLES // HOP_LENGTH  # 3000
_POWER_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0  # in log10 units: 80 dB below each item's loudest value


def mel_filters(num_mel_bins: int) -> np.ndarray:
    """[N_FFT // 2 + 1, num_mel_bins] float32 Slaney mel filters from 0 Hz to Nyquist, area-normalised (librosa's
    `filters.mel(htk=False, norm="slaney")`, transformers' `mel_filter_bank(norm="slaney", mel_scale="slaney")`)."""
    spectral = features.SpectralConfig(
        kind="log_mel", frame_samples=HOP_LENGTH, n_fft=N_FFT, num_mels=num_mel_bins, sample_rate=SAMPLE_RATE
    )
    return features.mel_matrix(spectral)


def pad_or_trim(waveform: np.ndarray) -> np.ndarray:
    """A mono waveform as exactly NUM_SAMPLES float32 samples: zeros after it, or its first 30 s."""
    padded = np.zeros((NUM_SAMPLES,), np.float32)
    kept = np.asarray(waveform, np.float32)[:NUM_SAMPLES]
    padded[: kept.shape[0]] = kept
    return padded


def log_mel(waveforms: jax.Array, num_mel_bins: int) -> jax.Array:
    """Whisper's input features [batch, num_mel_bins, NUM_FRAMES] float32 of 16 kHz waveforms [batch, NUM_SAMPLES]
    (see `pad_or_trim`)."""
    if waveforms.shape[-1] != NUM_SAMPLES:
        raise ValueError(f"waveforms have {waveforms.shape[-1]} samples, Whisper's window is {NUM_SAMPLES}")
    side = N_FFT // 2
    padded = jnp.pad(waveforms.astype(jnp.float32), ((0, 0), (side, side)), mode="reflect")
    index = np.arange(NUM_FRAMES)[:, None] * HOP_LENGTH + np.arange(N_FFT)[None, :]
    spectrum = jnp.fft.rfft(padded[:, index] * features.hann(N_FFT), axis=-1)
    power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
    mel = jnp.einsum("btf,fm->bmt", power, mel_filters(num_mel_bins), precision=jax.lax.Precision.HIGHEST)
    log_spec = jnp.log10(jnp.maximum(mel, _POWER_FLOOR))
    log_spec = jnp.maximum(log_spec, jnp.max(log_spec, axis=(1, 2), keepdims=True) - _DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0
