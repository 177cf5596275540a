"""`mode: eval` on audio: a tiny StoryCloze-like folder of wavs through the MFCC tokeniser, the unit cache, and an
empty wav counted as a skip that names the file."""

import json

import jax
import numpy as np
import pytest
import soundfile
import torch

from configs import eval as eval_config
from conversion import hf_to_flax
from slam_jax.evaluation import pair_metrics
from slam_jax.models import kmeans
from slam_jax.speech import audio, audio_units, features, units
from slam_jax.speech import encoder as unit_encoder
from slam_jax.speech.tokenize import TokenizeSettings

NUM_UNITS = 20
RATE = 16_000


def torch_mean_log_likelihood(hf_model, unit_ids: list[int]) -> float:
    ids = torch.tensor([[1, *(np.asarray(unit_ids, np.int64) + 2).tolist(), 1]])
    with torch.no_grad():
        logits = hf_model(ids).logits[0, :-1].double()
    return -float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))


def single_file_encoder(centroids=None) -> unit_encoder.UnitEncoder:
    """The MFCC tokeniser, one file per call on one device: the reference for what units a file has."""
    return unit_encoder.spectral_encoder(
        features.SpectralConfig(), centroids, batch_size=1, devices=jax.local_devices()[:1]
    )


@pytest.fixture
def benchmark(tmp_path, hf_checkpoint):
    """A tSC-like folder (3 good pairs, 1 pair with an empty wav), centroids from its frames, a converted model."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "tsc"
    folder.mkdir()
    for index in range(4):
        for label in ("correct", "incorrect"):
            seconds = rng.uniform(0.3, 0.8)
            times = np.arange(int(seconds * RATE)) / RATE
            signal = np.sin(2 * np.pi * rng.uniform(100, 3000) * times * (1 + times)) + 0.3 * rng.normal(
                size=times.size
            )
            soundfile.write(folder / f"{index}_{label}.wav", (0.3 * signal).astype(np.float32), RATE)
    soundfile.write(folder / "3_incorrect.wav", np.zeros(0, np.float32), RATE)
    frames = np.concatenate(
        [
            single_file_encoder().features([audio.read_audio(str(folder / f"{i}_correct.wav")).samples])[0]
            for i in range(3)
        ]
    )
    centroids = frames[rng.choice(len(frames), NUM_UNITS, replace=False)]
    centroids_path = kmeans.save_centroids(tmp_path / "centroids.npy", centroids)
    hf_model, hf_folder = hf_checkpoint(vocab_size=NUM_UNITS + 2)
    hf_to_flax.convert(str(hf_folder), tmp_path / "speech")
    config = eval_config.get_config()
    config.eval.data_path = str(folder)
    config.eval.model = str(tmp_path / "speech")
    config.eval.progress = False
    config.tokenize.encoder_path = "mfcc"
    config.tokenize.kmeans_path = str(centroids_path)
    config.tokenize.progress = False
    return config, folder, centroids, hf_model


def test_audio_pairs_score_like_transformers_on_the_tokenisers_units(benchmark, tmp_path):
    config, folder, centroids, hf_model = benchmark
    result = pair_metrics.run(config, tmp_path / "run")["tstorycloze"]
    assert result["num_pairs"] == 3 and result["num_skipped"] == 1
    assert result["skipped"] == [
        {"pair": "3", "file": str(folder / "3_incorrect.wav"), "reason": "empty audio (0 samples)"}
    ]
    reference = single_file_encoder(centroids)
    rows = [
        json.loads(line)
        for line in (tmp_path / "run" / "eval" / "tstorycloze_pairs.jsonl").read_text().split("\n")
        if line
    ]
    for row in rows:
        for side in ("positive", "negative"):
            frames = reference.encode([audio.read_audio(row[side]).samples])[0]
            unit_ids = units.dedup(frames)[0].tolist()
            assert len(unit_ids) > 1
            assert row[f"{side}_log_likelihood"] == pytest.approx(
                torch_mean_log_likelihood(hf_model, unit_ids), abs=1e-4
            )
    assert [row["positive"] for row in rows] == [str(folder / f"{i}_correct.wav") for i in range(3)]
    assert result["accuracy"] == pytest.approx(np.mean([row["score"] for row in rows]))


def test_a_second_metric_over_the_same_audio_reads_the_unit_cache(benchmark, tmp_path):
    config, _, _, _ = benchmark
    workdir = tmp_path / "run"
    first = pair_metrics.run(config, workdir)["tstorycloze"]
    cache = audio_units.cache_folder(TokenizeSettings.from_config(config.tokenize, "tokenize"), workdir / "units_cache")
    assert json.loads((cache / "report.json").read_text())["tokenized_this_run"] == 7
    config.eval.metric = "sstorycloze"
    second = pair_metrics.run(config, workdir)["sstorycloze"]
    report = json.loads((cache / "report.json").read_text())
    assert report["tokenized_this_run"] == 0 and report["resumed_files"] == 8
    assert second["accuracy"] == first["accuracy"] and second["skipped"] == first["skipped"]
    pairs_of = {name: (workdir / "eval" / f"{name}_pairs.jsonl").read_text() for name in ("tstorycloze", "sstorycloze")}
    assert pairs_of["tstorycloze"] == pairs_of["sstorycloze"]


def test_all_pairs_skipped_is_an_error_naming_a_file(benchmark, tmp_path):
    config, folder, _, _ = benchmark
    empty = tmp_path / "empty_tsc"
    empty.mkdir()
    (folder / "3_incorrect.wav").rename(empty / "0_incorrect.wav")
    (folder / "3_correct.wav").rename(empty / "0_correct.wav")
    config.eval.data_path = str(empty)
    with pytest.raises(ValueError, match=r"all 1 pairs skipped, e\.g\. .*0_incorrect.wav: empty audio"):
        pair_metrics.run(config, tmp_path / "run")
