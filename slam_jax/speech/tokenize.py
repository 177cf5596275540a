"""`mode: tokenize`: audio files -> deduplicated units, the reference's `features.jsonl` (docs/recipe.md §1).

    python -m slam_jax.main --config configs/tokenize.py --config.tokenize.data_path=DIR [--workdir W]

The output folder (`tokenize.out_path`, default WORKDIR/units) holds:
    features.jsonl   one line per tokenised file, {"units": [...], "duration": [...], "file_name": "..."}:
                     the reference's format (`duration[i]` = frames that carried `units[i]`, one frame =
                     `frame_samples` / 16000 s); in file-list order, however many hosts made them
    errors.jsonl     one line per file not (fully) tokenised: {"file_name", "reason", "tokenized"};
                     `tokenized: true` marks a file cut at `max_seconds` whose units are in features.jsonl
    tokenizer.json   what the units depend on (encoder, layer, centroids, frame size, padding, ...)
    report.json      the counts of the last run, over all hosts
    store/           the unit store of features.jsonl (`tokenize.store`)
    parts/           the same lines per shard of `shard_size` files, each written atomically; the two
                     .jsonl files above are rebuilt from them once every shard of every host is done
Resume: a shard whose part exists is skipped, so a re-run after a kill redoes only unfinished shards and no
line is ever written twice. A re-run into a folder made with other settings is refused.

Buckets (gs://, s3://; `slam_jax.paths`): `data_path` may name audio objects (streamed, audio.py),
`kmeans_path` a bucket object (read into memory), `encoder_path` a bucket folder (copied once into the local
cache, `paths.local_copy`) and `out_path` a bucket folder. There every file above is one upload, so atomic by
itself: a part exists complete or not at all, and a kill leaves no half-written object behind; the store is
staged locally and uploaded with its manifests last (`files.atomic_dir`). The parts present are found by one
listing per run, not one request per shard. An out_path whose bucket does not exist fails before any work.

Work flow per shard: file headers are probed (for durations) and files are read, mixed to mono and
resampled by a thread pool, longest first, while the main thread runs the encoder on batches of
similar-length windows; each host takes every `process_count`-th file of the sorted list.

Several hosts (`jax.distributed`, one process each, `out_path` on a filesystem or in a bucket they share):
each writes its own parts (named after the host), then all wait at a barrier; process 0 alone merges the parts,
writes the store and report.json (whichever host finished last), and the others wait at a second barrier and
return the report it wrote.
"""

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator

import jax
import numpy as np
from ml_collections import ConfigDict

from slam_jax import parallel, paths, progress
from slam_jax.data import ingest
from slam_jax.errors import DataError
from slam_jax.files import write_text
from slam_jax.models import hubert, kmeans
from slam_jax.paths import Path
from slam_jax.settings import Settings, setting
from slam_jax.speech import audio, units
from slam_jax.speech import encoder as unit_encoder
from slam_jax.speech import features as spectral

FEATURES = "features.jsonl"
ERRORS = "errors.jsonl"
DESCRIPTION = "tokenizer.json"
REPORT = "report.json"
PARTS = "parts"
STORE = "store"  # the project's unit store (train/ + valid/) of features.jsonl, ready for pre-training
FITTED_CENTROIDS = "centroids.npy"
CPU_MICRO_BATCH = 2  # rows per step on a CPU device: small buffers run ~10% faster there than all 8 at once
CPU_CONV_CHUNK_FRAMES = 25  # conv front-end window on a CPU (1 s at 25 Hz): its buffers stay in cache
MFCC = "mfcc"


@dataclasses.dataclass(frozen=True)
class MfccSettings(Settings):
    """`tokenize.mfcc`: the frames of the offline encoder (`encoder_path='mfcc'`; speech/features.py)."""

    kind: str = setting("mfcc", choices=spectral.KINDS)
    frame_samples: int = setting(640, above=0)
    n_fft: int = setting(1024, above=0)
    num_mels: int = setting(40, above=0)
    num_mfcc: int = setting(20, above=0)

    def validate(self) -> None:
        if self.n_fft < self.frame_samples:
            raise ValueError(f"{self._source}.n_fft={self.n_fft}: must be >= frame_samples ({self.frame_samples})")
        if self.num_mfcc > self.num_mels:
            raise ValueError(f"{self._source}.num_mfcc={self.num_mfcc}: must be <= num_mels ({self.num_mels})")

    def spectral_config(self) -> spectral.SpectralConfig:
        return spectral.SpectralConfig(
            kind=self.kind,
            frame_samples=self.frame_samples,
            n_fft=self.n_fft,
            num_mels=self.num_mels,
            num_mfcc=self.num_mfcc,
        )


@dataclasses.dataclass(frozen=True)
class TokenizeSettings(Settings):
    """`tokenize`: audio -> units (configs/tokenize.py explains each key). The eval, generate, synthesize and dpo
    jobs carry the same section for their audio.

    Path checks that need the encoder to run (`check_files`) are separate: a job whose input may hold no audio
    (eval or generate on units, DPO on unit rows) accepts the default paths of an encoder it never loads.
    """

    data_path: str = ""  # comma list, folders, list files or globs: audio.list_audio reads (and checks) it
    out_path: str = ""
    encoder_path: str = "models/mhubert_25hz"
    layer: int = setting(11, minimum=0)
    kmeans_path: str = "models/mhubert_25hz_L11_km500.npy"
    compute_dtype: str = setting("float32", choices=hubert.COMPUTE_DTYPES)
    reference_padding: bool = False
    dedup: bool = True
    max_seconds: float = setting(3600.0, minimum=0.0)
    window_seconds: float = setting(60.0, minimum=0.0)
    window_overlap_seconds: float = setting(2.0, minimum=0.0)
    batch_size: int = setting(8, above=0)
    num_devices: int = setting(0, minimum=0)
    micro_batch: int = setting(0, minimum=0)
    buckets_per_octave: int = setting(8, minimum=0)
    scan_layers: bool = False
    conv_chunk_frames: int = setting(-1, minimum=-1)
    num_workers: int = setting(4, minimum=0)
    shard_size: int = setting(256, above=0)
    store: bool = True
    valid_fraction: float = setting(0.01, minimum=0.0, maximum=1.0)
    progress: bool = True
    fit_units: int = setting(0, minimum=0)
    fit_max_files: int = setting(1000, above=0)
    fit_max_frames: int = setting(200_000, above=0)
    fit_num_init: int = setting(1, above=0)
    mfcc: MfccSettings = MfccSettings()

    def validate(self) -> None:
        if self.reference_padding and self.encoder_path == MFCC:
            raise ValueError(
                f"{self._source}.reference_padding=True: applies to HuBERT encoders, not to encoder_path='mfcc'"
            )
        if self.window_seconds and self.window_overlap_seconds >= self.window_seconds:
            raise ValueError(
                f"{self._source}.window_overlap_seconds={self.window_overlap_seconds}: must be shorter than "
                f"window_seconds ({self.window_seconds})"
            )

    def check_files(self) -> None:
        """The encoder and the centroids exist, unless they need none (mfcc) or are fitted first (`fit_units`)."""
        if self.encoder_path != MFCC and not Path(self.encoder_path).exists():
            raise FileNotFoundError(
                f"{self._source}.encoder_path={self.encoder_path!r}: no such encoder folder (or use 'mfcc')"
            )
        if self.kmeans_path and not self.fit_units and not Path(self.kmeans_path).exists():
            raise FileNotFoundError(
                f"{self._source}.kmeans_path={self.kmeans_path!r}: no such file (fit_units > 0 fits it there)"
            )


@dataclasses.dataclass(frozen=True)
class TokenizeJob(Settings):
    """A whole `mode: tokenize` config; also what other jobs hand to `tokenize` for their audio."""

    mode: str = setting("tokenize", choices=("tokenize",))
    seed: int = 0  # k-means fitting only
    tokenize: TokenizeSettings = TokenizeSettings()

    def validate(self) -> None:
        self.tokenize.check_files()


def run(config: ConfigDict, workdir: Path) -> dict:
    """`mode: tokenize`: the config checked into a `TokenizeJob`, then `tokenize`."""
    return tokenize(TokenizeJob.from_config(config, "config"), workdir)


def tokenize(job: TokenizeJob, workdir: Path, alone: bool = False) -> dict:
    """Tokenise `tokenize.data_path` into `tokenize.out_path` (default WORKDIR/units); returns (and saves) the
    report. Every process of a multi-host job calls it and takes its share of the files, unless `alone`: then this
    process tokenises every file as a one-host job would (a step that one process runs for all, e.g. DPO's pairs)."""
    settings = job.tokenize
    parallel.maybe_initialize()
    host = (0, 1) if alone else (jax.process_index(), jax.process_count())
    if not settings.data_path:
        raise ValueError("tokenize.data_path is empty: give an audio folder, list file or glob")
    out = Path(settings.out_path or Path(workdir) / "units")
    paths.check_bucket(out)
    files = audio.list_audio(settings.data_path)
    if not files:
        raise FileNotFoundError(f"{settings.data_path}: no audio files ({', '.join(audio.AUDIO_SUFFIXES)})")
    encoder = build_encoder(settings)
    centroids_path = Path(settings.kmeans_path) if settings.kmeans_path else out / FITTED_CENTROIDS
    with concurrent.futures.ThreadPoolExecutor(max(1, settings.num_workers)) as pool:
        encoder.set_centroids(_centroids(settings, centroids_path, encoder, files, pool, job.seed, host))
        _claim_folder(out, describe(settings, encoder, centroids_path), host)
        counts = _tokenize_host(files, encoder, pool, settings, out, host)
    report = _finish(files, settings, out, counts, encoder.num_units, host)
    print(
        f"tokenized {report['tokenized']} of {report['files']} files ({report['failed']} failed, "
        f"{report['truncated']} truncated, {report['resumed_files']} from an earlier run) -> {out}; "
        f"{report['audio_seconds_per_second']:.1f} audio s/s"
    )
    return report


def build_encoder(settings: TokenizeSettings) -> unit_encoder.UnitEncoder:
    """The HuBERT (converted encoder dir) or MFCC frame encoder that the settings name, without centroids."""
    devices = jax.local_devices()[: settings.num_devices or None]
    options = dict(
        batch_size=settings.batch_size,
        devices=devices,
        buckets_per_octave=settings.buckets_per_octave,
        micro_batch=micro_batch(settings.micro_batch, devices),
    )
    if settings.encoder_path == MFCC:
        return unit_encoder.spectral_encoder(settings.mfcc.spectral_config(), None, **options)
    model = hubert.load_encoder(
        paths.local_copy(settings.encoder_path),
        compute_dtype=settings.compute_dtype,
        scan_layers=settings.scan_layers,
        conv_chunk_frames=conv_chunk_frames(settings.conv_chunk_frames, devices),
    )
    return unit_encoder.hubert_encoder(model, settings.layer, None, settings.reference_padding, **options)


def micro_batch(requested: int, devices: list[jax.Device]) -> int:
    """Rows per step on each device: as requested, or (0) CPU_MICRO_BATCH on CPUs and all rows elsewhere."""
    return requested or (CPU_MICRO_BATCH if devices[0].platform == "cpu" else 0)


def conv_chunk_frames(requested: int, devices: list[jax.Device]) -> int:
    """Conv front-end window in frames: as requested (0 = the whole input), or (-1) CPU_CONV_CHUNK_FRAMES on CPUs
    and the whole input elsewhere (an accelerator runs one large conv faster than a loop of small ones)."""
    if requested < -1:
        raise ValueError(f"tokenize.conv_chunk_frames = {requested}: use -1 (auto), 0 (whole input) or a frame count")
    if requested >= 0:
        return requested
    return CPU_CONV_CHUNK_FRAMES if devices[0].platform == "cpu" else 0


def describe(settings: TokenizeSettings, encoder: unit_encoder.UnitEncoder, centroids_path: Path) -> dict:
    """The settings that change units: a folder's units are only ever extended with the same ones."""
    is_mfcc = settings.encoder_path == MFCC
    return {
        "encoder": MFCC if is_mfcc else str(paths.absolute(settings.encoder_path)),
        "layer": None if is_mfcc else settings.layer,
        "mfcc": settings.mfcc.to_dict() if is_mfcc else None,
        "kmeans": str(paths.absolute(centroids_path)),
        "num_units": encoder.num_units,
        "sample_rate": audio.SAMPLE_RATE,
        "frame_samples": encoder.frame_samples,
        "reference_padding": settings.reference_padding,
        "compute_dtype": None if is_mfcc else settings.compute_dtype,
        "max_seconds": settings.max_seconds,
        "window_seconds": settings.window_seconds,
        "window_overlap_seconds": settings.window_overlap_seconds,
        "dedup": settings.dedup,
    }


def _claim_folder(out: Path, description: dict, host: tuple[int, int]) -> None:
    """Check that the folder's tokenizer.json matches `description` (every process), or write it (process 0)."""
    path = out / DESCRIPTION
    if path.is_file():
        existing = json.loads(path.read_text())
        changed = sorted(
            key for key in description.keys() | existing.keys() if existing.get(key) != description.get(key)
        )
        if changed:
            raise ValueError(
                f"{out}: holds units made with other settings ({', '.join(changed)}); use another out_path"
            )
        return
    if host[0] == 0:
        write_text(path, json.dumps(description, indent=2) + "\n")


def _centroids(settings: TokenizeSettings, path: Path, encoder, files: list[str], pool, seed: int, host) -> np.ndarray:
    """The centroids at `path`, fitted first on this data's features if absent and `fit_units` asks for it."""
    if path.is_file() or not settings.fit_units:
        return kmeans.load_centroids(path)
    if host[1] > 1:
        raise ValueError("fitting k-means (tokenize.fit_units) runs on one host; fit first, then tokenise on many")
    sample = files[:: max(1, len(files) // settings.fit_max_files)][: settings.fit_max_files]
    cap = min((limit for limit in (settings.window_seconds, settings.max_seconds) if limit > 0), default=0.0)
    loaded = [item for _, item in _prefetch(pool, sample, cap, depth=2 * encoder.rows) if isinstance(item, audio.Audio)]
    frames = [
        feature
        for start in range(0, len(loaded), encoder.rows)
        for feature in encoder.features([item.samples for item in loaded[start : start + encoder.rows]])
    ]
    data = np.concatenate(frames) if frames else np.zeros((0, 0), np.float32)
    if len(data) > settings.fit_max_frames:
        data = data[np.random.default_rng(seed).choice(len(data), settings.fit_max_frames, replace=False)]
    centroids = kmeans.fit(data, settings.fit_units, seed=seed, num_init=settings.fit_num_init)
    return np.asarray(kmeans.load_centroids(kmeans.save_centroids(path, centroids)))


def shard_plan(files: list[str], shard_size: int, host: int, hosts: int) -> list[tuple[str, list[str]]]:
    """This host's shards: (part name, files). The name carries a digest of the files, so a changed list
    makes new parts instead of reusing stale ones."""
    mine = files[host::hosts]
    shards = []
    for index, begin in enumerate(range(0, len(mine), shard_size)):
        chunk = mine[begin : begin + shard_size]
        digest = hashlib.sha1("\n".join(chunk).encode()).hexdigest()[:12]
        shards.append((f"{_host_prefix(host, hosts)}shard{index:06d}-{digest}", chunk))
    return shards


def _tokenize_host(files, encoder, pool, settings: TokenizeSettings, out: Path, host) -> collections.Counter:
    """Every unfinished shard of this host (`host`: (index, count)); this run's counts."""
    shards = shard_plan(files, settings.shard_size, *host)
    parts = out / PARTS
    if not paths.is_remote(parts):  # a bucket has no folders to make, and its writes leave no half-written file
        parts.mkdir(parents=True, exist_ok=True)
        for leftover in parts.glob(f".{_host_prefix(*host)}*.tmp-*"):
            leftover.unlink()  # a write this host started when it was killed
    done = _part_files(parts)
    counts = collections.Counter()
    start = time.perf_counter()
    total = len(files[host[0] :: host[1]])
    with progress.Progress("tokenize", total, unit="file", enabled=settings.progress) as bar:
        for name, shard in shards:
            if f"{name}.jsonl" in done:
                counts["resumed_files"] += len(shard)
                bar.update(len(shard))
                continue
            records, errors = _tokenize_shard(shard, encoder, pool, settings, counts, bar, start)
            write_text(parts / f"{name}.{ERRORS}", "".join(units.to_line(error) for error in errors))
            write_text(parts / f"{name}.jsonl", "".join(units.to_line(record) for record in records))
    counts["seconds"] = time.perf_counter() - start
    return counts


def _finish(files: list[str], settings: TokenizeSettings, out: Path, counts: collections.Counter, num_units, host):
    """Once every host's parts are written: process 0 merges them, writes the store and report.json; every
    process returns that report (the same on every host, whichever host finished last)."""
    index, hosts = host
    totals = _sum_counts(parallel.gather_json(dict(counts)) if hosts > 1 else [counts])
    if hosts > 1:
        parallel.barrier("slam_jax: tokenize parts written")
    if index == 0:
        names = _all_part_names(files, settings.shard_size, hosts)
        written = _read_parts(out / PARTS, names)
        merged = _merge_if_complete(files, names, written, out)
        report = _report(files, names, written, out, totals)
        if settings.store and merged:
            report["store"] = _write_store(out, num_units, settings.valid_fraction)
        write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    if hosts > 1:
        parallel.barrier("slam_jax: tokenize report written")
    return report if index == 0 else json.loads((out / REPORT).read_text())


def _sum_counts(per_host: list[dict]) -> collections.Counter:
    """The counts of all hosts: summed, except `seconds`, the longest host's (the hosts run side by side)."""
    totals = collections.Counter()
    for counts in per_host:
        totals.update({key: value for key, value in counts.items() if key != "seconds"})
    totals["seconds"] = max(counts.get("seconds", 0.0) for counts in per_host)
    totals["hosts"] = len(per_host)
    return totals


def _tokenize_shard(files, encoder, pool, settings, counts, bar, start) -> tuple[list[dict], list[dict]]:
    """Records and error entries of one shard, both in file order."""
    durations = list(pool.map(audio.probe_seconds, files))
    order = sorted(range(len(files)), key=lambda index: -durations[index])
    batcher = _Batcher(encoder, settings)
    errors: dict[int, dict] = {}
    for index, item in _prefetch(pool, [files[i] for i in order], settings.max_seconds, 2 * encoder.rows, order):
        reason = item if isinstance(item, str) else _too_short(item, encoder)
        if reason:
            errors[index] = {"file_name": files[index], "reason": reason, "tokenized": False}
            counts["failed"] += 1
            bar.update(1)
            continue
        if item.truncated:
            reason = (
                f"longer than max_seconds: kept the first {settings.max_seconds:g} s of {item.source_seconds:.1f} s"
            )
            errors[index] = {"file_name": files[index], "reason": reason, "tokenized": True}
            counts["truncated"] += 1
        for done in batcher.add(index, item.samples):
            _count_done(done, counts, bar, start, encoder)
    for done in batcher.flush():
        _count_done(done, counts, bar, start, encoder)
    records = [units.record(batcher.results[i], files[i], settings.dedup) for i in sorted(batcher.results)]
    return records, [errors[i] for i in sorted(errors)]


def _too_short(item: audio.Audio, encoder) -> str:
    if encoder.num_frames(len(item.samples) + 2 * encoder.item_padding) > 0:
        return ""
    return f"too short: {len(item.samples)} samples at 16 kHz make no {encoder.frame_samples}-sample frame"


def _count_done(frames: np.ndarray, counts, bar, start: float, encoder) -> None:
    counts["tokenized_this_run"] += 1
    counts["frames_this_run"] += len(frames)
    counts["audio_samples_this_run"] += len(frames) * encoder.frame_samples
    seconds = counts["audio_samples_this_run"] / audio.SAMPLE_RATE
    bar.update(1, **{"audio-s/s": f"{seconds / (time.perf_counter() - start):.1f}"})


class _Batcher:
    """Collects windows of files into batches, encodes them, and stitches each file's units back together."""

    def __init__(self, encoder: unit_encoder.UnitEncoder, settings: TokenizeSettings):
        self.encoder, self.settings = encoder, settings
        self.queue: list[tuple[int, int, audio.Window, np.ndarray]] = []
        self.pieces: dict[int, list] = {}
        self.results: dict[int, np.ndarray] = {}

    def add(self, index: int, samples: np.ndarray) -> list[np.ndarray]:
        """Queue a file; returns the frame units of the files completed by the batches this ran."""
        spans = audio.windows(
            len(samples),
            self.encoder.frame_samples,
            self.settings.window_seconds,
            self.settings.window_overlap_seconds,
        )
        self.pieces[index] = [None] * len(spans)
        self.queue += [(index, number, span, samples[span.start : span.end]) for number, span in enumerate(spans)]
        done = []
        while len(self.queue) >= self.encoder.rows:
            done += self._run(self.encoder.rows)
        return done

    def flush(self) -> list[np.ndarray]:
        done = []
        while self.queue:
            done += self._run(min(len(self.queue), self.encoder.rows))
        return done

    def _run(self, size: int) -> list[np.ndarray]:
        batch, self.queue = self.queue[:size], self.queue[size:]
        outputs = self.encoder.encode([samples for _, _, _, samples in batch])
        done = []
        for (index, number, span, _), frames in zip(batch, outputs, strict=True):
            pieces = self.pieces[index]
            pieces[number] = frames[span.keep_start : span.keep_end]
            if all(piece is not None for piece in pieces):
                self.results[index] = np.concatenate(self.pieces.pop(index))
                done.append(self.results[index])
        return done


def _prefetch(pool, paths: list[str], max_seconds: float, depth: int, keys=None) -> Iterator[tuple[int, object]]:
    """(key, Audio or the reason it failed) per path, in order, keeping `depth` reads in flight."""
    keys = list(range(len(paths))) if keys is None else keys
    pending = collections.deque()
    for key, path in zip(keys, paths, strict=True):
        pending.append((key, pool.submit(_read, path, max_seconds)))
        if len(pending) >= depth:
            yield _resolve(pending.popleft())
    while pending:
        yield _resolve(pending.popleft())


def _resolve(entry) -> tuple[int, object]:
    key, future = entry
    return key, future.result()


def _read(path: str, max_seconds: float) -> audio.Audio | str:
    try:
        return audio.read_audio(path, max_seconds)
    except Exception as error:  # noqa: BLE001 - any failure of one file becomes its line in the errors file
        return " ".join(str(error).split()) or type(error).__name__


def _write_store(out: Path, num_units: int, valid_fraction: float) -> dict:
    """OUT/store from OUT/features.jsonl (rewritten whole on every run); a folder of failures gets none."""
    try:
        summary = ingest.prepare(str(out / FEATURES), out / STORE, num_units, valid_fraction, overwrite=True)
    except DataError as error:
        return {"path": None, "reason": str(error)}
    return {"path": str(out / STORE), "train_tokens": summary["train_num_tokens"]}


def _read_parts(parts: Path, names: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """{part name: (its features lines, its error lines)} of the parts of `names` that are written (a part is
    written once its features file exists: its errors file is written just before it)."""
    present = _part_files(parts)
    return {
        name: (_lines(parts / f"{name}.jsonl"), _lines(parts / f"{name}.{ERRORS}"))
        for name in names
        if f"{name}.jsonl" in present
    }


def _part_files(parts: Path) -> set[str]:
    """The names of the files in the parts folder, by one listing (none if it does not exist yet)."""
    try:
        return {child.name for child in parts.iterdir()}
    except FileNotFoundError:
        return set()


def _merge_if_complete(files: list[str], names: list[str], written: dict, out: Path) -> bool:
    """Rebuild features.jsonl and errors.jsonl from the parts, in file-list order (as one host writes them),
    once every host's shards are there; False (and a note) if some are missing."""
    missing = [name for name in names if name not in written]
    if missing:
        print(f"{out / PARTS}: {len(missing)} of {len(names)} parts missing, no features.jsonl (is out_path shared?)")
        return False
    position = {file: index for index, file in enumerate(files)}
    for column, target in ((0, FEATURES), (1, ERRORS)):
        lines = [line for name in names for line in written[name][column]]
        lines.sort(key=lambda line: position[json.loads(line)["file_name"]])
        write_text(out / target, "".join(f"{line}\n" for line in lines))
    return True


def _all_part_names(files: list[str], shard_size: int, hosts: int) -> list[str]:
    """The part names of every host's shards, host after host."""
    return [name for host in range(hosts) for name, _ in shard_plan(files, shard_size, host, hosts)]


def _report(files: list[str], names: list[str], written: dict, out: Path, counts: collections.Counter) -> dict:
    """Counts over every host's shards (earlier runs included) and this run's speed over all hosts (over the
    tokenising itself: reading, encoding, writing; not loading the encoder or fitting k-means)."""
    seconds = counts["seconds"]
    errors = [json.loads(line) for name in names if name in written for line in written[name][1]]
    tokenized = sum(len(written[name][0]) for name in names if name in written)
    audio_seconds = counts["audio_samples_this_run"] / audio.SAMPLE_RATE
    return {
        "files": len(files),
        "hosts": counts["hosts"],
        "tokenized": tokenized,
        "failed": sum(not error["tokenized"] for error in errors),
        "truncated": sum(bool(error["tokenized"]) for error in errors),
        "resumed_files": counts["resumed_files"],
        "tokenized_this_run": counts["tokenized_this_run"],
        "frames_this_run": counts["frames_this_run"],
        "audio_seconds_this_run": round(audio_seconds, 3),
        "seconds": round(seconds, 3),
        "audio_seconds_per_second": round(audio_seconds / seconds, 3) if seconds else 0.0,
        "files_per_second": round(counts["tokenized_this_run"] / seconds, 3) if seconds else 0.0,
        "merged": (out / FEATURES).is_file(),
        "out": str(paths.absolute(out)),
    }


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _host_prefix(host: int, hosts: int) -> str:
    return f"host{host:04d}of{hosts:04d}-"
