"""Audio in: finding audio files, reading them as mono 16 kHz float32, the length cap and long-file windows.

Reading: soundfile (the libsndfile >= 1.1 of its wheels decodes wav, flac, ogg/vorbis/opus and mp3); channels
are averaged and the rate converted with soxr (high quality).

Length cap (VAD-free): only the first `max_seconds` of a file are read (the rest is never decoded), and the
file is reported as truncated. Long files are then encoded whole or, when `window_seconds` is set, in
windows of that length overlapping by `overlap_seconds`; each window keeps the frames nearest its own
centre, so the stitched frames are one per frame period of the whole file, as in a whole-file pass.
"""

import dataclasses
import glob

import numpy as np
import soundfile
import soxr

from slam_jax.paths import Path

SAMPLE_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
LIST_SUFFIXES = (".txt", ".lst", ".list")


class AudioError(ValueError):
    """A file that cannot be tokenised; the message is the reason written to the errors file."""


@dataclasses.dataclass(frozen=True)
class Audio:
    """A decoded file: mono float32 samples at SAMPLE_RATE, and how long the file itself is."""

    samples: np.ndarray
    source_seconds: float
    truncated: bool


def list_audio(spec: str) -> list[str]:
    """Audio paths named by `spec`: a comma-separated list of folders (searched recursively for
    AUDIO_SUFFIXES), audio files, list files (one path per line, relative to the list's folder) and globs.
    Folder and glob matches are sorted; duplicates are dropped, keeping the first."""
    paths: list[str] = []
    for part in filter(None, (piece.strip() for piece in spec.split(","))):
        path = Path(part)
        if path.is_dir():
            paths += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            paths += _read_list(path)
        elif path.is_file():
            paths.append(str(path))
        else:
            matches = sorted(match for match in glob.glob(part, recursive=True) if Path(match).is_file())
            if not matches:
                raise FileNotFoundError(f"{part}: no such audio folder, file, list or glob match")
            paths += matches
    return list(dict.fromkeys(paths))


def _read_list(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [str(Path(line) if Path(line).is_absolute() else path.parent / line) for line in lines if line]


def probe_seconds(path: str) -> float:
    """Duration from the file header (0.0 if the header cannot be read: the read will report why)."""
    try:
        info = soundfile.info(path)
        return info.frames / info.samplerate if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 - any unreadable header sorts first and fails later with its reason
        return 0.0


def read_audio(path: str, max_seconds: float = 0.0) -> Audio:
    """`path` as mono float32 at 16 kHz, at most its first `max_seconds` (0 = no cap); AudioError if unusable."""
    if Path(path).stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        samples, rate, total_frames = _read_soundfile(path, max_seconds)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"not readable as audio: {_one_line(error)}") from None
    if samples.shape[0] == 0:
        raise AudioError("empty audio (0 samples)")
    if not np.all(np.isfinite(samples)):
        raise AudioError("audio holds NaN or infinite samples")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    source_seconds = total_frames / rate
    return Audio(np.ascontiguousarray(mono, np.float32), source_seconds, samples.shape[0] < total_frames)


def _read_soundfile(path: str, max_seconds: float) -> tuple[np.ndarray, int, int]:
    with soundfile.SoundFile(path) as handle:
        rate, total = handle.samplerate, handle.frames
        wanted = min(total, int(max_seconds * rate)) if max_seconds > 0 else total
        samples = handle.read(wanted, dtype="float32", always_2d=True)
    if samples.shape[0] < wanted:
        raise AudioError(f"corrupt or truncated: the header announces {wanted} frames, {samples.shape[0]} decode")
    return samples, rate, total


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@dataclasses.dataclass(frozen=True)
class Window:
    """Samples [start, end) of a file, of whose frames the ones in [keep_start, keep_end) are kept (local indices)."""

    start: int
    end: int
    keep_start: int
    keep_end: int


def windows(num_samples: int, frame_samples: int, window_seconds: float, overlap_seconds: float) -> list[Window]:
    """Split a file of `num_samples` (16 kHz) into windows; one window when it fits or windows are off (0).

    Window starts are whole frames apart, so every window's frames lie on the whole file's frame grid; the
    frames of an overlap are split at its middle. Total kept frames = num_samples // frame_samples.
    """
    window = round(window_seconds * SAMPLE_RATE)
    overlap = round(overlap_seconds * SAMPLE_RATE)
    total_frames = num_samples // frame_samples
    if window <= 0 or num_samples <= window:
        return [Window(0, num_samples, 0, total_frames)]
    check_window(window, overlap, frame_samples)
    hop = window - overlap
    count = -(-(num_samples - window) // hop) + 1
    boundaries = [0] + [(index * hop + overlap // 2) // frame_samples for index in range(1, count)] + [total_frames]
    result = []
    for index in range(count):
        start, first_frame = index * hop, index * hop // frame_samples
        end = min(num_samples, start + window)
        result.append(Window(start, end, boundaries[index] - first_frame, boundaries[index + 1] - first_frame))
    return result


def check_window(window: int, overlap: int, frame_samples: int) -> None:
    """Windows must be whole frames and overlaps an even number of frames, shorter than the window."""
    if window % frame_samples or overlap % (2 * frame_samples) or not 0 <= overlap < window:
        raise ValueError(
            f"window {window} / overlap {overlap} samples: the window must be a multiple of {frame_samples} "
            f"samples (one frame) and the overlap a multiple of {2 * frame_samples}, shorter than the window"
        )
