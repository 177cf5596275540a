"""Preference rows whose prompt / chosen / rejected are audio files: tokenised once, then rows of units.

A field that is a string not starting with `<Un` names an audio file (absolute, or relative to its jsonl's
folder). Every such file of every row goes through the tokeniser (`TokenizeSettings`, cached like the eval's
audio in `units_cache`), and the rows are rewritten with `{"units": [...]}` into one jsonl that
`preference.prepare` reads. Each rewritten row carries its file:line in the user's jsonl, and a field whose audio
file is missing or cannot be tokenised carries why instead of units, so that `prepare` reports the row as a bad
row there (an error naming the user's file:line, or a counted skip).

The jsonl, its audio files, the output folder and the cache may each be local or in a bucket (gs://, s3://): a
relative audio path in a jsonl in a bucket names an object beside it, and the audio of a bucket folder is found by
one listing of that folder, not one request per file.
"""

import hashlib
import json
from collections import defaultdict

from slam_jax import paths
from slam_jax.data.preference import AUDIO_ERROR, ORIGIN
from slam_jax.files import expand_paths, read_records, write_text
from slam_jax.paths import Path, absolute
from slam_jax.speech.audio_units import audio_units
from slam_jax.speech.tokenize import TokenizeSettings

FIELDS = ("prompt", "chosen", "rejected")


def audio_path(value, base: Path) -> Path | None:
    """The audio file a field names, or None when the field holds units."""
    if not isinstance(value, str) or value.lstrip().startswith("<Un"):
        return None
    path = Path(value)
    return path if path.is_absolute() else base / path


def _existing_files(names: set[str]) -> set[str]:
    """Those of `names` (absolute paths or bucket URLs) that are files: a local file is checked by itself, the
    objects of a bucket folder by one listing of the folder."""
    found, folders = set(), defaultdict(set)
    for name in names:
        if paths.is_remote(name):
            folders[name.rsplit("/", 1)[0]].add(name)
        elif Path(name).is_file():
            found.add(name)
    for folder, wanted in folders.items():
        scheme = folder.split("://", 1)[0]
        with paths.naming(folder):
            try:
                listing = paths.filesystem(folder).ls(paths.object_key(folder), detail=True)
            except FileNotFoundError:
                continue
        objects = {f"{scheme}://{entry['name'].rstrip('/')}" for entry in listing if entry.get("type") == "file"}
        found |= wanted & objects
    return found


def resolve(spec: str, tokenize_settings: TokenizeSettings, out_dir: Path, cache: Path, seed: int = 0) -> str:
    """`spec` itself when no row names audio; otherwise the path of a jsonl with every audio field as units."""
    rows, named = [], set()
    for path in expand_paths(spec):
        for where, record in read_records(path):
            audio = {field: audio_path(record.get(field), path.parent) for field in FIELDS}
            named |= {str(absolute(file)) for file in audio.values() if file is not None}
            rows.append((where, record, audio))
    files = _existing_files(named)
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
            key = str(absolute(file))
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
