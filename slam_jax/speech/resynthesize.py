"""`mode: resynthesize`: audio -> units -> audio, the round trip that checks a tokeniser and a vocoder together.

    python -m slam_jax.main --config configs/resynthesize.py --config.resynthesize.data_path=AUDIO \\
        --config.resynthesize.vocoder=DIR [--config.tokenize.KEY=VALUE] [--workdir W]

Each file is tokenised by the `tokenize` section through the unit cache (speech/audio_units.py), its units spoken
by the vocoder (speech/vocoders.py `load_vocoder`) and written to the output folder (`resynthesize.out_path`,
default WORKDIR/resynthesize):
    <name>.wav          16-bit at the vocoder's rate; <name> is the file's path below the inputs' common folder
    resynthesis.jsonl   one line per file written, in input order: {"file_name", "units" (how many were
                        vocoded), "wav" (relative to this folder), "input_seconds", "output_seconds"}
    summary.json        the counts, the vocoder, the files that could not be tokenised and why
With `tokenize.dedup` false every frame is a unit, played for one frame: the output lasts the input's frames
(`frames * hop_length` samples). With it true the units are deduplicated and the vocoder predicts how long each
lasts, as it does for generated units. A unit the vocoder does not know stops the job with an error naming the
file; the lines of the files already written are kept.
The audio, the vocoder, the output folder and the unit cache may each be local or in a bucket (gs://, s3://); a
bucket's wavs are named by their keys below the inputs' common folder, as local files are.
"""

import dataclasses
import json
import time

import jax
from ml_collections import ConfigDict

from slam_jax import parallel, paths
from slam_jax.files import write_text
from slam_jax.paths import Path, absolute
from slam_jax.progress import track
from slam_jax.settings import Settings, setting
from slam_jax.speech import audio, audio_units, vocoders
from slam_jax.speech.tokenize import TokenizeSettings

LINES, SUMMARY = "resynthesis.jsonl", "summary.json"


@dataclasses.dataclass(frozen=True)
class ResynthesizeSettings(Settings):
    """`resynthesize`: the audio, the vocoder and where the wavs go (configs/resynthesize.py explains each key)."""

    data_path: str = ""  # audio folder / list / glob: audio.list_audio reads (and checks) it
    vocoder: str = setting("", exists=True)
    out_path: str = ""  # '' = WORKDIR/resynthesize
    num_files: int = setting(0, minimum=0)  # 0 = all
    units_cache: str = ""  # '' = WORKDIR/units_cache
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class ResynthesizeJob(Settings):
    """A whole `mode: resynthesize` config: the round trip and the tokeniser of its audio."""

    mode: str = setting("resynthesize", choices=("resynthesize",))
    seed: int = 0  # k-means fitting only
    resynthesize: ResynthesizeSettings = ResynthesizeSettings()
    tokenize: TokenizeSettings = TokenizeSettings()

    def validate(self) -> None:
        self.tokenize.check_files()


def run(config: ConfigDict, workdir: Path) -> dict:
    """`mode: resynthesize`: the config checked into a `ResynthesizeJob`, then `resynthesize`."""
    return resynthesize(ResynthesizeJob.from_config(config, "config"), workdir)


def output_names(files: list[str]) -> list[Path]:
    """Each file's `<name>.wav`: its path below the files' common folder, suffix replaced; a one-line error if two
    files would share one. Files in a bucket are named by their keys (below `<scheme>/<bucket>` when the files are
    not all in one bucket)."""
    if not files:
        return []
    folders = [_parts(file)[:-1] for file in files]
    common = 0
    while all(len(parts) > common and parts[common] == folders[0][common] for parts in folders):
        common += 1
    names = [Path(*_parts(file)[common:]).with_suffix(".wav") for file in files]
    seen: dict[Path, str] = {}
    for file, name in zip(files, names, strict=True):
        if name in seen:
            raise ValueError(f"{seen[name]} and {file} would both be resynthesised as {name}: rename one")
        seen[name] = file
    return names


def _parts(file: str) -> tuple[str, ...]:
    """The components of a file's absolute path: ('', folders..., name) locally, ('gs', bucket, key parts...) for
    a bucket object (so that no name starts with '/', even below no common folder)."""
    if paths.is_remote(file):
        scheme, key = file.split("://", 1)
        return (scheme, *(part for part in key.split("/") if part and part != "."))
    return ("", *Path(file).absolute().parts[1:])


def _inside(file: str, folder: Path) -> bool:
    """Whether `file` is or lies inside `folder` (symlinks resolved; a bucket object only inside a bucket folder)."""
    if paths.is_remote(file) or paths.is_remote(folder):
        if paths.is_remote(file) != paths.is_remote(folder):
            return False
        return _parts(file)[: len(_parts(str(folder)))] == _parts(str(folder))
    return Path(file).resolve().is_relative_to(folder.resolve())


def resynthesize(job: ResynthesizeJob, workdir: Path) -> dict:
    """Tokenise, vocode and write every file of `resynthesize.data_path`; returns (and saves) the summary."""
    settings = job.resynthesize
    parallel.maybe_initialize()  # before the vocoder touches JAX: a no-op for one process
    if not settings.data_path:
        raise ValueError("resynthesize.data_path is empty: give an audio folder, list file or glob")
    if not settings.vocoder:
        raise ValueError(
            "resynthesize.vocoder is empty: give a vocoder folder, an MFCC tokeniser folder or its centroids .npy"
        )
    out = Path(settings.out_path or Path(workdir) / "resynthesize")
    files = audio.list_audio(settings.data_path)[: settings.num_files or None]
    if not files:
        raise FileNotFoundError(f"{settings.data_path}: no audio files ({', '.join(audio.AUDIO_SUFFIXES)})")
    inside = [file for file in files if _inside(file, out)]
    if inside:
        raise ValueError(f"resynthesize.out_path={str(out)!r}: holds input audio ({inside[0]}); use another folder")
    names = output_names(files)
    paths.check_bucket(out)  # a missing bucket fails before any work, not at the first wav
    dedup = job.tokenize.dedup
    vocoder = vocoders.load_vocoder(settings.vocoder, job.tokenize.mfcc)
    if job.tokenize.dedup and not vocoder.predicts_durations:
        raise ValueError(
            f"tokenize.dedup=True: the vocoder {settings.vocoder} has no duration predictor to time deduplicated "
            "units; set it false to keep one unit per frame"
        )
    cache = settings.units_cache or Path(workdir) / "units_cache"
    units, failed = audio_units.audio_units(job.tokenize, files, cache, job.seed)
    start = time.perf_counter()
    todo = [(str(absolute(file)), name) for file, name in zip(files, names, strict=True)]
    todo = [(key, name) for key, name in todo if key in units]
    mine = range(jax.process_index(), len(todo), jax.process_count())  # file i on process i mod P
    written, error = [], None
    try:
        for index in track(mine, "resynthesize", unit="file", enabled=settings.progress):
            key, name = todo[index]
            try:
                written.append([index, _resynthesize_file(key, units[key], vocoder, out, name, settings, dedup)])
            except ValueError as caught:
                error = [index, str(caught)]
                break
    finally:  # the files written so far stay named, whatever stopped the loop (every process gets here)
        shares = parallel.gather_json([written, error])
        lines = [line for _, line in sorted((pair for share, _ in shares for pair in share), key=lambda pair: pair[0])]
        if jax.process_index() == 0:  # every process holds every line; one writes them
            write_text(out / LINES, "".join(json.dumps(line) + "\n" for line in lines))
        parallel.barrier("slam_jax: resynthesis lines written")
    errors = sorted(error for _, error in shares if error is not None)
    if errors:  # the first file in input order that could not be vocoded, on every process
        raise ValueError(errors[0][1])
    summary = {
        "data_path": settings.data_path,
        "vocoder": str(absolute(settings.vocoder)),
        "sample_rate": vocoder.sample_rate,
        "predict_durations": job.tokenize.dedup,
        "files": len(files),
        "resynthesized": len(lines),
        "skipped": [{"file": file, "reason": reason} for file, reason in failed.items()],
        "output_seconds": round(sum(line["output_seconds"] for line in lines), 3),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if jax.process_index() == 0:
        write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    parallel.barrier("slam_jax: resynthesis summary written")
    print(
        f"resynthesized {len(lines)} of {len(files)} files ({len(failed)} not tokenised) -> {out}; "
        f"{summary['output_seconds']:.1f} s of audio in {summary['seconds']:.1f} s"
    )
    return summary


def _resynthesize_file(
    file: str, units: list[int], vocoder, out: Path, name: Path, settings: ResynthesizeSettings, dedup: bool
) -> dict:
    """Vocode one file's units into OUT/name; its line."""
    try:
        wave = vocoder.vocode(units, predict_durations=dedup)
    except ValueError as error:
        raise ValueError(f"resynthesize.vocoder={settings.vocoder!r}: {file}: {error}") from None
    vocoders.write_wav(out / name, wave, vocoder.sample_rate)
    return {
        "file_name": file,
        "units": len(units),
        "wav": str(name),
        "input_seconds": round(audio.probe_seconds(file), 3),
        "output_seconds": round(len(wave) / vocoder.sample_rate, 3),
    }
