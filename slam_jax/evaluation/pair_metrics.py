"""`mode: eval`: pair metrics (sBLIMP, sStoryCloze, tStoryCloze, sWUGGY, SALMon, or a pairs jsonl), and the
generative metrics GenPPL, Auto-BLEU (genppl.py) and the LLM judge (llm_judge.py).

    python -m slam_jax.main --config configs/eval.py --config.eval.metric=tstorycloze \\
        --config.eval.data_path=DIR --config.eval.model=PATH [--workdir W]

Per metric, WORKDIR/eval/ gets `<metric>.json` ({"metric", "accuracy", "num_pairs", "model", "breakdown", ...};
accuracy is a fraction, ties count 0.5) and `<metric>_pairs.jsonl` (each pair's utterances and scores), and a
table is printed. A pair whose audio cannot be tokenised (empty, unreadable, too short) is skipped and
listed with the reason under "skipped"; bad layouts and missing files are errors that name the file.

Several hosts (`jax.distributed`, one process each): the audio is tokenised by all hosts (the tokeniser splits the
files), the scoring batches are dealt out to the processes and their scores gathered (scoring.py: the same scores
as one process with as many local devices), and process 0 alone writes the files while the others wait.
"""

import dataclasses
import json
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from slam_jax import parallel, paths, tokens
from slam_jax.errors import DataError
from slam_jax.evaluation import genppl, scoring
from slam_jax.evaluation import pairs as pair_io
from slam_jax.evaluation.genppl import GenPplSettings
from slam_jax.files import write_text
from slam_jax.models import config as model_config
from slam_jax.models import storage
from slam_jax.models.speech_lm import load_model
from slam_jax.paths import Path
from slam_jax.settings import Settings, setting
from slam_jax.speech import audio_units
from slam_jax.speech.tokenize import TokenizeSettings


@dataclasses.dataclass(frozen=True)
class EvalSettings(Settings):
    """`eval`: which metrics, on which data, with which model (configs/eval.py explains each key)."""

    metric: str = "tstorycloze"  # comma list; any name for a pairs .jsonl, so pairs.read_benchmark checks it
    data_path: str = ""  # one per metric, comma list: the readers check each
    model: str = setting("", exists=True)
    compute_dtype: str = setting("float32", choices=("", *model_config.COMPUTE_DTYPES))  # '' = the model's own
    batch_size: int = setting(32, above=0)
    salmon_parts: str = "all"
    units_cache: str = ""  # '' = WORKDIR/units_cache
    progress: bool = True
    genppl: GenPplSettings = GenPplSettings()  # the generative metrics' models and protocol


@dataclasses.dataclass(frozen=True)
class EvalJob(Settings):
    """A whole `mode: eval` config: the metrics and the tokeniser of their audio (not checked for files until
    there is audio to tokenise: pairs of units need none)."""

    mode: str = setting("eval", choices=("eval",))
    seed: int = 0  # the generative metrics' sampling (prompt i from (seed, i)); k-means fitting of an mfcc tokeniser
    eval: EvalSettings = EvalSettings()
    tokenize: TokenizeSettings = TokenizeSettings()


def run(config: ConfigDict, workdir: Path) -> dict[str, dict]:
    """`mode: eval`: the config checked into an `EvalJob`, then `evaluate_all`."""
    return evaluate_all(EvalJob.from_config(config, "config"), workdir)


def evaluate_all(job: EvalJob, workdir: Path) -> dict[str, dict]:
    """Score every configured metric with one model; returns {metric: result}."""
    settings = job.eval
    parallel.maybe_initialize()
    paths.check_bucket(workdir)  # before the work, not at its first write
    metrics = _split(settings.metric)
    data_paths = _split(settings.data_path)
    if not metrics:
        raise ValueError(
            "eval.metric is empty: name sblimp, sstorycloze, tstorycloze, swuggy, salmon, genppl, auto_bleu or "
            "llm_judge"
        )
    if len(data_paths) != len(metrics):
        raise ValueError(f"eval.data_path: {len(data_paths)} path(s) for {len(metrics)} metric(s); give one per metric")
    if not settings.model:
        raise ValueError("eval.model is empty: give a converted model dir, a training workdir or a checkpoint")
    model_dir = storage.resolve_model_dir(settings.model)
    model = load_model(model_dir, compute_dtype=settings.compute_dtype or None)
    scorer = scoring.Scorer(model, settings.batch_size, progress=settings.progress, split_over_processes=True)
    results, generative = {}, {}
    for metric, data_path in zip(metrics, data_paths, strict=True):
        if pair_io.canonical_metric(metric) in genppl.METRICS:
            generative.setdefault(data_path, []).append(pair_io.canonical_metric(metric))
        else:
            results[metric] = evaluate(metric, data_path, scorer, job, Path(workdir), str(paths.absolute(model_dir)))
    if results:
        print(table(results))
    for data_path, names in generative.items():  # one generation, vocoding and transcription per prompt set
        results |= genppl.evaluate(
            names,
            data_path,
            model,
            settings.genppl,
            job.tokenize,
            settings.units_cache or Path(workdir) / "units_cache",
            job.seed,
            settings.batch_size,
            Path(workdir) / "eval",
            str(paths.absolute(model_dir)),
            settings.progress,
        )
    return results


def evaluate(metric: str, data_path: str, scorer: scoring.Scorer, job: EvalJob, workdir: Path, model: str) -> dict:
    """One metric: read its pairs, get their units, score, and write the results files."""
    start = time.perf_counter()
    name = pair_io.canonical_metric(metric)
    pairs = pair_io.read_benchmark(name, data_path, job.eval.salmon_parts)
    units, failed = _audio_units(pairs, job, workdir)
    kept, skipped = [], []
    for pair in pairs:
        bad = [side for side in (pair.positive, pair.negative) if isinstance(side, str) and _key(side) in failed]
        if bad:
            skipped.append({"pair": pair.pair_id, "file": bad[0], "reason": failed[_key(bad[0])]})
        else:
            kept.append(pair)
    if not kept:
        raise DataError(f"{name}: all {len(pairs)} pairs skipped, e.g. {skipped[0]['file']}: {skipped[0]['reason']}")
    num_units = scorer.config.vocab_size - tokens.UNIT_OFFSET
    sequences = [
        tokens.unit_sequence(_units(side, units, num_units, pair.pair_id))
        for pair in kept
        for side in (pair.positive, pair.negative)
    ]
    score_start = time.perf_counter()
    log_likelihoods = scorer(sequences)
    score_seconds = time.perf_counter() - score_start
    positive, negative = log_likelihoods[0::2], log_likelihoods[1::2]
    per_pair = scoring.outcomes(positive, negative)
    result = {
        "metric": name,
        "accuracy": float(np.mean(per_pair)),
        "num_pairs": len(kept),
        "model": model,
        "breakdown": scoring.breakdown([pair.subset for pair in kept], per_pair),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "data_path": str(paths.absolute(data_path)),
        "compute_dtype": scorer.config.compute_dtype,
        "seconds": round(time.perf_counter() - start, 3),
        "pairs_per_second": round(len(kept) / score_seconds, 3),
    }
    rows = [
        {
            "id": pair.pair_id,
            "subset": pair.subset,
            "positive": _describe(pair.positive),
            "negative": _describe(pair.negative),
            "positive_log_likelihood": float(pos),
            "negative_log_likelihood": float(neg),
            "score": float(outcome),
        }
        for pair, pos, neg, outcome in zip(kept, positive, negative, per_pair, strict=True)
    ]
    out = workdir / "eval"
    if jax.process_index() == 0:  # every process holds the same result; one writes it
        write_text(out / f"{name}.json", json.dumps(result, indent=2) + "\n")
        write_text(out / f"{name}_pairs.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    parallel.barrier(f"slam_jax: eval {name} written")
    return result


def table(results: dict[str, dict]) -> str:
    """Accuracy (percent), pairs and skips per metric, with each metric's subsets indented below it."""
    lines = [f"{'metric':32s} {'accuracy':>9s} {'pairs':>7s} {'skipped':>8s}"]
    for result in results.values():
        accuracy = 100 * result["accuracy"]
        lines.append(f"{result['metric']:32s} {accuracy:8.2f}% {result['num_pairs']:7d} {result['num_skipped']:8d}")
        for subset, row in result["breakdown"].items():
            lines.append(f"  {subset:30s} {100 * row['accuracy']:8.2f}% {row['num_pairs']:7d}")
    return "\n".join(lines)


def _split(values: str) -> list[str]:
    return [value.strip() for value in str(values).split(",") if value.strip()]


def _key(path: str) -> str:
    return str(paths.absolute(path))


def _audio_units(pairs, job: EvalJob, workdir: Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Units of every audio file the pairs name (through the cache), and the reasons of the failures."""
    files = sorted({_key(side) for pair in pairs for side in (pair.positive, pair.negative) if isinstance(side, str)})
    if not files:
        return {}, {}
    cache = job.eval.units_cache or workdir / "units_cache"
    return audio_units.audio_units(job.tokenize, files, cache, seed=job.seed)


def _units(side, units: dict[str, list[int]], num_units: int, pair_id: str) -> list[int]:
    values = units[_key(side)] if isinstance(side, str) else list(side)
    if values and not 0 <= min(values) <= max(values) < num_units:
        where = f"the units of {side}" if isinstance(side, str) else "its units"
        raise DataError(f"pair {pair_id}: {where} go outside [0, {num_units}), the model's unit range")
    return values


def _describe(side) -> str | list[int]:
    return side if isinstance(side, str) else list(side)
