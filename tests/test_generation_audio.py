"""`mode: generate` with `generate.vocoder`: espeak-ng prompts, a tiny model and the MFCC tokeniser's inverse write
each continuation as wav files that generations.jsonl names; a unit the vocoder lacks stops it without losing the
units; a vocoder path of no kind is refused before sampling."""

import collections
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from speech_fixtures import ESPEAK_RATE, SENTENCES, synthesize

from configs import generate as generate_config
from configs import tokenize_mfcc
from conversion import hf_to_flax
from slam_jax.evaluation import generation
from slam_jax.models import kmeans, vocoder
from slam_jax.speech import features, tokenize

NUM_UNITS = 20
HOP = 640


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("speech")
    for index, sentence in enumerate(SENTENCES[:3]):
        soundfile.write(folder / f"s{index}.wav", synthesize(sentence).astype(np.float32) / 32768, ESPEAK_RATE)
    return folder


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory, speech) -> Path:
    """The MFCC tokeniser fitted with 20 units on the speech (tokenizer.json, centroids.npy, features.jsonl)."""
    workdir = tmp_path_factory.mktemp("tokenizer")
    config = tokenize_mfcc.get_config()
    config.tokenize.data_path, config.tokenize.out_path = str(speech), str(workdir / "units")
    config.tokenize.fit_units, config.tokenize.progress = NUM_UNITS, False
    tokenize.run(config, workdir)
    return workdir / "units"


@pytest.fixture
def model_dir(hf_checkpoint, tmp_path):
    _, folder = hf_checkpoint(vocab_size=NUM_UNITS + 2)
    hf_to_flax.convert(str(folder), tmp_path / "speech_lm")
    return tmp_path / "speech_lm"


def config_for(model_dir, data_path, tokenizer_folder, vocoder=None, **generate):
    """configs/generate.py on the MFCC tokeniser, spoken by `vocoder` (default: the tokeniser folder)."""
    config = generate_config.get_config()
    config.generate.model, config.generate.data_path = str(model_dir), str(data_path)
    config.generate.vocoder = str(vocoder or tokenizer_folder)
    config.generate.max_new_tokens, config.generate.prompt_seconds, config.generate.progress = 12, 1.0, False
    config.tokenize.encoder_path, config.tokenize.kmeans_path = "mfcc", str(tokenizer_folder / "centroids.npy")
    config.tokenize.progress = False
    for key, value in generate.items():
        config.generate[key] = value
    return config


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mean_durations_by_hand(folder: Path) -> dict[int, int]:
    runs = collections.defaultdict(list)
    for record in read_lines(folder / tokenize.FEATURES):
        for unit, count in zip(record["units"], record["duration"], strict=True):
            runs[unit].append(count)
    return {unit: max(1, round(float(np.mean(counts)))) for unit, counts in runs.items()}


def test_generate_writes_each_continuation_as_wavs_named_in_the_jsonl(model_dir, speech, tokenizer_folder, tmp_path):
    summary = generation.run(config_for(model_dir, speech, tokenizer_folder), tmp_path)
    out = tmp_path / "generate"
    records = read_lines(out / generation.GENERATIONS)
    assert len(records) == 3 and summary["audio"]["files"] == 6 and summary["audio"]["sample_rate"] == 16_000
    assert json.loads((out / generation.SUMMARY).read_text())["audio"] == summary["audio"]
    durations = mean_durations_by_hand(tokenizer_folder)
    centroids = np.load(tokenizer_folder / "centroids.npy")
    for index, record in enumerate(records):
        assert record["wav_full"] == f"audio/{index:04d}_full.wav"
        assert record["wav_continuation"] == f"audio/{index:04d}_continuation.wav"
        assert all(0 <= unit < NUM_UNITS for unit in record["prompt_units"] + record["units"])  # ids, not tokens
        for key, units in (
            ("wav_full", record["prompt_units"] + record["units"]),
            ("wav_continuation", record["units"]),
        ):
            info = soundfile.info(out / record[key])
            assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
            assert info.frames == sum(durations[unit] for unit in units) * HOP
        # the continuation's audio, re-tokenised frame by frame, is its units, each repeated for its duration
        samples, _ = soundfile.read(out / record["wav_continuation"], dtype="float32")
        frames = np.asarray(features.spectral_features(features.SpectralConfig(), samples[None]))[0]
        heard = np.argmin(((frames[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
        spoken = [unit for unit in record["units"] for _ in range(durations[unit])]
        assert np.mean(heard == np.array(spoken)) >= 0.85


def test_one_frame_per_unit_and_a_unit_the_vocoder_lacks(model_dir, tokenizer_folder, tmp_path):
    lines = [{"units": [1, 2, 3, 4], "file_name": "low"}, {"units": [5, 19, 6], "file_name": "high"}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    full = kmeans.save_centroids(tmp_path / "full.npy", np.load(tokenizer_folder / "centroids.npy"))
    config = config_for(model_dir, prompts, tokenizer_folder, full, predict_durations=False, temperature=0.0)
    generation.run(config, tmp_path / "one_frame")
    for record in read_lines(tmp_path / "one_frame" / "generate" / generation.GENERATIONS):
        full_frames = soundfile.info(tmp_path / "one_frame" / "generate" / record["wav_full"]).frames
        assert full_frames == (len(record["prompt_units"]) + len(record["units"])) * HOP
    smaller = kmeans.save_centroids(tmp_path / "smaller.npy", np.load(full)[:10])
    with pytest.raises(ValueError) as caught:
        generation.run(
            config_for(model_dir, prompts, tokenizer_folder, smaller, predict_durations=False), tmp_path / "lacking"
        )
    out = tmp_path / "lacking" / "generate"
    records = read_lines(out / generation.GENERATIONS)
    first_lacking = next(
        index for index, record in enumerate(records) if max(record["prompt_units"] + record["units"]) >= 10
    )
    record = records[first_lacking]
    spoken = record["prompt_units"] + record["units"]
    position = next(index for index, unit in enumerate(spoken) if unit >= 10)
    assert str(caught.value) == (
        f"generate.vocoder='{smaller}': line {first_lacking + 1} of {out / generation.GENERATIONS} "
        f"({record['file_name']}): units_list[0][{position}]={spoken[position]}: unit ids must be in 0..9 "
        "(units_list[0]: prompt + continuation, [1]: continuation)"
    )
    assert [record["prompt_units"] for record in records] == [[1, 2, 3, 4], [5, 19, 6]]  # the units are kept
    assert all("wav_full" not in record for record in records)


def test_a_vocoder_of_no_kind_is_refused_before_sampling(model_dir, speech, tokenizer_folder, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ValueError, match=f"^{notes}: not a vocoder: "):
        generation.run(config_for(model_dir, speech, tokenizer_folder, notes), tmp_path)
    assert not (tmp_path / "generate").exists()
    with pytest.raises(FileNotFoundError, match=r"^config\.generate\.vocoder='absent/vocoder': no such file"):
        generation.run(config_for(model_dir, speech, tokenizer_folder, "absent/vocoder"), tmp_path)


def test_a_neural_vocoder_speaks_at_its_own_rate_and_must_predict_durations_if_asked(
    model_dir, tokenizer_folder, tmp_path
):
    config = vocoder.VocoderConfig(
        num_embeddings=NUM_UNITS,
        embedding_dim=8,
        upsample_rates=(4, 2),  # kernels 2 x the rate: 8 samples per frame exactly
        upsample_kernel_sizes=(8, 4),
        upsample_initial_channel=16,
        resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1, 2, 3),),
        sampling_rate=24_000,
    )
    folder = vocoder.save_vocoder(tmp_path / "hifigan", config, vocoder.get_params(vocoder.init_model(config)))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"units": [3, 1, 4, 1, 5], "file_name": "p"}) + "\n")
    with pytest.raises(ValueError, match=r"^generate\.predict_durations=True: the vocoder .*hifigan has no duration"):
        generation.run(config_for(model_dir, prompts, tokenizer_folder, folder), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()  # refused before sampling
    generation.run(config_for(model_dir, prompts, tokenizer_folder, folder, predict_durations=False), tmp_path)
    (record,) = read_lines(tmp_path / "generate" / generation.GENERATIONS)
    info = soundfile.info(tmp_path / "generate" / record["wav_full"])
    assert info.samplerate == 24_000 and info.frames == (5 + len(record["units"])) * 8
