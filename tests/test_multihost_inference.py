"""`mode: eval` (pair metrics) and `mode: generate` on two real JAX processes (jax.distributed, gloo) against one
process with as many devices: the same scores and accuracies, the same continuations, Auto-BLEU and wavs; the batches
dealt out between the processes (each ran some), every output written once and by process 0 (the wavs by both
processes, each its share), the audio tokenised by both hosts through the unit cache."""

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile
from conftest import random_hf_model
from multihost import launch, writes_by_process, written_more_than_once
from speech_fixtures import ESPEAK_RATE, SENTENCES, synthesize

from configs import eval as eval_config
from configs import generate as generate_config
from conversion import hf_to_flax
from slam_jax.evaluation import generation, pair_metrics
from slam_jax.models import kmeans
from slam_jax.speech import audio, features

NUM_UNITS = 20
COPIES = 5  # each sentence in 5 files: 20 prompts, 3 sampling batches of 8 rows (one row per device)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A random 20-unit speech LM, 20 MFCC centroids (the audio's tokeniser, and as its inverse the vocoder) and
    each sentence spoken by espeak-ng in COPIES files (the first at half length)."""
    folder = tmp_path_factory.mktemp("world")
    random_hf_model(4, vocab_size=NUM_UNITS + 2).save_pretrained(folder / "hf")
    hf_to_flax.convert(str(folder / "hf"), folder / "speech")
    (folder / "audio").mkdir()
    for index, sentence in enumerate(SENTENCES):
        wave = synthesize(sentence).astype(np.float32) / 32768
        for copy in range(COPIES):
            soundfile.write(folder / "audio" / f"s{index}_{copy}.wav", wave[::2] if copy == 0 else wave, ESPEAK_RATE)
    samples = audio.read_audio(str(folder / "audio" / "s1_1.wav")).samples
    frames = np.asarray(features.spectral_features(features.SpectralConfig(), samples[None]))[0]
    chosen = frames[np.random.default_rng(0).choice(len(frames), NUM_UNITS, replace=False)]
    centroids = kmeans.save_centroids(folder / "km20.npy", chosen)
    return {"model": folder / "speech", "audio": folder / "audio", "centroids": centroids}


def tokenizer(world) -> dict:
    return {"encoder_path": "mfcc", "kmeans_path": str(world["centroids"]), "shard_size": 3, "progress": False}


def arguments(values: dict) -> list[str]:
    """`--config.SECTION.KEY=VALUE` of {SECTION: {KEY: VALUE}}."""
    return [f"--config.{section}.{key}={value}" for section, keys in values.items() for key, value in keys.items()]


def configure(config, values: dict):
    for section, keys in values.items():
        config[section].update({key: str(value) if isinstance(value, Path) else value for key, value in keys.items()})
    return config


def batches_run(stderr: str, bar: str) -> int:
    """How many batches a progress bar named `bar` counted (its last update: drawn, or a plain line), 0 if it never
    showed."""
    counts = re.findall(rf"(?:{bar}: +\d+%\|[^|]*\| |\[{bar}\] batches )(\d+)/(\d+)", stderr)
    return int(counts[-1][1]) if counts else 0


def two_processes(workdir: Path, config: str, values: dict) -> tuple[list, dict[int, list[Path]]]:
    """The job run by two processes with as many devices each as this one: their results, and what each wrote."""
    args = ["--config", config, "--workdir", str(workdir), *arguments(values)]
    results = launch(args, workdir.parent / "writes", devices=jax.local_device_count())
    return results, writes_by_process(workdir.parent / "writes", workdir)


def pairs_file(world, path: Path) -> Path:
    """Audio pairs (a sentence against its half-length copy) and unit pairs, one of them a tie."""
    rng = np.random.default_rng(5)
    lines = [
        {"positive": str(world["audio"] / f"s{index}_1.wav"), "negative": str(world["audio"] / f"s{index}_0.wav")}
        | {"subset": "audio"}
        for index in range(len(SENTENCES))
    ]
    for _ in range(24):
        positive, negative = (rng.integers(0, NUM_UNITS, n).tolist() for n in rng.integers(3, 60, 2))
        lines.append({"positive": positive, "negative": negative, "subset": "units"})
    lines.append({"positive": [1, 2, 3], "negative": [1, 2, 3], "subset": "tie"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_two_hosts_score_pairs_as_one(tmp_path, world, capsys):
    values = {
        "eval": {
            "data_path": pairs_file(world, tmp_path / "pairs.jsonl"),
            "model": world["model"],
            "batch_size": 8,
        },
        "tokenize": tokenizer(world),
    }
    one = pair_metrics.run(configure(eval_config.get_config(), values), tmp_path / "one")["tstorycloze"]
    batches = batches_run(capsys.readouterr().err, "scoring")

    results, writes = two_processes(tmp_path / "two", "configs/eval.py", values)
    eval_two, eval_one = tmp_path / "two" / "eval", tmp_path / "one" / "eval"
    two = json.loads((eval_two / "tstorycloze.json").read_text())
    timing = ("seconds", "pairs_per_second")
    assert {key: value for key, value in two.items() if key not in timing} == {
        key: value for key, value in one.items() if key not in timing
    }
    assert one["num_pairs"] == 29 and one["breakdown"]["tie"] == {"accuracy": 0.5, "num_pairs": 1}
    assert 0 < one["accuracy"] < 1
    # every pair's log-likelihoods, to the last bit
    assert (eval_two / "tstorycloze_pairs.jsonl").read_text() == (eval_one / "tstorycloze_pairs.jsonl").read_text()
    ran = [batches_run(result.stderr, "scoring") for result in results]
    assert batches >= 3 and min(ran) >= 1 and sum(ran) == batches, (batches, ran)
    tables = [result.stdout[result.stdout.index("metric") :] for result in results]
    assert tables[0] == tables[1] and f"{100 * one['accuracy']:.2f}%" in tables[0]

    assert written_more_than_once(writes) == []
    cache = [path for path in writes[0] if path.parts[0] == "units_cache"]
    assert sorted(set(writes[0]) - set(cache)) == [Path("eval/tstorycloze.json"), Path("eval/tstorycloze_pairs.jsonl")]
    assert writes[1] and all(path.parts[0] == "units_cache" and path.parent.name == "parts" for path in writes[1])


def test_two_hosts_generate_as_one(tmp_path, world, capsys):
    values = {
        "generate": {
            "data_path": world["audio"],
            "model": world["model"],
            "batch_size": 8,
            "prompt_seconds": 0.5,  # at most 13 units: one prompt width, one compiled program
            "max_new_tokens": 10,
            "vocoder": world["centroids"],
            "predict_durations": False,
        },
        "tokenize": tokenizer(world),
    }
    one = generation.run(configure(generate_config.get_config(), values), tmp_path / "one")
    batches = batches_run(capsys.readouterr().err, "generating")

    results, writes = two_processes(tmp_path / "two", "configs/generate.py", values)
    out_two, out_one = tmp_path / "two" / "generate", tmp_path / "one" / "generate"
    assert (out_two / generation.GENERATIONS).read_text() == (out_one / generation.GENERATIONS).read_text()
    records = [json.loads(line) for line in (out_one / generation.GENERATIONS).read_text().splitlines()]
    assert len(records) == 4 * COPIES and len({str(record["units"]) for record in records}) > 4 * COPIES // 2
    two = json.loads((out_two / generation.SUMMARY).read_text())
    timing = ("seconds", "tokens_per_second")
    assert {key: value for key, value in two.items() if key not in timing} == {
        key: value for key, value in one.items() if key not in timing
    }
    for record in records:
        for key in ("wav_full", "wav_continuation"):
            np.testing.assert_array_equal(
                soundfile.read(out_two / record[key])[0], soundfile.read(out_one / record[key])[0]
            )
    ran = [batches_run(result.stderr, "generating") for result in results]
    assert batches == 3 and ran == [2, 1], (batches, ran)
    lines = [
        [re.sub(r" in [\d.]+ s \([\d.]+ tokens/s\)", "", line) for line in result.stdout.splitlines()]
        for result in results
    ]
    summaries = [[line for line in printed if line.startswith("generated ")] for printed in lines]
    assert summaries[0] == summaries[1] and summaries[0][0].startswith(f"generated {one['new_tokens']} tokens for 20")

    assert (
        written_more_than_once({0: [path for paths in writes.values() for path in paths if path.suffix == ".wav"]})
        == []
    )
    wavs = {host: sorted(path.name for path in writes[host] if path.suffix == ".wav") for host in (0, 1)}
    assert wavs == {
        host: sorted(
            f"{index:04d}_{kind}.wav" for index in range(host, len(records), 2) for kind in ("full", "continuation")
        )
        for host in (0, 1)
    }
    outputs = [Path("generate") / name for name in (generation.GENERATIONS, generation.SUMMARY)]
    # as one process: the units first, then again with the wavs named
    assert [path for path in writes[0] if path in outputs] == outputs + outputs
    assert not any(path in outputs for path in writes[1])
    assert written_more_than_once({0: [path for path in writes[0] + writes[1] if path.parts[0] == "units_cache"]}) == []
