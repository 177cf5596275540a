"""GenPPL and Auto-BLEU of generated speech (`eval.metric=genppl`, `auto_bleu`), as the paper: docs/recipe.md §6.

    python -m slam_jax.main --config configs/genppl.py --config.eval.data_path=SSTORYCLOZE_DIR \\
        --config.eval.model=PATH --config.eval.genppl.vocoder=DIR --config.eval.genppl.asr_model=DIR \\
        --config.eval.genppl.text_lm=DIR [--workdir W]

Per prompt: the first `prompt_seconds` of an audio file -> units (the eval tokeniser, cached) -> `max_new_tokens`
units sampled by the speech LM (temperature 0.8, top-k 25; row i from (seed, i), so nothing depends on batching)
-> prompt + continuation vocoded -> Whisper's transcript (16 kHz; `asr_decoding`: one greedy pass, or the reference's
search) -> the text LM's mean token NLL of it.
GenPPL = exp(mean over transcripts of each one's mean NLL); Auto-BLEU-2 = the mean over transcripts of the
fraction of word bigrams that occur again in the same transcript. The prompts are the "correct" file of each
pair of a pair benchmark (sStoryCloze's, as the paper) or, with `prompt_files=all`, every file of `data_path`;
files shorter than the prompt are skipped and listed. A transcript with no token to score (an empty one) has no
NLL: it is counted, listed and left out of GenPPL (the reference's mean would be NaN), and counts 0 in Auto-BLEU.

Every model (speech LM, vocoder, Whisper, text LM) runs on the local devices' mesh with its rows sharded, as
`mode: generate` does. Several hosts (`jax.distributed`): the prompts are tokenised by all hosts and the sampling
batches dealt out to the processes and gathered (generation.py: the continuations of one process with as many local
devices); vocoding, transcription and scoring then run whole on every process (the same inputs on the same local
meshes), and process 0 alone writes the files while the others wait.
Output in WORKDIR/eval/: `<metric>.json` (the summary) and `<metric>_samples.jsonl`, one line per prompt (file,
prompt units, continuation units, wav, transcript, NLL), written as soon as the units exist and again with each
later stage, and `<metric>_audio/<index>.wav`. `llm_judge` adds a stage after transcription (llm_judge.py: the
prompts' and the continuations' own transcripts rated by a local chat LM) and `llm_judge_ratings.jsonl`.
"""

import contextlib
import dataclasses
import functools
import json
import math
import time
from collections.abc import Iterator

import jax
import numpy as np

from slam_jax import parallel, paths, tokens
from slam_jax.data.auto_bleu import auto_bleu_text
from slam_jax.errors import DataError
from slam_jax.evaluation import generation, llm_judge
from slam_jax.evaluation import pairs as pair_io
from slam_jax.evaluation.text_lm import load_text_lm
from slam_jax.files import write_text
from slam_jax.models import sampling
from slam_jax.models.speech_lm import SpeechLM
from slam_jax.paths import Path
from slam_jax.settings import Settings, setting
from slam_jax.speech import audio, audio_units, vocoders
from slam_jax.speech.asr import load_asr
from slam_jax.speech.tokenize import TokenizeSettings

METRICS = ("genppl", "auto_bleu", "llm_judge")  # the first named one names the samples files
PROMPT_FILES = ("correct", "all")


@dataclasses.dataclass(frozen=True)
class GenPplSettings(Settings):
    """`eval.genppl`: the models and the protocol of the generative metrics (configs/eval.py explains each key)."""

    vocoder: str = setting("", exists=True)  # units -> audio: a converted unit vocoder (or an MFCC tokeniser dir)
    asr_model: str = setting("", exists=True)  # conversion.whisper_to_flax output
    text_lm: str = setting("", exists=True)  # conversion.hf_to_flax output of a text LM (genppl only)
    prompt_files: str = setting("correct", choices=PROMPT_FILES)
    num_prompts: int = setting(1000, minimum=0)  # 0 = all
    prompt_seconds: float = setting(3.0, above=0.0)
    max_new_tokens: int = setting(150, minimum=1)
    temperature: float = setting(0.8, minimum=0.0)
    top_k: int = setting(25, minimum=0)
    top_p: float = setting(1.0, above=0.0, maximum=1.0)
    predict_durations: bool = True
    language: str = "en"  # Whisper's transcription language, or "auto": detected per clip (the reference)
    asr_decoding: str = setting("single_pass", choices=("single_pass", "reference"))  # reference: + the seek loop
    asr_num_beams: int = setting(1, minimum=0)  # 0 = the generation config's, else the ASR pipeline's 5
    asr_max_new_tokens: int = setting(128, minimum=0, maximum=444)  # 0 = generation config's / pipeline's; <= 448 - 4
    asr_batch_size: int = setting(16, above=0)
    lm_batch_size: int = setting(16, above=0)
    lm_compute_dtype: str = setting("float32", choices=("float32", "bfloat16"))
    auto_bleu_n: int = setting(2, above=0)
    judge: llm_judge.JudgeSettings = llm_judge.JudgeSettings()  # llm_judge: the judge LM and how it answers

    def sampling_settings(self) -> sampling.SamplingSettings:
        return sampling.SamplingSettings(self.max_new_tokens, self.temperature, self.top_k, self.top_p, 1.0)


def evaluate(
    metrics: list[str],
    data_path: str,
    model: SpeechLM,
    settings: GenPplSettings,
    tokenize: TokenizeSettings,
    units_cache: str | Path,
    seed: int,
    batch_size: int,
    out: Path,
    model_name: str,
    progress: bool = False,
) -> dict[str, dict]:
    """The generative `metrics` (a subset of METRICS) on the prompts of `data_path`: {metric: summary}."""
    start, stages = time.perf_counter(), {}
    wants_lm = "genppl" in metrics
    for key, value in (("vocoder", settings.vocoder), ("asr_model", settings.asr_model)):
        if not value:
            raise ValueError(f"eval.genppl.{key} is empty: {', '.join(metrics)} need(s) it")
    if wants_lm and not settings.text_lm:
        raise ValueError("eval.genppl.text_lm is empty: genppl scores the transcripts with a text LM")
    if "llm_judge" in metrics and not settings.judge.model:
        raise ValueError("eval.genppl.judge.model is empty: llm_judge rates the continuations with a converted chat LM")
    with timed(stages, "load"):
        vocoder = load_vocoder(settings, tokenize)
        asr = load_asr(settings.asr_model)
        decoding = asr.decoding(  # checked here, before the generation; the task as the reference's: none given
            settings.asr_decoding, settings.language, None, settings.asr_num_beams, settings.asr_max_new_tokens
        )
        text_lm = load_text_lm(settings.text_lm, settings.lm_compute_dtype) if wants_lm else None
        judge = llm_judge.LLMJudge(settings.judge) if "llm_judge" in metrics else None
    with timed(stages, "prompts"):
        names, prompts, skipped = read_prompts(data_path, settings, tokenize, units_cache, seed)
    name = next(metric for metric in METRICS if metric in metrics)
    with timed(stages, "generate"):
        samples = continue_prompts(model, names, prompts, settings, batch_size, seed, progress)
    write_samples(out, name, samples)  # the units are kept whatever a later stage does
    with timed(stages, "vocode"):
        waves = speak(vocoder, samples, settings, out, name)
    samples = [sample | {"wav": f"{name}_audio/{index:04d}.wav"} for index, sample in enumerate(samples)]
    write_samples(out, name, samples)
    with timed(stages, "transcribe"):
        texts = asr.transcribe(waves, vocoder.sample_rate, batch_size=settings.asr_batch_size, decoding=decoding)
    n = settings.auto_bleu_n
    samples = [
        sample | {"transcript": text, f"auto_bleu_{n}": auto_bleu_text(text, n)}
        for sample, text in zip(samples, texts, strict=True)
    ]
    write_samples(out, name, samples)
    if text_lm is not None:
        with timed(stages, "score"):
            nlls = text_lm.nll(texts, batch_size=settings.lm_batch_size)
        samples = [
            sample | {"nll": None if math.isnan(nll) else float(nll)} for sample, nll in zip(samples, nlls, strict=True)
        ]
        write_samples(out, name, samples)
    if judge is not None:  # as the text LM: whole on every process, the same answers
        transcribe = functools.partial(asr.transcribe, batch_size=settings.asr_batch_size, decoding=decoding)
        with timed(stages, "judge_transcribe"):  # the prompts' audio and the continuations alone, as the reference
            heard = llm_judge.transcripts(
                samples, vocoder, transcribe, settings.prompt_seconds, settings.predict_durations
            )
        with timed(stages, "judge"):
            ratings = judge.rate(*heard)
        llm_judge.write_ratings(out, samples, ratings)
    summary = summarise(
        samples, skipped, settings, seed, model_name, data_path, time.perf_counter() - start, decoding.to_dict()
    )
    if judge is not None:
        summary |= llm_judge.summarise(ratings, judge.describe())
    summary["stage_seconds"] = {stage: round(seconds, 3) for stage, seconds in stages.items()}
    results = {}
    for metric in metrics:
        result = {"metric": metric, **summary, "samples": f"{name}_samples.jsonl"}
        if jax.process_index() == 0:
            write_text(out / f"{metric}.json", json.dumps(result, indent=2) + "\n")
        results[metric] = result
    parallel.barrier(f"slam_jax: {name} written")
    print(describe(summary, n))
    return results


@contextlib.contextmanager
def timed(stages: dict[str, float], stage: str) -> Iterator[None]:
    """Adds the wall time of the block to `stages[stage]` (the summary's `stage_seconds`, compilation included)."""
    start = time.perf_counter()
    yield
    stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - start


def continue_prompts(
    model: SpeechLM,
    names: list[str],
    prompts: list[list[int]],
    settings: GenPplSettings,
    batch_size: int,
    seed: int,
    progress: bool,
) -> list[dict]:
    """One sample per prompt: its file, its units and the sampled continuation (row i from (seed, i))."""
    _check_units(names, prompts, model.config.vocab_size - tokens.UNIT_OFFSET)
    prompt_ids = [
        np.concatenate([[tokens.BOS_ID], np.asarray(units, np.int64) + tokens.UNIT_OFFSET]) for units in prompts
    ]
    new_ids = generation.generate_batched(
        model, prompt_ids, settings.sampling_settings(), batch_size, seed, progress, split_over_processes=True
    )
    samples = []
    for file_name, prompt, row in zip(names, prompts, new_ids, strict=True):
        units, ended = generation.continuation(row)
        samples.append({"file_name": file_name, "prompt_units": list(prompt), "units": units, "ended": ended})
    return samples


def load_vocoder(settings: GenPplSettings, tokenize: TokenizeSettings):
    """The vocoder, checked to predict durations if `predict_durations` asks it to (the paper's does)."""
    vocoder = vocoders.load_vocoder(settings.vocoder, tokenize.mfcc)
    if settings.predict_durations and not vocoder.predicts_durations:
        raise ValueError(
            f"eval.genppl.predict_durations=True: the vocoder {settings.vocoder} has no duration predictor; set it "
            "false to play each unit for one frame"
        )
    return vocoder


def read_prompts(
    data_path: str, settings: GenPplSettings, tokenize: TokenizeSettings, units_cache: str | Path, seed: int
) -> tuple[list[str], list[list[int]], list[dict]]:
    """(file names, prompt units, skipped files with reasons): the first `num_prompts` usable prompt files."""
    files = prompt_files(data_path, settings.prompt_files)
    chosen, skipped = [], []
    for file in files:
        if len(chosen) == (settings.num_prompts or len(files)):
            break
        seconds = audio.probe_seconds(file)
        if seconds < settings.prompt_seconds:
            reason = f"{seconds:.2f} s: shorter than the {settings.prompt_seconds} s prompt"
            skipped.append({"file": file, "reason": reason})
        else:
            chosen.append(str(paths.absolute(file)))
    if not chosen:
        detail = f", e.g. {skipped[0]['file']}: {skipped[0]['reason']}" if skipped else ""
        raise DataError(f"eval.data_path={data_path}: no usable prompt file{detail}")
    units, failed = audio_units.audio_units(tokenize, chosen, units_cache, seed, settings.prompt_seconds)
    skipped += [{"file": file, "reason": failed[file]} for file in chosen if file in failed]
    kept = [file for file in chosen if file in units]
    if not kept:
        raise DataError(f"eval.data_path={data_path}: no prompt could be tokenised, e.g. {skipped[-1]}")
    return kept, [units[file] for file in kept], skipped


def prompt_files(data_path: str, which: str) -> list[str]:
    """The audio files to prompt with, in order: each pair's positive ("correct") of a pair-benchmark folder, or
    every file `data_path` names (a folder, list, glob)."""
    if which == "correct":
        if not Path(data_path).is_dir():
            raise FileNotFoundError(
                f"eval.data_path={data_path}: not a pair-benchmark folder (prompt_files=correct takes each pair's "
                "correct file; set eval.genppl.prompt_files=all for a folder, list or glob of prompts)"
            )
        return [pair.positive for pair in pair_io.read_pair_folder(Path(data_path), "_")]
    return audio.list_audio(data_path)


def speak(vocoder, samples: list[dict], settings: GenPplSettings, out: Path, name: str) -> list[np.ndarray]:
    """Each sample's prompt + continuation as audio (what the reference transcribes), also written as wavs."""
    sequences = [sample["prompt_units"] + sample["units"] for sample in samples]
    try:
        waves = generation.speak(vocoder, sequences, settings.predict_durations)
    except ValueError as error:
        raise ValueError(f"eval.genppl.vocoder={settings.vocoder!r}: {error}") from None
    for index, wave in enumerate(waves):
        if jax.process_index() == 0:  # every process holds the same waves; one writes them
            vocoders.write_wav(out / f"{name}_audio" / f"{index:04d}.wav", wave, vocoder.sample_rate)
    return waves


def genppl(nlls: list[float]) -> float:
    """exp(mean over samples of each sample's mean token NLL)."""
    return float(np.exp(np.mean(np.asarray(nlls, np.float64))))


def summarise(
    samples: list[dict],
    skipped: list[dict],
    settings: GenPplSettings,
    seed: int,
    model: str,
    data_path: str,
    seconds: float,
    asr: dict | None = None,
) -> dict:
    """The metric numbers, the counts behind them and the settings that produced them (`asr`: the transcription's,
    resolved against the Whisper's generation config: `asr.Decoding.to_dict()`)."""
    n = settings.auto_bleu_n
    scored = [sample["nll"] for sample in samples if sample.get("nll") is not None]
    empty = [sample["file_name"] for sample in samples if not sample["transcript"].strip()]
    summary = {
        "model": model,
        "data_path": str(data_path),
        "num_samples": len(samples),
        f"auto_bleu_{n}": float(np.mean([sample[f"auto_bleu_{n}"] for sample in samples])),
        "num_empty_transcripts": len(empty),
        "empty_transcripts": empty,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "settings": settings.to_dict() | {"seed": seed},
        "asr": asr,
        "seconds": round(seconds, 3),
        "seconds_per_sample": round(seconds / len(samples), 4),
    }
    if "nll" in samples[0]:
        summary |= {
            "genppl": genppl(scored) if scored else None,
            "mean_nll": float(np.mean(scored)) if scored else None,
            "num_scored": len(scored),
            "num_unscored": len(samples) - len(scored),
        }
    return summary


def describe(summary: dict, n: int) -> str:
    """One line: GenPPL (if scored), Auto-BLEU and the counts."""
    parts = []
    if "genppl" in summary:
        value = "n/a" if summary["genppl"] is None else f"{summary['genppl']:.2f}"
        parts.append(f"GenPPL {value} over {summary['num_scored']} transcripts")
    parts.append(f"Auto-BLEU-{n} {100 * summary[f'auto_bleu_{n}']:.2f}%")
    if "llm_judge" in summary:
        parts.append(llm_judge.describe(summary))
    parts.append(f"{summary['num_samples']} samples, {summary['num_empty_transcripts']} empty transcripts")
    parts.append(f"{summary['num_skipped']} files skipped, {summary['seconds']:.1f} s")
    return "; ".join(parts)


def write_samples(out: Path, name: str, samples: list[dict]) -> None:
    if jax.process_index() == 0:  # every process holds the same samples; one writes them
        write_text(out / f"{name}_samples.jsonl", "".join(json.dumps(sample) + "\n" for sample in samples))


def _check_units(names: list[str], prompts: list[list[int]], num_units: int) -> None:
    for name, units in zip(names, prompts, strict=True):
        if units and not 0 <= min(units) <= max(units) < num_units:
            raise DataError(f"{name}: its units go outside [0, {num_units}), the model's unit range")
