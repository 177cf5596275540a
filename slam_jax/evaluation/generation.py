"""`mode: generate`: continue prompts (the first seconds of audio files, or units) and report Auto-BLEU.

    python -m slam_jax.main --config configs/generate.py --config.generate.data_path=AUDIO_OR_JSONL \\
        --config.generate.model=PATH [--workdir W]

Prompt = `[BOS] + units + 2` of the first `prompt_seconds` of each file (tokenised through the eval unit cache;
no EOS), or, for a units jsonl (features.jsonl / tokens.jsonl lines), the units whose frames start within
`prompt_seconds` (by their `duration`; lines without durations are used whole). Output, in WORKDIR/generate/:
    generations.jsonl  one line per prompt, in input order: {"file_name", "prompt_units", "units" (the
                       continuation, up to its EOS), "ended" (EOS reached), "auto_bleu_<n>" (over prompt +
                       continuation, the span the reference transcribes), "auto_bleu_<n>_continuation"}
                       and, with a vocoder, "wav_full" and "wav_continuation" (paths relative to this folder)
    summary.json       settings, counts, mean Auto-BLEU, tokens/s, skipped files and why (and the audio written)
    audio/             with `generate.vocoder`: <index>_full.wav (prompt + continuation) and
                       <index>_continuation.wav (16-bit, at the vocoder's rate) of the i-th line
Row i samples from (seed, i), so a prompt's continuation does not depend on batch size or order. The vocoder is
loaded before sampling (a wrong path stops the job first) and the units are written before any audio, so a
vocoder that refuses a unit loses none of them.

Several hosts (`jax.distributed`, one process each): the audio prompts are tokenised by all hosts, the sampling
batches are dealt out to the processes (batch b to process b mod P, each the batch one process would run, so the
continuations are those of one process with as many local devices) and gathered, each host vocodes every P-th
prompt into its wavs, and process 0 alone writes generations.jsonl and summary.json while the others wait.
"""

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from slam_jax import parallel, paths, tokens
from slam_jax.data import ingest
from slam_jax.data.auto_bleu import auto_bleu
from slam_jax.errors import DataError
from slam_jax.files import read_records, write_text
from slam_jax.models import config as model_config
from slam_jax.models import sampling, storage
from slam_jax.models.speech_lm import SpeechLM, load_model
from slam_jax.paths import Path
from slam_jax.progress import track
from slam_jax.settings import Settings, setting
from slam_jax.speech import audio, audio_units, vocoders
from slam_jax.speech.tokenize import TokenizeSettings

GENERATIONS, SUMMARY, AUDIO = "generations.jsonl", "summary.json", "audio"
_REPORTED_SETTINGS = (
    "prompt_seconds",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "compute_dtype",
)


@dataclasses.dataclass(frozen=True)
class GenerateSettings(Settings):
    """`generate`: the model, the prompts and how to sample (configs/generate.py explains each key)."""

    model: str = setting("", exists=True)
    data_path: str = ""  # audio folder / list / glob or a units .jsonl: audio.list_audio or the jsonl reader checks it
    num_prompts: int = setting(0, minimum=0)  # 0 = all
    prompt_seconds: float = setting(3.0, minimum=0.0)  # 0 = the whole file
    frame_seconds: float = setting(0.04, above=0.0)
    # The sampling limits are those of sampling.SamplingSettings, checked here to name the key.
    max_new_tokens: int = setting(150, minimum=1)
    temperature: float = setting(0.8, minimum=0.0)  # 0 = greedy
    top_k: int = setting(25, minimum=0)  # 0 = off
    top_p: float = setting(1.0, above=0.0, maximum=1.0)
    repetition_penalty: float = setting(1.0, above=0.0)
    batch_size: int = setting(32, above=0)
    compute_dtype: str = setting("float32", choices=("", *model_config.COMPUTE_DTYPES))  # '' = the model's own
    auto_bleu_n: int = setting(2, above=0)
    units_cache: str = ""  # '' = WORKDIR/units_cache
    progress: bool = True
    vocoder: str = setting("", exists=True)  # '' = no audio; speech/vocoders.py `load_vocoder` reads it
    predict_durations: bool = True

    def sampling_settings(self) -> sampling.SamplingSettings:
        return sampling.SamplingSettings(
            self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.repetition_penalty
        )


@dataclasses.dataclass(frozen=True)
class GenerateJob(Settings):
    """A whole `mode: generate` config: the sampling and the tokeniser of audio prompts (not checked for files
    unless the prompts are audio)."""

    mode: str = setting("generate", choices=("generate",))
    seed: int = 0  # prompt i samples from (seed, i)
    generate: GenerateSettings = GenerateSettings()
    tokenize: TokenizeSettings = TokenizeSettings()


def run(config: ConfigDict, workdir: Path) -> dict:
    """`mode: generate`: the config checked into a `GenerateJob`, then `generate`."""
    return generate(GenerateJob.from_config(config, "config"), workdir)


def generate(job: GenerateJob, workdir: Path) -> dict:
    """Generate a continuation of every prompt; returns (and saves) the summary."""
    settings = job.generate
    parallel.maybe_initialize()
    paths.check_bucket(workdir)  # before the work, not at its first write
    if not settings.model:
        raise ValueError("generate.model is empty: give a converted model dir, a training workdir or a checkpoint")
    if not settings.data_path:
        raise ValueError("generate.data_path is empty: give audio (folder, list, glob) or a units .jsonl")
    vocoder = load_vocoder(job) if settings.vocoder else None
    model_dir = storage.resolve_model_dir(settings.model)
    model = load_model(model_dir, compute_dtype=settings.compute_dtype or None)
    num_units = model.config.vocab_size - tokens.UNIT_OFFSET
    names, prompts, skipped = read_prompts(job, Path(workdir), num_units)
    start = time.perf_counter()
    prompt_ids = [
        np.concatenate([[tokens.BOS_ID], np.asarray(units, np.int64) + tokens.UNIT_OFFSET]) for units in prompts
    ]
    new_ids = generate_batched(
        model,
        prompt_ids,
        settings.sampling_settings(),
        settings.batch_size,
        job.seed,
        settings.progress,
        split_over_processes=True,
    )
    seconds = time.perf_counter() - start
    records = [
        _record(name, prompt, row, settings.auto_bleu_n)
        for name, prompt, row in zip(names, prompts, new_ids, strict=True)
    ]
    summary = _summary(records, skipped, job, str(paths.absolute(model_dir)), seconds)
    out = Path(workdir) / "generate"
    write_outputs(out, records, summary)
    if vocoder is not None:
        records, summary["audio"] = write_audio(records, vocoder, out, settings)
        write_outputs(out, records, summary)
    parallel.barrier("slam_jax: generations written")
    n = settings.auto_bleu_n
    whole, generated = summary[f"auto_bleu_{n}"], summary[f"auto_bleu_{n}_continuation"]
    print(
        f"generated {summary['new_tokens']} tokens for {len(records)} prompts ({len(skipped)} skipped) in "
        f"{seconds:.1f} s ({summary['tokens_per_second']:.1f} tokens/s); Auto-BLEU-{n} {100 * whole:.2f}% "
        f"(continuation only {100 * generated:.2f}%) -> {out / GENERATIONS}"
    )
    return summary


def load_vocoder(job: GenerateJob):
    """The vocoder of `generate.vocoder` (a centroids file read with `tokenize.mfcc`), checked to predict the
    units' durations if `generate.predict_durations` asks it to."""
    settings = job.generate
    vocoder = vocoders.load_vocoder(settings.vocoder, job.tokenize.mfcc)
    if settings.predict_durations and not vocoder.predicts_durations:
        raise ValueError(
            f"generate.predict_durations=True: the vocoder {settings.vocoder} has no duration predictor; set it "
            "false to play each unit for one frame"
        )
    return vocoder


def write_outputs(out: Path, records: list[dict], summary: dict) -> None:
    """generations.jsonl and summary.json, each written atomically (by process 0 of a multi-host job)."""
    if jax.process_index() != 0:
        return
    write_text(out / GENERATIONS, "".join(json.dumps(record) + "\n" for record in records))
    write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")


def write_audio(records: list[dict], vocoder, out: Path, settings: GenerateSettings) -> tuple[list[dict], dict]:
    """Each record's prompt + continuation and continuation alone as wavs in OUT/audio/: the records naming them
    (relative to OUT), and what was written. Of a multi-host job, each process writes every `process_count`-th
    record's wavs."""
    named, durations = [], []
    for index, record in enumerate(records):
        wavs = {f"wav_{key}": f"{AUDIO}/{index:04d}_{key}.wav" for key in ("full", "continuation")}
        named.append(record | wavs)
        if index % jax.process_count() != jax.process_index():
            continue
        try:
            waves = speak(
                vocoder, [record["prompt_units"] + record["units"], record["units"]], settings.predict_durations
            )
        except ValueError as error:
            raise ValueError(
                f"generate.vocoder={settings.vocoder!r}: line {index + 1} of {out / GENERATIONS} "
                f"({record['file_name']}): {error} (units_list[0]: prompt + continuation, [1]: continuation)"
            ) from None
        for key, wave in zip(("full", "continuation"), waves, strict=True):
            vocoders.write_wav(out / wavs[f"wav_{key}"], wave, vocoder.sample_rate)
            durations.append((index, len(wave) / vocoder.sample_rate))
    # summed in record order, whichever process wrote each wav: the same float as one process
    everyone = sorted(sum(parallel.gather_json(durations), []), key=lambda pair: pair[0])
    seconds = sum(duration for _, duration in everyone)
    print(f"[generate] {2 * len(records)} wav files ({seconds:.1f} s of audio) -> {out / AUDIO}")
    written = {
        "vocoder": str(paths.absolute(settings.vocoder)),
        "predict_durations": settings.predict_durations,
        "sample_rate": vocoder.sample_rate,
        "files": 2 * len(records),
        "seconds": round(seconds, 3),
    }
    return named, written


def speak(vocoder, sequences: list[list[int]], predict_durations: bool) -> list[np.ndarray]:
    """The waveform of each unit sequence; an empty one (a continuation that ended at once) is 0 samples, which
    a vocoder would refuse."""
    spoken = [units for units in sequences if units]
    waves = iter(vocoder.vocode_batch(spoken, predict_durations) if spoken else [])
    return [next(waves) if units else np.zeros(0, np.float32) for units in sequences]


def read_prompts(job: GenerateJob, workdir: Path, num_units: int) -> tuple[list[str], list[list[int]], list[dict]]:
    """(names, prompt units, skipped files with reasons), the first `num_prompts` in sorted input order."""
    settings = job.generate
    if Path(settings.data_path).suffix == ".jsonl":
        names, prompts = _jsonl_prompts(Path(settings.data_path), settings, num_units)
        return names, prompts, []
    files = audio.list_audio(settings.data_path)
    files = files[: settings.num_prompts or None]
    if not files:
        raise FileNotFoundError(f"{settings.data_path}: no audio files")
    cache = settings.units_cache or workdir / "units_cache"
    units, failed = audio_units.audio_units(job.tokenize, files, cache, job.seed, settings.prompt_seconds)
    keys = [str(paths.absolute(file)) for file in files]
    skipped = [{"file": key, "reason": failed[key]} for key in keys if key in failed]
    kept = [key for key in keys if key in units]
    if not kept:
        raise DataError(f"{settings.data_path}: no prompt could be tokenised, e.g. {skipped[0]}")
    return kept, [units[key] for key in kept], skipped


def generate_batched(
    model: SpeechLM,
    prompt_ids: list[np.ndarray],
    settings: sampling.SamplingSettings,
    batch_size: int,
    seed: int,
    progress: bool = False,
    split_over_processes: bool = False,
) -> np.ndarray:
    """New ids [len(prompt_ids), max_new_tokens]: length-sorted batches sharded over the local devices; row i of
    the input samples from (seed, i) whatever its batch. `split_over_processes`: batch b runs on process b mod P of
    a multi-host job (every process calls this with the same prompts), and the rows are gathered on every one."""
    mesh = parallel.local_mesh()
    devices = parallel.data_parallel_size(mesh)
    rows = -(-batch_size // devices) * devices
    graphdef, state = nnx.split(model.model)
    state = jax.device_put(state, parallel.replicated(mesh))
    batch_sharding = parallel.batch_sharding(mesh)
    row_sharding = parallel.batch_sharding(mesh, trailing_axes=0)
    order = np.argsort([-len(ids) for ids in prompt_ids], kind="stable")
    new_ids = np.zeros((len(prompt_ids), settings.max_new_tokens), np.int32)
    starts = range(0, len(order), rows)
    if split_over_processes:
        starts = starts[jax.process_index() :: jax.process_count()]
    for start in track(starts, "generating", unit="batch", enabled=progress):
        chosen = order[start : start + rows]
        fillers = [np.array([tokens.BOS_ID])] * (rows - len(chosen))
        batch = sampling.left_pad([prompt_ids[i] for i in chosen] + fillers)
        row_ids = np.concatenate([chosen, len(prompt_ids) + np.arange(len(fillers))]).astype(np.int32)
        result = sampling.generate(
            graphdef,
            state,
            jax.device_put(jnp.asarray(batch), batch_sharding),
            jax.device_put(jnp.asarray(row_ids), row_sharding),
            jnp.int32(seed),
            settings,
        )
        new_ids[chosen] = np.asarray(result)[: len(chosen)]
    if split_over_processes:
        mine = np.concatenate([order[start : start + rows] for start in starts] or [np.zeros(0, np.int64)])
        for indices, values in parallel.gather_json([mine.tolist(), new_ids[mine].tolist()]):
            new_ids[indices] = np.asarray(values, np.int32).reshape(len(indices), settings.max_new_tokens)
    return new_ids


def continuation(new_ids: np.ndarray) -> tuple[list[int], bool]:
    """The generated units (up to the first non-unit id) and whether the sequence ended with EOS."""
    stops = np.flatnonzero(new_ids < tokens.UNIT_OFFSET)
    end = int(stops[0]) if stops.size else len(new_ids)
    ended = bool(stops.size) and int(new_ids[end]) == tokens.EOS_ID
    return (new_ids[:end] - tokens.UNIT_OFFSET).tolist(), ended


def crop_to_seconds(
    units: np.ndarray, durations: np.ndarray | None, seconds: float, frame_seconds: float
) -> np.ndarray:
    """The units whose first frame starts before `seconds` (all of them without durations or with seconds 0)."""
    if durations is None or seconds <= 0:
        return units
    starts = np.cumsum(durations) - durations
    return units[starts * frame_seconds < seconds - 1e-9]


def _jsonl_prompts(path: Path, settings: GenerateSettings, num_units: int) -> tuple[list[str], list[list[int]]]:
    names, prompts = [], []
    for where, record in read_records(path):
        units = ingest.parse_units(record, where, num_units)
        durations = np.asarray(record["duration"], np.int64) if "duration" in record else None
        if durations is not None and durations.shape != units.shape:
            raise DataError(f"{where}: 'duration' has {durations.size} entries for {units.size} units")
        names.append(str(record.get("file_name", where)))
        prompts.append(crop_to_seconds(units, durations, settings.prompt_seconds, settings.frame_seconds).tolist())
        if len(names) == settings.num_prompts:
            break
    if not names:
        raise DataError(f"{path}: no prompts")
    return names, prompts


def _record(name: str, prompt: list[int], new_ids: np.ndarray, n: int) -> dict:
    units, ended = continuation(new_ids)
    return {
        "file_name": name,
        "prompt_units": list(prompt),
        "units": units,
        "ended": ended,
        f"auto_bleu_{n}": auto_bleu(list(prompt) + units, n),
        f"auto_bleu_{n}_continuation": auto_bleu(units, n),
    }


def _summary(records: list[dict], skipped: list[dict], job: GenerateJob, model: str, seconds: float) -> dict:
    settings = job.generate
    n = settings.auto_bleu_n
    new_tokens = sum(len(record["units"]) + record["ended"] for record in records)
    return {
        "model": model,
        "data_path": settings.data_path,
        "num_prompts": len(records),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "settings": {key: getattr(settings, key) for key in _REPORTED_SETTINGS} | {"seed": job.seed},
        f"auto_bleu_{n}": float(np.mean([record[f"auto_bleu_{n}"] for record in records])),
        f"auto_bleu_{n}_continuation": float(np.mean([record[f"auto_bleu_{n}_continuation"] for record in records])),
        "new_tokens": int(new_tokens),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(new_tokens / seconds, 3),
    }
