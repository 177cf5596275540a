"""Audio in: finding audio files, reading them as mono 16 kHz float32, the length cap and long-file windows.

Reading: soundfile (the libsndfile >= 1.1 of its wheels decodes wav, flac, ogg/vorbis/opus and mp3); channels
are averaged and the rate converted with soxr (high quality).

Buckets (gs://, s3://; `slam_jax.paths`): folders, globs and list files may name objects, and list files may
live in a bucket themselves. An object is streamed, never copied to disk: soundfile reads it through an fsspec
file object, which fetches byte ranges as the decoder asks (a header probe reads its first PROBE_BLOCK bytes, a
read goes through READ_BLOCK bytes at a time), so a length-capped read of a long file fetches only its start.

Length cap (VAD-free): only the first `max_seconds` of a file are read (the rest is never decoded), and the
file is reported as truncated. Long files are then encoded whole or, when `window_seconds` is set, in
windows of that length overlapping by `overlap_seconds`; each window keeps the frames nearest its own
centre, so the stitched frames are one per frame period of the whole file, as in a whole-file pass.
"""

import contextlib
import dataclasses
import glob
import posixpath
from collections.abc import Iterator

import numpy as np
import soundfile
import soxr

from slam_jax import paths
from slam_jax.paths import Path

SAMPLE_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
LIST_SUFFIXES = (".txt", ".lst", ".list")
GLOB_CHARACTERS = "*?["
PROBE_BLOCK = 1 << 16  # bytes per request while a header is probed (in a bucket)
READ_BLOCK = 4 << 20  # bytes per request while a file is decoded (in a bucket)


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
    AUDIO_SUFFIXES), audio files, list files (one path per line, relative to the list's folder) and globs, each
    local or in a bucket (gs://, s3://). Folder and glob matches are sorted; duplicates are dropped, keeping the
    first."""
    found: list[str] = []
    for part in filter(None, (piece.strip() for piece in spec.split(","))):
        if paths.is_remote(part):
            found += _list_bucket(part)
            continue
        path = Path(part)
        if path.is_dir():
            found += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            found += _read_list(path)
        elif path.is_file():
            found.append(str(path))
        else:
            matches = sorted(match for match in glob.glob(part, recursive=True) if Path(match).is_file())
            if not matches:
                raise FileNotFoundError(f"{part}: no such audio folder, file, list or glob match")
            found += matches
    return list(dict.fromkeys(found))


def _list_bucket(part: str) -> list[str]:
    """`list_audio` of one bucket URL: a folder (every audio object under it), a list file, an object or a glob;
    one listing request per folder or glob, whatever its size."""
    fs, key = paths.filesystem(part), paths.object_key(part).rstrip("/")
    scheme = part.split("://", 1)[0]
    if any(character in key for character in GLOB_CHARACTERS):
        found = fs.glob(key, detail=True)
        matches = sorted(f"{scheme}://{name}" for name, info in found.items() if info.get("type") == "file")
        if not matches:
            raise _nothing_at(part)
        return matches
    try:
        info = fs.info(key)
    except FileNotFoundError:
        raise _nothing_at(part) from None
    if info.get("type") == "directory":
        names = fs.find(key)
        return sorted(f"{scheme}://{name}" for name in names if _suffix(name) in AUDIO_SUFFIXES)
    if _suffix(key) in LIST_SUFFIXES:
        return _read_list(Path(part))
    return [f"{scheme}://{key}"]


def _nothing_at(part: str) -> FileNotFoundError:
    """The one-line failure of a bucket URL that names nothing (raised here if its very bucket is missing)."""
    paths.check_bucket(part)
    return FileNotFoundError(f"{part}: no such audio folder, file, list or glob match")


def _suffix(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def _read_list(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [str(Path(line) if _absolute(line) else path.parent / line) for line in lines if line]


def _absolute(line: str) -> bool:
    return paths.is_remote(line) or Path(line).is_absolute()


def probe_seconds(path: str) -> float:
    """Duration from the file header (0.0 if the header cannot be read: the read will report why)."""
    try:
        with _opened(path, PROBE_BLOCK) as source:
            info = soundfile.info(source)
        return info.frames / info.samplerate if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 - any unreadable header sorts first and fails later with its reason
        return 0.0


def read_audio(path: str, max_seconds: float = 0.0) -> Audio:
    """`path` (a file or a bucket object) as mono float32 at 16 kHz, at most its first `max_seconds` (0 = no cap);
    AudioError if unusable."""
    with _opened(path, READ_BLOCK) as source:
        if _size(path, source) == 0:
            raise AudioError("empty file (0 bytes)")
        try:
            samples, rate, total_frames = _read_soundfile(source, max_seconds)
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


@contextlib.contextmanager
def _opened(path: str, block_size: int) -> Iterator:
    """What soundfile reads: a local file's name, or a bucket object as a file object fetching `block_size` bytes
    per request."""
    if not paths.is_remote(path):
        yield path
        return
    try:
        handle = paths.filesystem(path).open(paths.object_key(path), "rb", block_size=block_size)
    except FileNotFoundError:
        raise AudioError("no such object in the bucket") from None
    with handle:
        yield handle


def _size(path: str, source) -> int:
    return source.size if paths.is_remote(path) else Path(path).stat().st_size


def _read_soundfile(source, max_seconds: float) -> tuple[np.ndarray, int, int]:
    with soundfile.SoundFile(source) as handle:
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
