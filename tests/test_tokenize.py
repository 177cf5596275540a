"""The tokenisation pipeline on real (espeak-ng) speech: units against transformers + scikit-learn, frame counts,
dedup, batch/device independence, bad input, kill-and-resume and the command line (several hosts:
tests/test_multihost_tokenize.py)."""

import collections
import itertools
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import jax
import librosa
import numpy as np
import pytest
import scipy
import soundfile
from scipy.signal import resample_poly
from sklearn.cluster import KMeans
from speech_fixtures import ESPEAK_RATE, SENTENCES, hf_hidden_states, random_hubert, synthesize, write_silent_wav

from configs import tokenize as tokenize_config
from conversion import hubert_to_flax
from slam_jax.data.unit_store import UnitStore
from slam_jax.models import hubert, kmeans
from slam_jax.speech import audio, features, tokenize, units
from slam_jax.speech import encoder as unit_encoder

ROOT = Path(__file__).resolve().parents[1]
LAYER = 2
FRAME_SECONDS = 0.04


def settings(data_path, out_path, **overrides):
    """configs/tokenize.py with the test's paths and overrides (`a__b` sets `a.b`)."""
    config = tokenize_config.get_config()
    values = {"data_path": str(data_path), "out_path": str(out_path), "progress": False, "buckets_per_octave": 1}
    for key, value in {**values, **overrides}.items():
        node = config.tokenize
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """Each sentence spoken by espeak-ng, at its own 22,050 Hz and resampled (by scipy) to 16 kHz."""
    folder = tmp_path_factory.mktemp("speech")
    for index, sentence in enumerate(SENTENCES):
        samples = synthesize(sentence).astype(np.float32) / 32768
        soundfile.write(folder / f"s{index}_22k.wav", samples, ESPEAK_RATE)
        soundfile.write(folder / f"s{index}_16k.flac", resample_poly(samples, 320, 441).astype(np.float32), 16_000)
    return folder


@pytest.fixture(scope="module")
def hubert_model(tmp_path_factory, speech):
    """(HF model, converted encoder dir, centroids .npy path): 16 centroids fitted by scikit-learn on HF features."""
    folder = tmp_path_factory.mktemp("hubert")
    model = random_hubert(seed=3)
    model.save_pretrained(folder / "hf")
    hubert_to_flax.convert(folder / "hf", folder / "encoder")
    samples = audio.read_audio(str(speech / "s0_22k.wav")).samples
    frames = hf_hidden_states(model, np.pad(samples, 40)[None])[LAYER][0]
    centroids = KMeans(16, n_init=1, random_state=0).fit(frames).cluster_centers_
    return model, folder / "encoder", kmeans.save_centroids(folder / "km16.npy", centroids)


@pytest.fixture(scope="module")
def mfcc_centroids(tmp_path_factory, speech) -> Path:
    """12 MFCC frames of real speech as centroids."""
    samples = audio.read_audio(str(speech / "s1_22k.wav")).samples
    frames = np.asarray(features.spectral_features(features.SpectralConfig(), samples[None]))[0]
    chosen = frames[np.random.default_rng(0).choice(len(frames), 12, replace=False)]
    return kmeans.save_centroids(tmp_path_factory.mktemp("mfcc") / "km12.npy", chosen)


def test_dedup_by_hand():
    collapsed, durations = units.dedup(np.array([3, 3, 5, 5, 5, 3, 7, 7]))
    assert collapsed.tolist() == [3, 5, 3, 7] and durations.tolist() == [2, 3, 1, 2]
    assert [part.tolist() for part in units.dedup(np.array([], np.int32))] == [[], []]
    line = json.loads(units.to_line(units.record(np.array([4, 4, 1]), "a.wav")))
    assert line == {"units": [4, 1], "duration": [2, 1], "file_name": "a.wav"}
    assert units.record(np.array([4, 4, 1]), "a.wav", deduplicate=False)["duration"] == [1, 1, 1]


def test_mfcc_matches_numpy_fft_librosa_filters_and_scipy_dct(speech):
    config = features.SpectralConfig()
    samples = audio.read_audio(str(speech / "s2_22k.wav")).samples
    ours = np.asarray(features.spectral_features(config, samples[None]))[0]
    frames = len(samples) // config.frame_samples
    padded = np.pad(samples.astype(np.float64), (config.left_padding, config.n_fft))
    starts = np.arange(frames) * config.frame_samples
    windows = np.stack([padded[start : start + config.n_fft] for start in starts]) * scipy.signal.get_window(
        "hann", config.n_fft
    )
    mel = np.abs(np.fft.rfft(windows, axis=-1)) ** 2 @ librosa.filters.mel(sr=16_000, n_fft=1024, n_mels=40).T
    expected = scipy.fft.dct(10 * np.log10(np.maximum(mel, 1e-10)), type=2, norm="ortho", axis=-1)[:, :20]
    assert ours.shape == (frames, 20)
    np.testing.assert_allclose(ours, expected, atol=2e-3)


def reference_units(model, samples: np.ndarray, centroids: np.ndarray) -> tuple[list, list]:
    """The reference's units of one file alone: HF on the 40-padded waveform, nearest centroid, groupby dedup."""
    frames = hf_hidden_states(model, np.pad(samples, 40)[None])[LAYER][0]
    model_km = KMeans(len(centroids), n_init=1, max_iter=1).fit(centroids)
    model_km.cluster_centers_ = centroids.astype(frames.dtype)
    labels = model_km.predict(frames)
    runs = [(int(unit), len(list(group))) for unit, group in itertools.groupby(labels)]
    return [unit for unit, _ in runs], [length for _, length in runs]


@pytest.fixture(scope="module")
def hubert_run(tmp_path_factory, speech, hubert_model) -> tuple[Path, dict]:
    """The speech folder tokenised with the HuBERT encoder: one batch of 8 sharded over 4 devices, each stepping
    through its 2 rows one at a time (`micro_batch`)."""
    _, encoder_dir, centroids_path = hubert_model
    workdir = tmp_path_factory.mktemp("hubert_run")
    paths = dict(encoder_path=str(encoder_dir), layer=LAYER, kmeans_path=str(centroids_path))
    config = settings(speech, workdir / "out", num_devices=4, micro_batch=1, **paths)
    return workdir / "out", tokenize.run(config, workdir)


def test_real_speech_units_equal_transformers_and_scikit_learn(speech, hubert_model, hubert_run):
    model, _, centroids_path = hubert_model
    out, report = hubert_run
    lines = read_jsonl(out / tokenize.FEATURES)
    assert [line["file_name"] for line in lines] == audio.list_audio(str(speech))
    assert report["tokenized"] == len(lines) == 2 * len(SENTENCES) and report["failed"] == 0
    centroids = np.load(centroids_path)
    frame_counts = collections.defaultdict(set)
    for line in lines:
        samples = audio.read_audio(line["file_name"]).samples
        frames = sum(line["duration"])
        assert frames == len(samples) // 640
        assert abs(frames * FRAME_SECONDS - soundfile.info(line["file_name"]).duration) < FRAME_SECONDS
        assert all(a != b for a, b in itertools.pairwise(line["units"])) and min(line["duration"]) >= 1
        assert (line["units"], line["duration"]) == reference_units(model, samples, centroids)
        frame_counts[Path(line["file_name"]).name.split("_")[0]].add(frames)
    assert all(len(counts) == 1 for counts in frame_counts.values()), frame_counts  # 22,050 Hz == 16 kHz


def test_units_do_not_depend_on_batch_composition_or_devices(tmp_path, speech, hubert_model, hubert_run):
    """Two files alone, one per batch on one device, against the same files in one batch of eight sharded over
    four devices and micro-batched."""
    _, encoder_dir, centroids_path = hubert_model
    (tmp_path / "two.txt").write_text(f"{speech / 's0_16k.flac'}\n{speech / 's0_22k.wav'}\n")
    common = dict(encoder_path=str(encoder_dir), layer=LAYER, kmeans_path=str(centroids_path))
    tokenize.run(settings(tmp_path / "two.txt", tmp_path / "one", batch_size=1, num_devices=1, **common), tmp_path)
    assert len(jax.local_devices()) >= 4
    alone = read_jsonl(tmp_path / "one" / tokenize.FEATURES)
    batched = {line["file_name"]: line for line in read_jsonl(hubert_run[0] / tokenize.FEATURES)}
    assert len(alone) == 2 and all(line == batched[line["file_name"]] for line in alone)


def test_micro_batch_steps_pad_similar_lengths_together_and_change_no_unit(speech, hubert_model):
    """With `micro_batch`, a batch goes through in steps of similar-length rows, each padded to its own bucket:
    the same units and features as the whole batch in one step."""
    _, encoder_dir, centroids_path = hubert_model
    model, centroids = hubert.load_encoder(encoder_dir), np.load(centroids_path)
    samples = audio.read_audio(str(speech / "s0_16k.flac")).samples
    waves = [samples[:length] for length in (8000, 40000, 12000, 30000, 9000, 20000)]
    one_device = dict(batch_size=8, devices=jax.local_devices()[:1])
    whole = unit_encoder.hubert_encoder(model, LAYER, centroids, **one_device)
    stepped = unit_encoder.hubert_encoder(model, LAYER, centroids, micro_batch=2, **one_device)
    assert whole.steps(waves) == [list(range(6))]
    assert stepped.steps(waves) == [[1, 3], [5, 2], [4, 0]]  # longest first, two rows per step
    widths = [stepped.layout([waves[i] for i in step])[0].shape for step in stepped.steps(waves)]
    assert widths[0][1] > widths[1][1] > widths[2][1] and all(rows == 2 for rows, _ in widths)
    for ours, theirs in zip(stepped.encode(waves), whole.encode(waves), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(stepped.features(waves), whole.features(waves), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_the_conv_front_end_in_windows_changes_no_unit(speech, hubert_model):
    """`tokenize.conv_chunk_frames`: the conv front end a few frames at a time gives the whole input's units and
    features on real speech, in a padded batch; its default (-1) picks windows on a CPU and none elsewhere."""
    _, encoder_dir, centroids_path = hubert_model
    centroids = np.load(centroids_path)
    samples = audio.read_audio(str(speech / "s1_16k.flac")).samples
    waves = [samples[:length] for length in (9000, 40000, 23000)]
    one_device = dict(batch_size=4, devices=jax.local_devices()[:1])
    whole, windows = (
        unit_encoder.hubert_encoder(
            hubert.load_encoder(encoder_dir, conv_chunk_frames=frames), LAYER, centroids, **one_device
        )
        for frames in (0, 4)
    )
    for ours, theirs in zip(windows.encode(waves), whole.encode(waves), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(windows.features(waves), whole.features(waves), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    cpu, gpu = jax.local_devices()[:1], [types.SimpleNamespace(platform="gpu")]
    assert tokenize.conv_chunk_frames(-1, cpu) == tokenize.CPU_CONV_CHUNK_FRAMES
    assert tokenize.conv_chunk_frames(-1, gpu) == 0
    assert tokenize.conv_chunk_frames(0, cpu) == 0 and tokenize.conv_chunk_frames(7, gpu) == 7
    with pytest.raises(ValueError, match=r"tokenize.conv_chunk_frames = -2: use -1 \(auto\)"):
        tokenize.conv_chunk_frames(-2, cpu)
    assert tokenize_config.get_config().tokenize.conv_chunk_frames == -1


def test_windows_stitch_onto_the_whole_file_frame_grid(tmp_path, speech, mfcc_centroids):
    common = dict(encoder_path="mfcc", kmeans_path=str(mfcc_centroids), dedup=False)
    tokenize.run(settings(speech, tmp_path / "whole", window_seconds=0.0, **common), tmp_path)
    tokenize.run(
        settings(speech, tmp_path / "windows", window_seconds=0.64, window_overlap_seconds=0.32, **common), tmp_path
    )
    whole = read_jsonl(tmp_path / "whole" / tokenize.FEATURES)
    windowed = read_jsonl(tmp_path / "windows" / tokenize.FEATURES)
    assert max(sum(line["duration"]) for line in whole) > 3 * 16  # several windows per file
    assert windowed == whole


def test_the_unit_store_holds_features_jsonl(tmp_path, speech, mfcc_centroids):
    out = tmp_path / "out"
    report = tokenize.run(settings(speech, out, encoder_path="mfcc", kmeans_path=str(mfcc_centroids)), tmp_path)
    lines = read_jsonl(out / tokenize.FEATURES)
    stores = [UnitStore(out / tokenize.STORE / split) for split in ("train", "valid")]
    assert sum(store.manifest["num_sequences"] for store in stores) == len(lines)
    assert sum(store.manifest["num_tokens"] for store in stores) == sum(len(line["units"]) + 2 for line in lines)
    assert report["store"]["train_tokens"] == stores[0].manifest["num_tokens"]


def make_bad_folder(folder: Path) -> dict[str, str]:
    """Every kind of bad input next to good speech; returns file name -> expected reason (or '' if fine)."""
    folder.mkdir()
    speech = synthesize(SENTENCES[0]).astype(np.float32) / 32768
    soundfile.write(folder / "speech_48k.wav", resample_poly(speech, 320, 147), 48_000)
    soundfile.write(folder / "speech_8k.flac", resample_poly(speech, 160, 441), 8_000)
    six = np.stack([speech * gain for gain in (1.0, 0.5, 0.25, 0.0, -0.5, 0.8)], axis=1)
    soundfile.write(folder / "six_channels.wav", six, ESPEAK_RATE)
    write_silent_wav(folder / "two_hours.wav", 2 * 3600, 8_000)
    flac = (folder / "speech_8k.flac").read_bytes()
    (folder / "corrupt.flac").write_bytes(flac[: len(flac) // 2])
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.mp3").write_text("not audio at all\n")
    soundfile.write(folder / "zero_length.wav", np.zeros(0, np.float32), 16_000)
    soundfile.write(folder / "short.wav", np.full(300, 0.1, np.float32), 16_000)
    return {
        "speech_48k.wav": "",
        "speech_8k.flac": "",
        "six_channels.wav": "",
        "two_hours.wav": "longer than max_seconds: kept the first 3 s of 7200.0 s",
        "corrupt.flac": "not readable as audio",
        "empty.wav": "empty file (0 bytes)",
        "notes.mp3": "not readable as audio",
        "zero_length.wav": "empty audio (0 samples)",
        "short.wav": "too short: 300 samples",
    }


def test_bad_input_is_listed_with_reasons_and_counted(tmp_path, capsys):
    expected = make_bad_folder(tmp_path / "bad")
    config = settings(
        tmp_path / "bad", tmp_path / "out", encoder_path="mfcc", kmeans_path="", fit_units=8, max_seconds=3.0
    )
    report = tokenize.run(config, tmp_path)
    assert "tokenized 4 of 9 files (5 failed, 1 truncated" in capsys.readouterr().out
    assert {key: report[key] for key in ("files", "tokenized", "failed", "truncated")} == {
        "files": 9,
        "tokenized": 4,
        "failed": 5,
        "truncated": 1,
    }
    assert (tmp_path / "out" / tokenize.FITTED_CENTROIDS).is_file()
    errors = {Path(line["file_name"]).name: line for line in read_jsonl(tmp_path / "out" / tokenize.ERRORS)}
    assert sorted(errors) == sorted(name for name, reason in expected.items() if reason)
    for name, line in errors.items():
        assert expected[name] in line["reason"], (name, line)
        assert line["tokenized"] == (name == "two_hours.wav")
    lines = {Path(line["file_name"]).name: line for line in read_jsonl(tmp_path / "out" / tokenize.FEATURES)}
    assert sorted(lines) == sorted(["speech_48k.wav", "speech_8k.flac", "six_channels.wav", "two_hours.wav"])
    assert sum(lines["two_hours.wav"]["duration"]) == 3.0 / FRAME_SECONDS
    for name in ("speech_48k.wav", "speech_8k.flac", "six_channels.wav"):
        seconds = soundfile.info(tmp_path / "bad" / name).duration
        assert abs(sum(lines[name]["duration"]) * FRAME_SECONDS - seconds) < FRAME_SECONDS


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the pipeline may swallow it."""


def test_killed_run_resumes_to_the_same_output_without_duplicates(tmp_path, speech, mfcc_centroids, monkeypatch):
    common = dict(encoder_path="mfcc", kmeans_path=str(mfcc_centroids), batch_size=1, num_devices=1, shard_size=3)
    tokenize.run(settings(speech, tmp_path / "uninterrupted", **common), tmp_path)

    calls = []
    encode = unit_encoder.UnitEncoder.encode

    def dies_on_the_fifth_batch(self, waveforms):
        calls.append(len(waveforms))
        if len(calls) == 5:
            raise Killed
        return encode(self, waveforms)

    monkeypatch.setattr(unit_encoder.UnitEncoder, "encode", dies_on_the_fifth_batch)
    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        tokenize.run(settings(speech, out, **common), tmp_path)
    monkeypatch.undo()
    assert len(list((out / tokenize.PARTS).glob("*shard*[0-9a-f].jsonl"))) == 1
    assert not (out / tokenize.FEATURES).exists()
    half_written = out / tokenize.PARTS / ".host0000of0001-shard000001-0123456789ab.jsonl.tmp-999"
    half_written.write_text('{"half": ')

    report = tokenize.run(settings(speech, out, **common), tmp_path)
    assert report["resumed_files"] == 3 and report["tokenized_this_run"] == 5
    assert not half_written.exists()
    resumed = (out / tokenize.FEATURES).read_text()
    assert resumed == (tmp_path / "uninterrupted" / tokenize.FEATURES).read_text()
    names = [line["file_name"] for line in read_jsonl(out / tokenize.FEATURES)]
    assert len(names) == len(set(names)) == 2 * len(SENTENCES)

    again = tokenize.run(settings(speech, out, **common), tmp_path)
    assert again["resumed_files"] == 8 and again["tokenized_this_run"] == 0
    assert (out / tokenize.FEATURES).read_text() == resumed


def test_other_settings_into_the_same_folder_are_refused(tmp_path, speech, mfcc_centroids):
    common = dict(encoder_path="mfcc", kmeans_path=str(mfcc_centroids))
    tokenize.run(settings(speech, tmp_path / "out", **common), tmp_path)
    with pytest.raises(ValueError, match="other settings .*dedup"):
        tokenize.run(settings(speech, tmp_path / "out", dedup=False, **common), tmp_path)


# What XLA's native libraries log at `import jax`, before any slam_jax code runs: absl's notice and its
# I/W/E-prefixed lines (with the test extra's CUDA plugin on a machine without a GPU: "Could not find cuda
# drivers"). Not slam_jax's output; everything else on stderr is.
NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ )")


def test_command_line_tokenizes_offline_and_fails_in_one_line(tmp_path, speech):
    def main(*overrides):
        command = [sys.executable, "-m", "slam_jax.main", "--config", str(ROOT / "configs" / "tokenize_mfcc.py")]
        command += [f"--config.tokenize.{override}" for override in ("progress=False", "fit_units=10", *overrides)]
        return subprocess.run(command + ["--workdir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)

    result = main(f"data_path={speech}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"tokenized {2 * len(SENTENCES)} of {2 * len(SENTENCES)} files" in result.stdout
    assert len(read_jsonl(tmp_path / "units" / tokenize.FEATURES)) == 2 * len(SENTENCES)
    assert np.load(tmp_path / "units" / tokenize.FITTED_CENTROIDS).shape == (10, 20)

    result = main(f"data_path={tmp_path / 'absent'}")
    assert result.returncode == 1
    lines = [line for line in result.stderr.strip().splitlines() if not NATIVE_LOG.match(line)]
    assert lines == [f"error: {tmp_path / 'absent'}: no such audio folder, file, list or glob match"]
