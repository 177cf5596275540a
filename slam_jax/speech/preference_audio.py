"""Preference rows whose prompt / chosen / rejected are audio files: tokenised once, then rows of units.

A field that is a string not starting with `<Un` names an audio file (absolute, or relative to its jsonl's
folder). Every such file of every row goes through the tokeniser (`TokenizeSettings`, cached like the eval's
audio in `units_cache`), and the rows are rewritten with `{"units": [...]}` into one jsonl that
`preference.prepare` reads. Each rewritten row carries its file:line in the user's jsonl, and a field whose audio
file is missing or cannot be tokenised carries why instead of units, so that `prepare` reports the row as a bad
row there (an error naming the user's file:line, or a counted skip).
"""

import hashlib
import json

from slam_jax.data.preference import AUDIO_ERROR, ORIGIN
from slam_jax.files import expand_paths, read_records, write_text
from slam_jax.paths import Path
from slam_jax.speech.audio_units import audio_units
from slam_jax.speech.tokenize import TokenizeSettings

FIELDS = ("prompt", "chosen", "rejected")


def audio_path(value, base: Path) -> Path | None:
    """The audio file a field names, or None when the field holds units."""
    if not isinstance(value, str) or value.lstrip().startswith("<Un"):
        return None
    path = Path(value)
    return path if path.is_absolute() else base / path


def resolve(spec: str, tokenize_settings: TokenizeSettings, out_dir: Path, cache: Path, seed: int = 0) -> str:
    """`spec` itself when no row names audio; otherwise the path of a jsonl with every audio field as units."""
    rows, files = [], set()
    for path in expand_paths(spec):
        for where, record in read_records(path):
            audio = {field: audio_path(record.get(field), path.parent) for field in FIELDS}
            files |= {str(file.absolute()) for file in audio.values() if file is not None and file.is_file()}
            rows.append((where, record, audio))
    if not any(file for _, _, audio in rows for file in audio.values()):
        return spec
    # DPO prepares its pairs on process 0 while the others wait: this process tokenises every file
    units, failed = audio_units(tokenize_settings, sorted(files), cache, seed=seed, alone=True) if files else ({}, {})
    lines = []
    for where, record, audio in rows:
        resolved = {**record, ORIGIN: where}
        for field, file in audio.items():
            if file is None:
                continue
            key = str(file.absolute())
            if key in units:
                resolved[field] = {"units": units[key]}
                continue
            reason = failed.get(key) or ("not a file" if file.exists() else "no such file")
            resolved[field] = {AUDIO_ERROR: f"audio file {record[field]!r} ({key}): {reason}"}
        lines.append(json.dumps(resolved) + "\n")
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    target = out_dir / f"preference-units-{digest}.jsonl"
    write_text(target, "".join(lines))
    return str(target)
