"""Units -> audio: the MFCC tokeniser's inverse, `load_vocoder` (it or the neural unit vocoder) and the wav writer.

A vocoder has `sample_rate`, `hop_length` (samples per unit frame), `vocode(units, predict_durations=False)` -> a
float32 waveform of the units (ints 0..K-1, at least one), `vocode_batch(list of units, predict_durations=False)`
and `predicts_durations`. Without `predict_durations` each unit is one frame, so a waveform is
`len(units) * hop_length` samples; with it, each unit lasts as long as the vocoder predicts (deduplicated units:
generated ones, or a tokeniser's with `dedup`). Both kinds refuse bad units with the same one-line errors.

No neural vocoder exists for MFCC k-means units, so `MfccInverseVocoder` undoes speech/features.py's transform:
    1. each centroid (an MFCC frame) -> log-mel: the coefficients past `num_mfcc` taken as zero, then the inverse
       orthonormal DCT-II (the transpose of features.dct_matrix, whose columns are orthonormal), as librosa's
       `mfcc_to_mel`; dB -> mel power;
    2. mel power -> linear power spectrum: non-negative least squares under features.mel_matrix by multiplicative
       (KL) updates, started from the mel bands spread over their own filters. In 200 steps, vectorised over
       frames, they fit the bands of speech's frames to 1e-6 dB; librosa's `nnls` (the one of `mel_to_stft`)
       leaves up to 20 dB on these bands of widely spread power, and takes seconds;
    3. Griffin-Lim (fast, momentum 0.99: librosa's `griffinlim`) on features.py's own framing: frame t is the
       Hann-windowed `n_fft` samples centred on `t * frame + frame / 2`, so the output's frames are the units'.
The spectra of step 2 are computed once per unit. `predict_durations` plays each unit for its mean run length in
the tokeniser folder's own `features.jsonl` (rounded, at least one frame): the inverse's duration predictor.
"""

import io
import json
import os

import numpy as np
import soundfile

from slam_jax import paths
from slam_jax.models import kmeans
from slam_jax.models import vocoder as neural
from slam_jax.paths import Path
from slam_jax.speech import audio, tokenize
from slam_jax.speech import features as spectral
from slam_jax.speech.tokenize import MfccSettings

NNLS_STEPS = 200
GRIFFIN_LIM_STEPS = 100  # speech's own MFCC frames come back 1.1 dB RMS off (2.5 at librosa's default of 32)
MOMENTUM = 0.99  # fast Griffin-Lim (Perraudin et al., 2013), librosa's default
_TINY = 1e-30
# Spectra never fall below this power: far under the forward's mel floor (1e-10), so no feature sees it, and the
# updates never reach subnormal numbers, which slow x86 arithmetic a hundredfold.
_POWER_FLOOR = 1e-20


def log_mel_frames(frames: np.ndarray, config: spectral.SpectralConfig) -> np.ndarray:
    """[n, num_mels] log-mel (dB) of feature frames [n, dim]: MFCCs through the inverse DCT, log-mel as they are."""
    frames = np.asarray(frames, np.float64)
    if config.kind == "log_mel":
        return frames
    return frames @ spectral.dct_matrix(config.num_mels, config.num_mfcc).astype(np.float64).T


def linear_power(mel_power: np.ndarray, mel_matrix: np.ndarray, steps: int = NNLS_STEPS) -> np.ndarray:
    """[n, bins] non-negative power spectra whose mel bands (`@ mel_matrix` [bins, mels]) are `mel_power` [n, mels].

    Multiplicative updates for the generalised KL divergence (Lee and Seung, 2001) fit each band relative to its
    own level, so quiet bands count as much as loud ones; the start spreads each band's power over its triangle.
    """
    mel_matrix = np.asarray(mel_matrix, np.float64)
    band_area = mel_matrix.sum(axis=0)
    bin_weight = np.maximum(mel_matrix.sum(axis=1), _TINY)  # 0 at bins no filter covers: they stay at the floor
    power = np.maximum((mel_power / band_area) @ (mel_matrix / mel_matrix.max(axis=0)).T, _POWER_FLOOR)
    for _ in range(steps):
        power *= ((mel_power / np.maximum(power @ mel_matrix, _TINY)) @ mel_matrix.T) / bin_weight
        np.maximum(power, _POWER_FLOOR, out=power)
    return power


def stft(samples: np.ndarray, num_frames: int, config: spectral.SpectralConfig) -> np.ndarray:
    """[frames, n_fft // 2 + 1] complex spectra of `samples` framed exactly as features.spectral_features."""
    padded = np.pad(samples, (config.left_padding, config.n_fft))
    frames = np.lib.stride_tricks.sliding_window_view(padded, config.n_fft)[:: config.frame_samples][:num_frames]
    return np.fft.rfft(frames * spectral.hann(config.n_fft), axis=-1)


def overlap_add(pieces: np.ndarray, hop: int) -> np.ndarray:
    """The sum of `pieces` [frames, n] placed `hop` samples apart: `(frames + blocks - 1) * hop` samples, where a
    piece spans `blocks` hops."""
    num_frames, size = pieces.shape
    blocks = -(-size // hop)
    summed = np.zeros((num_frames + blocks - 1, hop), pieces.dtype)
    for block in range(blocks):
        part = pieces[:, block * hop : (block + 1) * hop]
        summed[block : block + num_frames, : part.shape[1]] += part
    return summed.ravel()


def istft(spectra: np.ndarray, config: spectral.SpectralConfig) -> np.ndarray:
    """The `frames * frame_samples` samples whose `stft` is nearest to `spectra` [frames, bins] (least squares:
    windowed overlap-add over the summed squared windows)."""
    num_frames, hop = len(spectra), config.frame_samples
    window = spectral.hann(config.n_fft).astype(np.float64)
    summed = overlap_add(np.fft.irfft(spectra, n=config.n_fft, axis=-1) * window, hop)
    weight = overlap_add(np.broadcast_to(window**2, (num_frames, config.n_fft)), hop)
    samples = summed / np.maximum(weight, _TINY)
    return samples[config.left_padding : config.left_padding + num_frames * hop]


def griffin_lim(magnitudes: np.ndarray, config: spectral.SpectralConfig, steps: int, seed: int = 0) -> np.ndarray:
    """float32 samples whose STFT magnitudes approach `magnitudes` [frames, bins], from seeded random phases."""
    phases = np.exp(2j * np.pi * np.random.default_rng(seed).random(magnitudes.shape))
    previous = np.zeros_like(phases)
    for _ in range(steps):
        rebuilt = stft(istft(magnitudes * phases, config), len(magnitudes), config)
        phases = rebuilt - (MOMENTUM / (1 + MOMENTUM)) * previous
        phases /= np.abs(phases) + 1e-16
        previous = rebuilt
    return istft(magnitudes * phases, config).astype(np.float32)


def mean_durations(features_path: Path, num_units: int) -> np.ndarray:
    """[num_units] frames each unit lasts: its mean run length in a `features.jsonl` (rounded, at least 1); a unit
    never seen there lasts the mean over all units."""
    frames, runs = np.zeros(num_units), np.zeros(num_units)
    for record in map(json.loads, filter(str.strip, features_path.read_text().splitlines())):
        units = np.asarray(record["units"], np.int64)
        np.add.at(frames, units, np.asarray(record.get("duration", np.ones(len(units))), np.float64))
        np.add.at(runs, units, 1.0)
    overall = frames.sum() / runs.sum() if runs.sum() else 1.0
    means = np.where(runs > 0, frames / np.maximum(runs, 1.0), overall)
    return np.maximum(1, np.rint(means)).astype(np.int64)


class MfccInverseVocoder:
    """The MFCC (or log-mel) tokeniser's inverse: unit -> its centroid's frame -> audio (see the module doc)."""

    sample_rate = audio.SAMPLE_RATE

    def __init__(
        self,
        centroids: np.ndarray,
        config: spectral.SpectralConfig,
        durations: np.ndarray | None = None,
        steps: int = GRIFFIN_LIM_STEPS,
        seed: int = 0,
    ):
        centroids = np.asarray(centroids)
        if centroids.ndim != 2 or centroids.shape[1] != config.dim:
            raise ValueError(f"centroids of shape {centroids.shape}: expected [units, {config.dim}] ({config.kind})")
        self.config, self.steps, self.seed = config, steps, seed
        self.hop_length = config.frame_samples
        self.num_units = len(centroids)
        mel_power = 10.0 ** (log_mel_frames(centroids, config) / 10.0)
        self.magnitudes = np.sqrt(linear_power(mel_power, spectral.mel_matrix(config)))
        self.durations = durations

    @classmethod
    def from_tokenizer(cls, folder: Path) -> "MfccInverseVocoder":
        """The inverse of the MFCC tokeniser whose output folder (`tokenizer.json`) is `folder`."""
        description_path = folder / tokenize.DESCRIPTION
        description = json.loads(description_path.read_text())
        if description.get("encoder") != tokenize.MFCC:
            raise ValueError(
                f"{folder}: a tokeniser of the encoder {description.get('encoder')!r}, whose units only a neural "
                "vocoder speaks (python -m conversion.vocoder_to_flax); the inverse here is the MFCC tokeniser's"
            )
        config = MfccSettings.from_dict(description["mfcc"], str(description_path)).spectral_config()
        centroids = kmeans.load_centroids(_centroids_path(folder, description))
        features_path = folder / tokenize.FEATURES
        durations = mean_durations(features_path, len(centroids)) if features_path.is_file() else None
        return cls(centroids, config, durations)

    @property
    def predicts_durations(self) -> bool:
        return self.durations is not None

    def vocode(self, units, predict_durations: bool = False) -> np.ndarray:
        """The float32 waveform of `units`: one frame each, or (`predict_durations`) each its mean duration."""
        return self.vocode_batch([units], predict_durations, names=["units"])[0]

    def vocode_batch(self, units_list, predict_durations: bool = False, names=None) -> list[np.ndarray]:
        """`vocode` of each sequence, every input checked first, with the neural vocoder's one-line errors."""
        if not len(units_list):
            raise ValueError("units_list: empty (needs at least one sequence)")
        if predict_durations and not self.predicts_durations:
            raise ValueError(
                "predict_durations: this vocoder has no duration predictor (a centroids file: the MFCC inverse "
                "predicts from a tokeniser folder's features.jsonl)"
            )
        names = names or [f"units_list[{index}]" for index in range(len(units_list))]
        checked = [
            neural.check_ids(units, self.num_units, name, "unit ids")
            for units, name in zip(units_list, names, strict=True)
        ]
        frames = [np.repeat(units, self.durations[units]) if predict_durations else units for units in checked]
        return [griffin_lim(self.magnitudes[units], self.config, self.steps, self.seed) for units in frames]


def _centroids_path(folder: Path, description: dict) -> Path:
    """The centroids tokenizer.json names, or the folder's own fitted ones if the folder has moved."""
    named = Path(description["kmeans"])
    if named.is_file():
        return named
    fitted = folder / tokenize.FITTED_CENTROIDS
    if fitted.is_file():
        return fitted
    raise FileNotFoundError(f"{folder / tokenize.DESCRIPTION}: its centroids {named} are gone (nor is {fitted} there)")


def load_vocoder(path: str | Path, mfcc: MfccSettings | None = None, **neural_options):
    """The vocoder at `path`: an MFCC tokeniser's output folder (`tokenizer.json`) or a centroids `.npy` (with the
    `mfcc` settings that made them, default the tokeniser's) give the MFCC inverse; any other folder is a neural
    unit vocoder (`python -m conversion.vocoder_to_flax`), loaded with `neural_options` (`batch_size`). Any of them
    may be in a bucket (a neural vocoder on gs://: Orbax reads it there)."""
    path = Path(path)
    if not path.exists():
        paths.check_bucket(path)
        raise FileNotFoundError(f"{path}: no such vocoder folder or centroids file")
    if (path / tokenize.DESCRIPTION).is_file():
        return MfccInverseVocoder.from_tokenizer(path)
    if path.is_file():
        if path.suffix != ".npy":
            raise ValueError(
                f"{path}: not a vocoder: give a vocoder folder, an MFCC tokeniser folder or its centroids .npy"
            )
        return MfccInverseVocoder(kmeans.load_centroids(path), (mfcc or MfccSettings()).spectral_config())
    return neural.load_vocoder(path, **neural_options)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> Path:
    """`samples` as a 16-bit PCM wav, clipped to [-1, 1] (libsndfile would wrap louder ones), written atomically
    (in a bucket: one upload)."""
    path = Path(path)
    if paths.is_remote(path):
        buffer = io.BytesIO()
        soundfile.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
        path.write_bytes(buffer.getvalue())
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        soundfile.write(staging, np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
    return path
