"""Text to speech for synthetic spoken data (sTinyStories, SpokenSwag): voices, backends and a resumable corpus job.

    synthesize("Hello there.", Voice("en-us+f3", rate=160))         -> float32 samples at 16 kHz
    synthesize_corpus("texts.jsonl", "out", num_workers=2)           -> out/audio/<id>.wav, manifest, report

Backends turn text into mono float32 at their own rate; the public functions return 16 kHz (soxr, high quality,
as in audio.py). `espeak` is built in (libespeak-ng through ctypes, from the `espeakng_loader` wheel); others,
such as a neural TTS, plug in with `register_backend(name, factory)` (a top-level callable: workers rebuild it).

Determinism: espeak-ng keeps state across utterances (a pitch "flutter" counter, a glottal cycle counter that
times "roughness", the breath-noise generator, an overflow gain control), so by default the same text spoken twice
in one process differs. The backend therefore speaks through voice variants with flutter and roughness off, reseeds
the noise per utterance and speaks at volume 75 (no overflow), from a private copy of the library and its data
(built once under the temp folder): the same text and voice then give bit-identical samples in any process and in
any order, and espeak state set by other code in the process is never shared.

Corpus output (`out_dir`):
    audio/<id>.wav   16 kHz mono 16-bit PCM, each written atomically; present files are reused (resume)
    manifest.jsonl   one line per row with audio, input order: id, file_name, text, voice, seconds
    skipped.jsonl    one line per row without audio: id, line, reason
    report.json      counts, audio seconds and speed of the run
`out_dir` and the rows' jsonl may be in a bucket (gs://, s3://): each wav is then one upload (atomic by itself),
and a resume reads the headers of the wavs the bucket already holds.
"""

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, Protocol

import espeakng_loader
import numpy as np
import soundfile
import soxr

from slam_jax import paths
from slam_jax.errors import DataError
from slam_jax.files import read_records, write_text
from slam_jax.paths import Path
from slam_jax.progress import Progress
from slam_jax.speech.audio import PROBE_BLOCK, SAMPLE_RATE

AUDIO = "audio"
MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.jsonl"
REPORT = "report.json"
DEFAULT_MAX_CHARS = 2000
ESPEAK_RATE = 22_050
_PUNCTUATION = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-"})
_PUNCTUATION.update(str.maketrans({"\u2014": " - ", "\u2026": "..."}))


@dataclasses.dataclass(frozen=True)
class Voice:
    """A speaker: an espeak voice (optionally `+variant`), words per minute and pitch 0-100 (espeak: 175, 50)."""

    name: str
    rate: int = 175
    pitch: int = 50

    def __post_init__(self):
        if not self.name or any(char in self.name for char in ":, \t\n"):
            raise ValueError(f"voice name {self.name!r}: must be non-empty, without ':', ',' or spaces")
        if not 80 <= self.rate <= 450:
            raise ValueError(f"voice {self.name}: rate {self.rate} words/min is outside espeak's 80-450")
        if not 0 <= self.pitch <= 100:
            raise ValueError(f"voice {self.name}: pitch {self.pitch} is outside 0-100")

    @property
    def spec(self) -> str:
        """The compact form `name:rate:pitch` that `parse_voice` reads back."""
        return f"{self.name}:{self.rate}:{self.pitch}"


def parse_voice(spec: str) -> Voice:
    """`name[:rate[:pitch]]`, e.g. "en-gb-x-rp+f3:160:65"; ValueError naming the spec if malformed."""
    name, *numbers = spec.strip().split(":")
    if len(numbers) > 2:
        raise ValueError(f"voice {spec!r}: expected name[:rate[:pitch]]")
    try:
        values = [int(number) for number in numbers]
    except ValueError:
        raise ValueError(f"voice {spec!r}: rate and pitch must be integers") from None
    return Voice(name, *values)


def parse_voices(specs: str) -> tuple[Voice, ...]:
    """A comma-separated list of voice specs, e.g. "en-us:175:50,en+f3:160:65"."""
    voices = tuple(parse_voice(spec) for spec in specs.split(",") if spec.strip())
    if not voices:
        raise ValueError(f"voices {specs!r}: no voice given")
    return voices


DEFAULT_VOICES = (  # four speakers, as the paper's TTS data: two male, two female, different accents and speeds
    Voice("en-us", 175, 50),
    Voice("en-gb-x-rp+f3", 165, 60),
    Voice("en-us+m3", 185, 35),
    Voice("en+f4", 160, 70),
)


def stable_index(key: str, seed: int, count: int) -> int:
    """An index in [0, count) from a stable hash of (key, seed): the same in every process and Python version."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % count


def choose_voice(key: str, seed: int, voices: tuple[Voice, ...]) -> Voice:
    """The voice of `key` (a row id): a stable hashed choice, so resuming or reordering rows keeps it."""
    return voices[stable_index(key, seed, len(voices))]


class Backend(Protocol):
    """A TTS engine: mono float32 samples in [-1, 1] at `sample_rate` for one utterance."""

    name: str
    sample_rate: int

    def synthesize(self, text: str, voice: Voice) -> np.ndarray: ...


_BACKENDS: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make `factory` (a top-level callable, so worker processes can rebuild it) available as `backend=name`."""
    _BACKENDS[name] = factory


def backend_factory(name: str) -> Callable[[], Backend]:
    if name not in _BACKENDS:
        raise ValueError(f"TTS backend {name!r} is not one of {sorted(_BACKENDS)}")
    return _BACKENDS[name]


def get_backend(name: str) -> Backend:
    """A new instance of the backend registered as `name`."""
    return backend_factory(name)()


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE_PARAMETER, _ESPEAK_VOLUME_PARAMETER, _ESPEAK_PITCH_PARAMETER = 1, 2, 3
_VOLUME = 75  # espeak's 100 can overflow, which engages a gain control that carries over to the next utterance
_NO_FLUTTER = "noflutter"
_ESPEAK_LOCK = threading.Lock()


def _private_espeak_dir() -> Path:
    """A copy of libespeak-ng and a data folder whose voice variants have flutter off (built once, atomically)."""
    library, data = Path(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())
    stamp = f"{library}:{library.stat().st_size}:{library.stat().st_mtime_ns}:{data}:2"
    target = (
        Path(tempfile.gettempdir()) / f"slam_jax-espeak-{os.getuid()}-{hashlib.sha1(stamp.encode()).hexdigest()[:12]}"
    )
    if target.is_dir():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    shutil.copy2(library, staging / library.name)
    (staging / "data").mkdir()
    for entry in data.iterdir():
        if entry.name != "voices":
            (staging / "data" / entry.name).symlink_to(entry)
    variants = staging / "data" / "voices" / "!v"
    variants.mkdir(parents=True)
    for variant in (data / "voices" / "!v").iterdir():
        (variants / variant.name).write_bytes(variant.read_bytes() + b"\nflutter 0\nroughness 0\n")
    (variants / _NO_FLUTTER).write_text(f"language variant\nname {_NO_FLUTTER}\nflutter 0\nroughness 0\n")
    try:
        staging.rename(target)
    except OSError:  # another process finished the same folder first
        shutil.rmtree(staging, ignore_errors=True)
    return target


@functools.cache
def _espeak() -> tuple[ctypes.CDLL, list]:
    """The private libespeak-ng of this process, initialised for synchronous output into a chunk list."""
    folder = _private_espeak_dir()
    library = ctypes.CDLL(str(folder / Path(espeakng_loader.get_library_path()).name))
    library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    library.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int]
    library.espeak_Synth.argtypes += [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    library.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    rate = library.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(folder / "data").encode(), 0)
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"libespeak-ng failed to initialise (returned {rate})")
    chunks: list[np.ndarray] = []

    def collect(samples, count, events):
        if count > 0:
            chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        return 0

    library.callback = _SYNTH_CALLBACK(collect)  # kept alive with the library: espeak calls it on every Synth
    library.espeak_SetSynthCallback(library.callback)
    return library, chunks


def _espeak_voice_name(name: str) -> str:
    """The name espeak loads: the voice with its own variant, else with the flutter-free one."""
    return name if "+" in name else f"{name}+{_NO_FLUTTER}"


class EspeakBackend:
    """espeak-ng through ctypes: fast formant synthesis (hundreds of times real time on one core)."""

    name = "espeak"
    sample_rate = ESPEAK_RATE

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """`text` (ASCII, see speakable_text) spoken by `voice`: float32 at 22,050 Hz."""
        with _ESPEAK_LOCK:
            library, chunks = _espeak()
            if library.espeak_SetVoiceByName(_espeak_voice_name(voice.name).encode()) != 0:
                raise ValueError(f"espeak has no voice {voice.name!r} (see espeak-ng --voices and --voices=variant)")
            library.espeak_SetParameter(_ESPEAK_RATE_PARAMETER, voice.rate, 0)
            library.espeak_SetParameter(_ESPEAK_PITCH_PARAMETER, voice.pitch, 0)
            library.espeak_SetParameter(_ESPEAK_VOLUME_PARAMETER, _VOLUME, 0)
            library.espeak_ng_SetRandSeed(1)  # breath noise: the same draws for every utterance
            chunks.clear()
            encoded = text.encode("ascii")
            status = library.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, 0, None, None)
            if status != 0 or library.espeak_Synchronize() != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status}")
            samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return samples.astype(np.float32) / 32768


register_backend("espeak", EspeakBackend)


def speakable_text(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str, str]:
    """(ASCII text to speak, "") or ("", why not): empty, too long, or nothing speakable once non-ASCII is dropped.

    Typographic quotes and dashes become ASCII, accents are stripped (NFKD), other non-ASCII characters and
    control characters are dropped and runs of whitespace become one space.
    """
    if not text.strip():
        return "", "empty_text"
    if len(text) > max_chars:
        return "", "too_long"
    decomposed = unicodedata.normalize("NFKD", text.translate(_PUNCTUATION))
    ascii_text = "".join(char for char in decomposed if char.isascii() and (char.isprintable() or char.isspace()))
    ascii_text = " ".join(ascii_text.split())
    if not any(char.isascii() and char.isalnum() for char in ascii_text):
        return "", "no_speakable_text"
    return ascii_text, ""


def to_sample_rate(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz (soxr HQ, deterministic), as audio.read_audio resamples."""
    samples = np.asarray(samples, np.float32)
    if rate != SAMPLE_RATE and samples.size:
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(samples, np.float32)


@functools.cache
def _shared_backend(name: str) -> Backend:
    return get_backend(name)


def synthesize(
    text: str, voice: Voice = DEFAULT_VOICES[0], backend: str = "espeak", max_chars: int = DEFAULT_MAX_CHARS
) -> np.ndarray:
    """`text` spoken by `voice`: mono float32 at 16 kHz; ValueError saying why if the text cannot be spoken."""
    speakable, reason = speakable_text(text, max_chars)
    if reason:
        raise ValueError(f"cannot synthesise {_preview(text)}: {reason.replace('_', ' ')} (max_chars {max_chars})")
    engine = _shared_backend(backend)
    samples = to_sample_rate(engine.synthesize(speakable, voice), engine.sample_rate)
    if not samples.size:
        raise ValueError(f"cannot synthesise {_preview(text)}: the backend produced no audio")
    return samples


def _preview(text: str) -> str:
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def write_wav(path: Path, samples: np.ndarray) -> None:
    """16 kHz mono 16-bit PCM, written to a temporary sibling and renamed into place (in a bucket: one upload)."""
    path = Path(path)
    if paths.is_remote(path):
        buffer = io.BytesIO()
        soundfile.write(buffer, np.clip(samples, -1.0, 32767 / 32768), SAMPLE_RATE, subtype="PCM_16", format="WAV")
        with paths.naming(path):
            path.write_bytes(buffer.getvalue())
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    soundfile.write(staging, np.clip(samples, -1.0, 32767 / 32768), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(staging, path)


def id_problem(identifier) -> str:
    """Why `identifier` cannot name a file under audio/ ("" if it can): a relative path without '..'."""
    if not isinstance(identifier, str) or not identifier:
        return "id must be a non-empty string"
    if identifier.startswith("/") or "\\" in identifier or "\0" in identifier:
        return f"id {identifier!r} must be a relative path with '/' separators"
    if any(part in ("", ".", "..") for part in identifier.split("/")):
        return f"id {identifier!r} must not contain empty, '.' or '..' parts"
    return ""


class Row(NamedTuple):
    """One utterance to synthesise, with where it came from for error messages."""

    id: str
    text: str
    voice: Voice
    where: str
    line: int


def _numbered(rows: str | Path | Iterable[dict]) -> Iterator[tuple[str, int, dict]]:
    """(where, line, record): `file:line` of a jsonl, or `row N` (1-based) of an iterable of dicts."""
    if isinstance(rows, (str, Path)):
        path = Path(rows)
        if path.suffix != ".jsonl":
            raise ValueError(f"{path}: rows must be a .jsonl file or an iterable of dicts")
        for where, record in read_records(path):
            yield where, int(where.rsplit(":", 1)[1]), record
        return
    for number, record in enumerate(rows, start=1):
        if not isinstance(record, dict):
            raise DataError(f"row {number}: expected a dict, got {type(record).__name__}")
        yield f"row {number}", number, record


def read_rows(rows: str | Path | Iterable[dict], voices: tuple[Voice, ...], seed: int) -> list[Row]:
    """Validated rows: a path-safe unique `id`, a string `text`, and the row's `voice` or a hashed choice."""
    result, first_seen = [], {}
    for where, line, record in _numbered(rows):
        identifier, text = record.get("id"), record.get("text")
        problem = id_problem(identifier)
        if problem:
            raise DataError(f"{where}: {problem}")
        if identifier in first_seen:
            raise DataError(f"{where}: duplicate id {identifier!r} (first at {first_seen[identifier]})")
        first_seen[identifier] = where
        if not isinstance(text, str):
            raise DataError(f"{where}: key 'text' must be a string, got {type(text).__name__}")
        try:
            voice = parse_voice(record["voice"]) if record.get("voice") else choose_voice(identifier, seed, voices)
        except ValueError as error:
            raise DataError(f"{where}: key 'voice': {error}") from None
        result.append(Row(identifier, text, voice, where, line))
    return result


class _Task(NamedTuple):
    id: str
    text: str
    voice: Voice
    path: str


class _Result(NamedTuple):
    id: str
    seconds: float
    reason: str  # why no audio was written ("" if it was)
    error: str  # a failure that stops the job (an unknown voice)


_WORKER_BACKEND: list[Backend] = []


def _init_worker(factory: Callable[[], Backend]) -> None:
    """Pool initialiser: each worker process builds its own backend (espeak is process-global C state)."""
    _WORKER_BACKEND[:] = [factory()]


def _synthesize_task(task: _Task) -> _Result:
    """Speak one row and write its wav; runs in a worker process."""
    backend = _WORKER_BACKEND[0]
    try:
        samples = to_sample_rate(backend.synthesize(task.text, task.voice), backend.sample_rate)
    except ValueError as error:
        return _Result(task.id, 0.0, "", str(error))
    if not samples.size:
        return _Result(task.id, 0.0, "no_audio", "")
    write_wav(Path(task.path), samples)
    return _Result(task.id, len(samples) / SAMPLE_RATE, "", "")


def _wav_seconds(path: Path) -> float:
    """Duration of an existing wav written by this module; 0.0 if it is absent or unreadable (synthesise again)."""
    try:
        if paths.is_remote(path):  # the header only, read through a file object
            with paths.filesystem(path).open(paths.object_key(path), "rb", block_size=PROBE_BLOCK) as handle:
                info = soundfile.info(handle)
        else:
            info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError):
        return 0.0
    return info.frames / SAMPLE_RATE if info.samplerate == SAMPLE_RATE else 0.0


def _bucket_objects(audio_dir: Path) -> set[str] | None:
    """The URLs of the objects under a bucket folder (one listing), or None for a local folder."""
    if not paths.is_remote(audio_dir):
        return None
    scheme, key = str(audio_dir).split("://", 1)
    with paths.naming(audio_dir):
        return {f"{scheme}://{name}" for name in paths.filesystem(audio_dir).find(key.rstrip("/"))}


def _remove_leftovers(audio_dir: Path) -> None:
    """Delete temporary files of writes that a killed run left half done (a bucket has none: uploads are atomic)."""
    if not paths.is_remote(audio_dir) and audio_dir.is_dir():
        for leftover in audio_dir.rglob(".*.tmp-*"):
            leftover.unlink(missing_ok=True)


def _run_tasks(factory, tasks: list[_Task], num_workers: int, progress: bool) -> Iterator[_Result]:
    """Results of `tasks` (any order) from `num_workers` spawned processes, or in this process when 0."""
    start, audio_seconds = time.perf_counter(), 0.0
    with contextlib.ExitStack() as stack:
        if num_workers > 0 and tasks:
            context = multiprocessing.get_context("spawn")  # fork is unsafe once JAX's threads are running
            pool = stack.enter_context(context.Pool(num_workers, _init_worker, (factory,)))
            chunk = max(1, min(16, len(tasks) // (8 * num_workers)))
            results = pool.imap_unordered(_synthesize_task, tasks, chunksize=chunk)
        else:
            _init_worker(factory)
            results = map(_synthesize_task, tasks)
        bar = stack.enter_context(Progress("tts", len(tasks), unit="utt", enabled=progress))
        for result in results:
            audio_seconds += result.seconds
            bar.update(1, **{"audio-s/s": f"{audio_seconds / (time.perf_counter() - start):.1f}"})
            yield result


def synthesize_corpus(
    rows: str | Path | Iterable[dict],
    out_dir: str | Path,
    backend: str = "espeak",
    voices: tuple[Voice, ...] | str = DEFAULT_VOICES,
    seed: int = 0,
    num_workers: int = 2,
    progress: bool = True,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> dict:
    """Speak every row (`{"id", "text", optional "voice"}`, a jsonl path or dicts) into `out_dir`; returns the report.

    Rows that cannot be spoken are counted by reason in skipped.jsonl; wavs already in `out_dir/audio` are reused.
    """
    start = time.perf_counter()
    voices = parse_voices(voices) if isinstance(voices, str) else tuple(voices)
    factory = backend_factory(backend)
    items = read_rows(rows, voices, seed)
    out = Path(out_dir)
    audio_dir = out / AUDIO
    paths.check_bucket(out)  # a missing bucket fails before any speech, not at the first wav
    _remove_leftovers(audio_dir)
    present = _bucket_objects(audio_dir)  # in a bucket, only the listed objects are probed
    seconds, reasons, tasks = {}, {}, []
    for item in items:
        text, reason = speakable_text(item.text, max_chars)
        path = audio_dir / f"{item.id}.wav"
        if reason:
            reasons[item.id] = reason
        elif (present is None or str(path) in present) and (existing := _wav_seconds(path)):
            seconds[item.id] = existing
        else:
            tasks.append(_Task(item.id, text, item.voice, str(path)))
    where, fresh_seconds = {item.id: item.where for item in items}, []
    for result in _run_tasks(factory, tasks, num_workers, progress):
        if result.error:
            raise DataError(f"{where[result.id]}: id {result.id!r}: {result.error}")
        if result.reason:
            reasons[result.id] = result.reason
        else:
            seconds[result.id] = result.seconds
            fresh_seconds.append(result.seconds)
    report = _corpus_report(len(items), seconds, reasons, fresh_seconds, time.perf_counter() - start)
    report.update(backend=backend, num_workers=num_workers, out=str(paths.absolute(out)))
    _write_outputs(out, items, seconds, reasons, report)
    return report


def _corpus_report(rows: int, seconds: dict, reasons: dict, fresh_seconds: list[float], wall: float) -> dict:
    """Counts and speed; `realtime_factor` = audio seconds synthesised this run per wall second."""
    return {
        "rows": rows,
        "written": len(fresh_seconds),
        "reused": len(seconds) - len(fresh_seconds),
        "skipped": dict(sorted(Counter(reasons.values()).items())),
        "skipped_total": len(reasons),
        "audio_seconds": round(sum(seconds.values()), 3),
        "audio_seconds_this_run": round(sum(fresh_seconds), 3),
        "wall_seconds": round(wall, 3),
        "realtime_factor": round(sum(fresh_seconds) / wall, 2) if wall else 0.0,
    }


def _write_outputs(out: Path, items: list[Row], seconds: dict, reasons: dict, report: dict) -> None:
    """manifest.jsonl and skipped.jsonl in input order, then report.json, each written atomically."""
    manifest = [
        {
            "id": item.id,
            "file_name": f"{AUDIO}/{item.id}.wav",
            "text": item.text,
            "voice": item.voice.spec,
            "seconds": round(seconds[item.id], 4),
        }
        for item in items
        if item.id in seconds
    ]
    skipped = [{"id": item.id, "line": item.line, "reason": reasons[item.id]} for item in items if item.id in reasons]
    write_text(out / MANIFEST, "".join(json.dumps(line) + "\n" for line in manifest))
    write_text(out / SKIPPED, "".join(json.dumps(line) + "\n" for line in skipped))
    write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
