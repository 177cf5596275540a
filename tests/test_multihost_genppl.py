"""GenPPL, Auto-BLEU and LLM-as-judge (`eval.metric=genppl,llm_judge`) on two real JAX processes (jax.distributed,
gloo) of 4 CPU devices each against one process of 8 (this one): the same summaries (transcripts' GenPPL,
Auto-BLEU, counts, the judge's mean), the same samples (prompt units, continuations, transcripts by the reference's
Whisper protocol, per-sample NLLs), wavs and judge ratings; the sampling batches dealt out between the processes
(each ran one), every output written once and by process 0, the prompts tokenised by both hosts through the unit
cache. The tiny pipeline of tests/test_genppl.py: espeak prompts, the MFCC tokeniser's inverse as the vocoder, a
random speech LM, a random Whisper and a random Llama; test_llm_judge's tiny Qwen2 judge."""

import json
import math
import re
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile
from multihost import launch, writes_by_process, written_more_than_once
from test_genppl import build_models
from test_llm_judge import converted, random_chat_qwen2

from configs import genppl as genppl_config
from slam_jax.evaluation import pair_metrics
from slam_jax.files import read_jsonl

NUM_UNITS = 20
DEVICES = 4  # per process of the two; this process has 8 (tests/conftest.py): the same total
TIMING = ("seconds", "seconds_per_sample", "stage_seconds")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """test_genppl's tiny models and prompts (6 prompts of 1 s, one 0.5 s file twice: skipped), and test_llm_judge's
    tiny Qwen2 judge with its chat template."""
    root = tmp_path_factory.mktemp("genppl")
    return build_models(root) | {"judge": converted(root, "judge", random_chat_qwen2())[1]}


def values(models: dict[str, Path]) -> dict[str, dict]:
    """{section: {key: value}} of the job: every file a prompt, 2 sampling batches of 4 rows (8 in one process)."""
    return {
        "eval": {
            "metric": "genppl,llm_judge",  # one generation, vocoding and transcription for both
            "data_path": f"{models['bench']},{models['bench']}",
            "model": str(models["speech_lm"]),
            "batch_size": 4,
            "progress": True,
        },
        "eval.genppl": {
            "vocoder": str(models["units"]),
            "asr_model": str(models["whisper"]),
            "text_lm": str(models["llama"]),
            "prompt_files": "all",
            "prompt_seconds": 1.0,
            "max_new_tokens": 12,
            "asr_max_new_tokens": 8,
            # the reference's transcription (language detection, beam search, the seek over timestamp pairs): the
            # single pass is the same per-device program without the host's seek loop (tests/test_genppl.py)
            "asr_decoding": "reference",
            "language": "auto",
            "asr_num_beams": 2,
            "asr_batch_size": 4,
            "lm_batch_size": 4,
        },
        "eval.genppl.judge": {"model": str(models["judge"]), "max_new_tokens": 6, "compute_dtype": "float32"},
        "tokenize": {
            "encoder_path": "mfcc",
            "kmeans_path": str(models["units"] / "centroids.npy"),
            "shard_size": 2,
            "progress": False,
        },
    }


def batches_run(stderr: str) -> int:
    """How many sampling batches the "generating" bar counted (drawn, or a plain line); 0 if it never showed."""
    counts = re.findall(r"(?:generating: +\d+%\|[^|]*\| |\[generating\] batches )(\d+)/(\d+)", stderr)
    return int(counts[-1][1]) if counts else 0


def without_timing(result: dict) -> dict:
    """The result less its timings and the judge's mesh (each process's own devices: 8 in one, 4 in each of two)."""
    kept = {key: value for key, value in result.items() if key not in TIMING}
    if "judge" in kept:
        kept["judge"] = {key: value for key, value in kept["judge"].items() if key != "mesh"}
    return kept


def test_two_hosts_score_genppl_as_one(models, tmp_path, capsys):
    assert jax.local_device_count() == 2 * DEVICES
    job = values(models)
    config = genppl_config.get_config()
    for section, keys in job.items():
        target = config
        for part in section.split("."):
            target = target[part]
        target.update(keys)
    both = pair_metrics.run(config, tmp_path / "one")
    one = both["genppl"]
    assert batches_run(capsys.readouterr().err) == 1

    args = ["--config", "configs/genppl.py", "--workdir", str(tmp_path / "two")]
    args += [f"--config.{section}.{key}={value}" for section, keys in job.items() for key, value in keys.items()]
    results = launch(args, tmp_path / "writes", devices=DEVICES)
    writes = writes_by_process(tmp_path / "writes", tmp_path / "two")

    eval_one, eval_two = tmp_path / "one" / "eval", tmp_path / "two" / "eval"
    two = json.loads((eval_two / "genppl.json").read_text())
    assert without_timing(two) == without_timing(one)
    assert set(one["stage_seconds"]) == set(two["stage_seconds"])
    # the judge: the same summary and ratings (prompt and continuation transcripts, answers, scores)
    judged = json.loads((eval_two / "llm_judge.json").read_text())
    assert without_timing(judged) == without_timing(both["llm_judge"]) and judged["judge"]["name"] == "judge"
    assert [math.prod(result["judge"]["mesh"].values()) for result in (both["llm_judge"], judged)] == [8, DEVICES]
    ratings = (eval_one / "llm_judge_ratings.jsonl").read_text()
    assert (eval_two / "llm_judge_ratings.jsonl").read_text() == ratings and len(ratings.splitlines()) == 6
    assert one["num_samples"] == 6 and one["num_skipped"] == 2 and one["num_scored"] >= 1
    assert {key: one["asr"][key] for key in ("protocol", "language", "num_beams")} == {
        "protocol": "reference",
        "language": "auto",
        "num_beams": 2,
    }
    assert one["genppl"] is not None and one["genppl"] > 1 and 0 <= one["auto_bleu_2"] <= 1
    # every sample: its prompt and continuation units, wav name, transcript, Auto-BLEU and NLL, to the last bit
    samples = read_jsonl(eval_one / "genppl_samples.jsonl")
    assert (eval_two / "genppl_samples.jsonl").read_text() == (eval_one / "genppl_samples.jsonl").read_text()
    assert len({str(sample["units"]) for sample in samples}) > 3 and any(s["transcript"].strip() for s in samples)
    for sample in samples:
        np.testing.assert_array_equal(
            soundfile.read(eval_two / sample["wav"])[0], soundfile.read(eval_one / sample["wav"])[0]
        )
    assert [batches_run(result.stderr) for result in results] == [1, 1]
    summaries = [re.sub(r", [\d.]+ s$", "", result.stdout.strip().splitlines()[-1]) for result in results]
    assert summaries[0] == summaries[1] and summaries[0].startswith(f"GenPPL {one['genppl']:.2f} over ")

    assert (
        written_more_than_once({0: [path for paths in writes.values() for path in paths if path.suffix == ".wav"]})
        == []
    )
    wavs = [Path("eval") / sample["wav"] for sample in samples]
    outputs = [Path("eval") / name for name in ("genppl_samples.jsonl", "llm_judge_ratings.jsonl")]
    outputs += [Path("eval") / name for name in ("genppl.json", "llm_judge.json")]
    cache = [path for path in writes[0] + writes[1] if path.parts[0] == "units_cache"]
    # process 0: the samples as soon as the units exist, again with the wavs, the transcripts, the NLLs; the judge's
    # ratings; the summaries
    mine = [path for path in writes[0] if path.parts[0] != "units_cache"]
    assert mine == [outputs[0], *wavs, outputs[0], outputs[0], outputs[0], *outputs[1:]], mine
    assert all(path.parts[0] == "units_cache" for path in writes[1]) and writes[1]
    assert written_more_than_once({0: cache}) == []
