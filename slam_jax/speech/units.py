"""Unit sequences: deduplication with durations, and the `features.jsonl` line the reference writes.

One line per file: `{"units": [...], "duration": [...], "file_name": "..."}`; `duration[i]` is how many
consecutive frames carried `units[i]` (all ones without dedup), so sum(duration) is the file's frame count.
"""

import json

import numpy as np


def dedup(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse runs of equal consecutive units: (one unit per run, run lengths)."""
    frames = np.asarray(frames)
    if frames.size == 0:
        return frames.astype(np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], frames[1:] != frames[:-1]]))
    lengths = np.diff(np.concatenate([starts, [frames.size]]))
    return frames[starts].astype(np.int64), lengths.astype(np.int64)


def record(frames: np.ndarray, file_name: str, deduplicate: bool = True) -> dict:
    """The features.jsonl record of one file's frame units."""
    if deduplicate:
        units, durations = dedup(frames)
    else:
        units, durations = np.asarray(frames, np.int64), np.ones(len(frames), np.int64)
    return {"units": units.tolist(), "duration": durations.tolist(), "file_name": file_name}


def to_line(values: dict) -> str:
    return json.dumps(values) + "\n"
