"""`mode: generate`: prompts from a units jsonl (cropped by duration) or from audio (first seconds, tokenised),
batched continuations identical to one unbatched call, and the outputs' fields."""

import json

import jax
import numpy as np
import pytest
import soundfile

import slam_jax
from configs import generate as generate_config
from conversion import hf_to_flax
from slam_jax.data.auto_bleu import auto_bleu
from slam_jax.evaluation import generation
from slam_jax.models import kmeans
from slam_jax.speech import audio, features, units
from slam_jax.speech import encoder as unit_encoder

NUM_UNITS = 20
RATE = 16_000


@pytest.fixture
def model_dir(hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint(vocab_size=NUM_UNITS + 2)
    hf_to_flax.convert(str(folder), tmp_path / "speech")
    return tmp_path / "speech"


def config_for(model_dir, data_path, **generate):
    config = generate_config.get_config()
    config.generate.model, config.generate.data_path = str(model_dir), str(data_path)
    config.generate.progress = False
    config.tokenize.progress = False
    for key, value in generate.items():
        config.generate[key] = value
    return config


def test_units_jsonl_prompts_batched_equal_one_call(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    lines = [{"units": rng.integers(0, NUM_UNITS, n).tolist(), "file_name": f"f{n}"} for n in rng.integers(2, 14, 10)]
    lines[0] = {"units": [4, 9, 4, 9, 7], "duration": [2, 3, 1, 4, 1], "file_name": "timed"}
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = config_for(model_dir, data, prompt_seconds=0.2, max_new_tokens=12, batch_size=8)
    summary = generation.run(config, tmp_path / "run")
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "generate" / "generations.jsonl").read_text().split("\n")
        if line
    ]
    # frames start at 0, 2, 5, 6, 10 (x 0.04 s): the first two start before 0.2 s
    assert records[0]["prompt_units"] == [4, 9] and records[0]["file_name"] == "timed"
    assert [record["prompt_units"] for record in records[1:]] == [line["units"] for line in lines[1:]]
    model = slam_jax.load_model(model_dir, compute_dtype="float32")
    prompts = [[1, *(np.asarray(record["prompt_units"]) + 2).tolist()] for record in records]
    expected = model.generate(prompts, max_new_tokens=12, temperature=0.8, top_k=25, seed=config.seed)
    for record, row in zip(records, expected, strict=True):
        stops = np.flatnonzero(row < 2)
        end = stops[0] if stops.size else len(row)
        assert record["units"] == (row[:end] - 2).tolist()
        assert record["ended"] == bool(stops.size and row[end] == slam_jax.EOS_ID)
        assert record["auto_bleu_2"] == auto_bleu(record["prompt_units"] + record["units"], 2)
        assert record["auto_bleu_2_continuation"] == auto_bleu(record["units"], 2)
    assert summary["num_prompts"] == 10 and summary["num_skipped"] == 0
    assert summary["new_tokens"] == sum(len(r["units"]) + r["ended"] for r in records)
    assert summary["auto_bleu_2"] == pytest.approx(np.mean([r["auto_bleu_2"] for r in records]))
    assert summary["settings"]["top_k"] == 25 and summary["settings"]["temperature"] == 0.8


def test_audio_prompts_are_the_first_seconds_and_empty_audio_is_skipped(model_dir, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "prompts"
    folder.mkdir()
    for name in ("a", "b"):
        times = np.arange(RATE) / RATE
        signal = np.sin(2 * np.pi * rng.uniform(200, 2000) * times * (1 + 2 * times)) + 0.3 * rng.normal(size=RATE)
        soundfile.write(folder / f"{name}.wav", (0.3 * signal).astype(np.float32), RATE)
    soundfile.write(folder / "c_empty.wav", np.zeros(0, np.float32), RATE)
    reference = unit_encoder.spectral_encoder(
        features.SpectralConfig(), None, batch_size=1, devices=jax.local_devices()[:1]
    )
    frames = np.concatenate([reference.features([audio.read_audio(str(folder / "a.wav")).samples])[0]])
    centroids = frames[rng.choice(len(frames), NUM_UNITS, replace=False)]
    reference.set_centroids(centroids)
    config = config_for(model_dir, folder, prompt_seconds=0.5, max_new_tokens=6, temperature=0.0)
    config.tokenize.encoder_path = "mfcc"
    config.tokenize.kmeans_path = str(kmeans.save_centroids(tmp_path / "centroids.npy", centroids))
    summary = generation.run(config, tmp_path / "run")
    assert summary["num_prompts"] == 2
    assert summary["skipped"] == [{"file": str(folder / "c_empty.wav"), "reason": "empty audio (0 samples)"}]
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "generate" / "generations.jsonl").read_text().split("\n")
        if line
    ]
    for record, name in zip(records, ("a", "b"), strict=True):
        samples = audio.read_audio(str(folder / f"{name}.wav")).samples[: RATE // 2]
        assert record["file_name"] == str(folder / f"{name}.wav")
        assert record["prompt_units"] == units.dedup(reference.encode([samples])[0])[0].tolist()
