"""The vocoder's training data: clips of audio with their units, and the segments cut from them.

A clip is one line of a tokeniser's `features.jsonl` (deduplicated `units`, their `duration` in frames, the
audio's `file_name`) with that file's audio (mono, 16 kHz, `speech/audio.py`), scaled as HiFi-GAN's datasets
scale it: peak-normalised, times 0.95. Frame t of the units covers samples [t * hop, (t + 1) * hop).

Segments are drawn as HiFi-GAN / CodeHiFiGAN draw them: every epoch visits each training clip once, in a seeded
order (Grain's `MapDataset.shuffle(seed).repeat()`, a new order per epoch), `batch` clips a step, the last
incomplete batch dropped; each visit cuts `segment_frames` frames at a seeded random frame of the clip, with
their `segment_frames * hop` samples. Everything about a step follows from (seed, step), so a run resumes at
any step with the batches it would have had, on any number of hosts (each builds only its rows).

A step's batch (numpy, rows = clips):
    units      [rows, frames] int32      the frame units (each unit repeated for its duration)
    audio      [rows, frames * hop] float32
    run_units  [rows, frames] int32      the segment's units deduplicated (runs cut at its edges), zero-padded
    run_frames [rows, frames] int32      each run's length in frames (0 on padding)
    num_runs   [rows] int32
The duration predictor learns log(1 + run_frames) from run_units, as CodeHiFiGAN's `process_duration` derives
them from a segment's frame units.
"""

import concurrent.futures
import dataclasses
import json

import grain
import numpy as np

from slam_jax import files, paths
from slam_jax.data import pipeline
from slam_jax.errors import DataError
from slam_jax.paths import Path
from slam_jax.speech import audio

PEAK = 0.95  # HiFi-GAN's datasets: normalize(audio) * 0.95
FEATURES = "features.jsonl"


@dataclasses.dataclass(frozen=True)
class Clip:
    """One file's units and audio (peak-normalised to 0.95)."""

    name: str  # where it came from: `features.jsonl:line`
    file_name: str
    units: np.ndarray  # [runs] int32 deduplicated units
    durations: np.ndarray  # [runs] int32 frames per unit
    samples: np.ndarray  # [samples] float32

    @property
    def num_frames(self) -> int:
        return int(self.durations.sum())

    @property
    def frame_units(self) -> np.ndarray:
        """[frames] int32: each unit repeated for its duration."""
        return np.repeat(self.units, self.durations)


def feature_files(spec: str) -> list[Path]:
    """The features.jsonl files of a comma list of tokeniser output folders and jsonl files."""
    found = []
    for part in filter(None, (piece.strip() for piece in spec.split(","))):
        path = Path(part)
        candidate = path / FEATURES if path.is_dir() else path
        if not candidate.is_file():
            paths.check_bucket(candidate)
            raise FileNotFoundError(f"{part}: no {FEATURES} (name a tokeniser's output folder or a jsonl file)")
        found.append(candidate)
    if not found:
        raise ValueError("data.train_path: empty (name a tokeniser's output folder or its features.jsonl)")
    return found


def read_entries(path: Path, num_units: int, audio_root: str) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(where, audio file, units, durations) of every line of a features.jsonl; a bad line is one DataError naming
    `file:line` and the key."""
    entries = []
    for where, record in files.read_records(path):
        for key in ("units", "duration", "file_name"):
            if key not in record:
                raise DataError(
                    f"{where}: no {key!r} (a tokeniser's features.jsonl line has units, duration, file_name)"
                )
        units, durations = np.asarray(record["units"]), np.asarray(record["duration"])
        if units.ndim != 1 or units.shape != durations.shape or not units.size:
            raise DataError(f"{where}: 'units' and 'duration' must be non-empty lists of one length")
        if not (np.issubdtype(units.dtype, np.integer) and np.issubdtype(durations.dtype, np.integer)):
            raise DataError(f"{where}: 'units' and 'duration' must hold integers")
        if units.min() < 0 or units.max() >= num_units:
            raise DataError(
                f"{where}: unit {int(units.max() if units.max() >= num_units else units.min())} is "
                f"outside 0..{num_units - 1} (data.num_units={num_units})"
            )
        if durations.min() < 1:
            raise DataError(f"{where}: 'duration' must be >= 1 frame per unit")
        entries.append(
            (where, resolve_audio(record["file_name"], audio_root), units.astype(np.int32), durations.astype(np.int32))
        )
    return entries


def resolve_audio(file_name: str, audio_root: str) -> str:
    """The audio path a features.jsonl line names: as written, or under `audio_root` when it is relative."""
    if not audio_root or paths.is_remote(file_name) or Path(file_name).is_absolute():
        return file_name
    return str(Path(audio_root) / file_name)


def load_clip(entry: tuple[str, str, np.ndarray, np.ndarray]) -> Clip:
    """The clip of one entry: its audio read, resampled to 16 kHz and peak-normalised; an unreadable or silent file
    is one DataError naming the line and the file."""
    where, file_name, units, durations = entry
    try:
        samples = audio.read_audio(file_name).samples
    except (audio.AudioError, OSError) as error:
        raise DataError(f"{where}: audio {file_name}: {error}") from None
    peak = float(np.max(np.abs(samples)))
    if peak == 0.0:
        raise DataError(f"{where}: audio {file_name} is silent (all samples 0)")
    return Clip(where, file_name, units, durations, (samples * (PEAK / peak)).astype(np.float32))


def load_clips(entries, threads: int = 8) -> list[Clip]:
    """Every entry's clip, read in parallel, in order."""
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(load_clip, entries))


def split(entries: list, valid_clips: int, seed: int) -> tuple[list, list]:
    """(train, held out): `valid_clips` entries chosen by `seed` are held out (none when 0)."""
    if valid_clips >= len(entries):
        raise ValueError(
            f"data.valid_clips={valid_clips}: leaves no training clip of {len(entries)} (lower it or set "
            "data.valid_path)"
        )
    held = set(np.random.default_rng(seed).permutation(len(entries))[:valid_clips].tolist())
    return [e for i, e in enumerate(entries) if i not in held], [e for i, e in enumerate(entries) if i in held]


class Segments:
    """The global plan of segments over `clips`: `steps_per_epoch`, `rows(step)`, `build(items)`."""

    def __init__(self, clips: list[Clip], segment_frames: int, hop: int, batch: int, seed: int):
        short = [clip.name for clip in clips if clip.num_frames < segment_frames]
        if short:
            raise DataError(
                f"{short[0]}: {len(short)} clip(s) shorter than data.segment_frames={segment_frames} frames "
                f"(lower it, or leave such files out of the tokeniser's input)"
            )
        if len(clips) < batch:
            raise ValueError(
                f"train.per_device_batch_size x devices = {batch} rows: more than the {len(clips)} training clips"
            )
        self.clips, self.segment_frames, self.hop, self.batch, self.seed = clips, segment_frames, hop, batch, seed
        self.steps_per_epoch = len(clips) // batch
        self._order = grain.MapDataset.range(len(clips)).shuffle(seed=seed).repeat()

    def rows(self, step: int) -> list[tuple[int, int]]:
        """The (clip, start frame) of each row of global step `step`."""
        epoch, index = divmod(step, self.steps_per_epoch)
        first = epoch * len(self.clips) + index * self.batch
        rows = []
        for item in range(first, first + self.batch):
            clip = int(self._order[item])
            room = self.clips[clip].num_frames - self.segment_frames + 1
            start = int(np.random.default_rng([self.seed, epoch, clip]).integers(0, room))
            rows.append((clip, start))
        return rows

    def plan(self, step: int) -> tuple[list[tuple[int, int]], int]:
        return self.rows(step), step + 1

    def build(self, rows: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """The arrays of `rows` (module docstring)."""
        frames, hop = self.segment_frames, self.hop
        batch = {
            "units": np.zeros((len(rows), frames), np.int32),
            "audio": np.zeros((len(rows), frames * hop), np.float32),
            "run_units": np.zeros((len(rows), frames), np.int32),
            "run_frames": np.zeros((len(rows), frames), np.int32),
            "num_runs": np.zeros((len(rows),), np.int32),
        }
        for row, (index, start) in enumerate(rows):
            clip = self.clips[index]
            units = clip.frame_units[start : start + frames]
            samples = clip.samples[start * hop : (start + frames) * hop]  # a clip's audio may end early: zeros
            batch["units"][row] = units
            batch["audio"][row, : len(samples)] = samples
            run_units, run_frames = runs(units)
            batch["run_units"][row, : len(run_units)] = run_units
            batch["run_frames"][row, : len(run_units)] = run_frames
            batch["num_runs"][row] = len(run_units)
        return batch


def runs(frame_units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit, length) of each run of equal consecutive frame units."""
    starts = np.flatnonzero(np.concatenate([[True], frame_units[1:] != frame_units[:-1]]))
    return frame_units[starts], np.diff(np.concatenate([starts, [len(frame_units)]]))


def batches(segments: Segments, rows: list[int] | None, start: int) -> pipeline.GlobalBatches:
    """This process's `rows` of every global step from step `start`, built ahead by reader threads."""
    return pipeline.GlobalBatches(segments.plan, segments.build, rows=rows, start=start)


def describe(entries: list) -> str:
    """What the clips are, for the run manifest: count, frames and a digest of their names and units."""
    import hashlib

    digest = hashlib.sha256()
    for _, file_name, units, durations in entries:
        digest.update(json.dumps([file_name, units.tolist(), durations.tolist()]).encode())
    frames = sum(int(durations.sum()) for *_, durations in entries)
    return f"{len(entries)} clips, {frames} frames, sha256 {digest.hexdigest()[:16]}"
