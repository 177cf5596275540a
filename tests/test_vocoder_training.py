"""`mode: train_vocoder` end to end on espeak speech tokenised offline (MFCC units): the step learns, a SIGKILLed
run resumes to the uninterrupted run's parameters and losses, the output folder is the vocoder `load_vocoder`
reads and the textless export loads in the original PyTorch `Generator`, and bad units or audio are one line."""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hifi_gan.models import Generator
from speech_fixtures import ESPEAK_RATE, synthesize
from tensorboardX.proto import event_pb2
from test_vocoder import reference_generator

import slam_jax
from conversion import vocoder_to_textless
from slam_jax.models import vocoder
from slam_jax.speech import segments
from slam_jax.training import vocoder as training
from slam_jax.training import vocoder_step

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A speech language model learns from sound alone.",
    "Seven small boats sailed slowly across the quiet bay.",
    "Rain fell on the old town all through the night.",
    "Every morning the baker opens his shop at six.",
    "Bright stars shone above the silent mountains.",
)
NUM_UNITS = 16
OVERRIDES = {
    "data.num_units": NUM_UNITS,
    "data.valid_clips": 1,
    "data.segment_frames": 6,
    "model.embedding_dim": 8,
    "model.upsample_initial_channel": 32,
    "model.duration_predictor_dim": 8,
    "model.discriminator_divisor": 8,
    "train.per_device_batch_size": 1,
    "train.learning_rate": 1e-3,
    "train.time_budget": "",
    "train.eval_every": 0,
    "checkpoint.every_steps": 2,
    "log.every_steps": 1,
    "log.progress": "plain",
    "log.tensorboard": False,  # on in the one test that reads it (its mels and audio cost a generation per check)
}
# One residual block per stage instead of three, for the runs that compare runs with each other (kill and resume
# here, hosts against devices in test_multihost_vocoder.py): the generator compiles in about two thirds of the time
ONE_RESBLOCK = {"model.resblock_kernel_sizes": "(3,)", "model.resblock_dilation_sizes": "((1,3,5),)"}


@pytest.fixture(scope="module")
def units_dir(tmp_path_factory) -> Path:
    """Six espeak sentences tokenised by the offline MFCC tokeniser with 16 fitted units."""
    root = tmp_path_factory.mktemp("vocoder_data")
    (root / "audio").mkdir()
    for index, text in enumerate(SENTENCES):
        soundfile.write(root / "audio" / f"s{index}.wav", synthesize(text), ESPEAK_RATE)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "slam_jax.main",
            "--config",
            "configs/tokenize_mfcc.py",
            f"--config.tokenize.data_path={root / 'audio'}",
            f"--config.tokenize.out_path={root / 'units'}",
            f"--config.tokenize.fit_units={NUM_UNITS}",
            "--workdir",
            str(root / "work"),
        ],
        cwd=ROOT,
        env=ENV,
        check=True,
        capture_output=True,
    )
    return root / "units"


# The runs split each step's rows over 2 devices (the test session forces 8, more than the 5 training clips).
ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def command(units: Path, workdir: Path, **changes) -> list[str]:
    values = {"data.train_path": units, **OVERRIDES, **changes}
    return [
        sys.executable,
        "-m",
        "slam_jax.main",
        "--config",
        "configs/vocoder.py",
        "--workdir",
        str(workdir),
        *[f"--config.{key}={value}" for key, value in values.items()],
    ]


def losses(workdir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    keep = ("loss", "mel_l1", "discriminator_loss", "duration_mse", "feature_matching", "adversarial")
    return {row["step"]: {key: row[key] for key in keep} for row in rows if "loss" in row}


def test_a_killed_run_resumes_to_the_uninterrupted_runs_losses_and_vocoder(units_dir, tmp_path):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    run = {"train.max_steps": 6, **ONE_RESBLOCK}
    subprocess.run(command(units_dir, uninterrupted, **run), cwd=ROOT, env=ENV, check=True, capture_output=True)
    process = subprocess.Popen(
        command(units_dir, killed, **run),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "2" / "_CHECKPOINT_METADATA").is_file() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / "6").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(command(units_dir, killed, **run), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    want, got = losses(uninterrupted), losses(killed)
    assert sorted(want) == list(range(1, 7)) and set(want) <= set(got)
    for step in want:
        assert got[step] == want[step], step  # bit-identical: same batches, dropout and spectral-norm vectors
    ours = slam_jax.load_vocoder(killed / "vocoder")
    theirs = slam_jax.load_vocoder(uninterrupted / "vocoder")
    units = np.random.default_rng(0).integers(0, NUM_UNITS, 20)
    np.testing.assert_array_equal(ours.vocode(units), theirs.vocode(units))
    assert ours.predicts_durations and ours.num_units == NUM_UNITS


@pytest.fixture(scope="module")
def trained(units_dir, tmp_path_factory) -> Path:
    """The workdir of a 2-step run with TensorBoard on (shared by the export and fine-tuning tests)."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    run = {"train.max_steps": 2, "log.tensorboard": True}
    subprocess.run(command(units_dir, workdir, **run), cwd=ROOT, env=ENV, check=True, capture_output=True)
    return workdir


def test_the_trained_vocoder_exports_to_the_textless_layout_the_pytorch_generator_loads(trained, tmp_path):
    workdir = trained
    assert vocoder_to_textless.main(["--vocoder", str(workdir / "vocoder"), "--out", str(tmp_path / "textless")]) == 0
    config = json.loads((tmp_path / "textless" / "config.json").read_text())
    state = torch.load(tmp_path / "textless" / "generator.pt", weights_only=True)["generator"]
    generator: Generator = reference_generator(config, seed=1)
    own = {key: value for key, value in state.items() if not key.startswith(("dict.", "dur_predictor."))}
    generator.load_state_dict(own, strict=True)
    generator.remove_weight_norm()
    units = np.random.default_rng(1).integers(0, NUM_UNITS, 15)
    features = state["dict.weight"].numpy()[units].T[None]
    with torch.no_grad():
        reference = generator(torch.from_numpy(np.ascontiguousarray(features)))[0, 0].numpy()
    ours = slam_jax.load_vocoder(workdir / "vocoder").vocode(units)
    assert np.max(np.abs(ours - reference)) <= 1e-4 * np.max(np.abs(reference))
    status = subprocess.run(
        [sys.executable, "-m", "slam_jax.status", str(workdir)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "finished (train_vocoder)" in status and "validation  step 2: validation_mel_l1" in status
    assert re.search(r"audio +\S+ of segments seen", status), status
    media = tensorboard_values(workdir)  # the held-out clip's mels as images and its audio, real and generated
    for tag in ("valid_0/real", "valid_0/generated"):
        assert {(tag, "image"), (tag, "audio")} <= media, sorted(media)
    assert ("validation_mel_l1", "simple_value") in media and ("mel_l1", "simple_value") in media


def test_fine_tuning_starts_from_the_init_from_vocoder(units_dir, trained, tmp_path):
    """`model.init_from`: the run starts from that vocoder's generator (a step at learning rate 0 keeps it, so the
    output folder is that vocoder again, through weight norm's split and fold)."""
    first, tuned = trained, tmp_path / "tuned"
    changes = {
        "train.max_steps": 1,
        "train.learning_rate": 0.0,
        "model.init_from": first / "vocoder",
        "model.embedding_dim": 99,
    }  # the architecture comes from init_from
    result = subprocess.run(command(units_dir, tuned, **changes), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tuned / "run_manifest.json").read_text())
    assert manifest["settings"]["model.init_from"].startswith(f"{NUM_UNITS} units x 8,")
    units = np.random.default_rng(3).integers(0, NUM_UNITS, 16)
    want = slam_jax.load_vocoder(first / "vocoder").vocode(units)
    got = slam_jax.load_vocoder(tuned / "vocoder").vocode(units)
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def tensorboard_values(workdir: Path) -> set[tuple[str, str]]:
    """(tag, kind) of every summary value in the run's TensorBoard event files (TFRecord framing, tensorboardX's
    protos: no TensorFlow needed)."""
    found = set()
    for path in (workdir / "tensorboard").glob("events.out.tfevents.*"):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            found |= {(value.tag, value.WhichOneof("value")) for value in event.summary.value}
    return found


def test_weight_norm_split_and_fold_round_trip():
    config = vocoder.VocoderConfig(
        num_embeddings=5,
        embedding_dim=4,
        upsample_rates=(2, 2),
        upsample_kernel_sizes=(4, 4),
        upsample_initial_channel=8,
        resblock_kernel_sizes=(3,),
        resblock_dilation_sizes=((1, 3, 5),),
        duration_predictor_dim=4,
    )
    params = vocoder.get_params(vocoder.init_model(config, seed=3))
    split = vocoder_step.split_weight_norm(params)
    assert set(split["conv_pre"]) == {"g", "v", "bias"} and split["conv_pre"]["g"].shape == (8,)
    assert split["stages"][0]["upsample"]["g"].shape == (8,)  # torch's ConvTranspose1d: one per input channel
    assert "kernel" in split["duration_predictor"]["conv1"]  # not weight-normed in the reference
    folded = vocoder_step.fold(split)
    for got, want in zip(__import__("jax").tree.leaves(folded), __import__("jax").tree.leaves(params), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_segments_follow_from_the_seed_and_step(units_dir):
    entries = segments.read_entries(units_dir / "features.jsonl", NUM_UNITS, "")
    clips = segments.load_clips(entries)
    plan = segments.Segments(clips, segment_frames=6, hop=640, batch=2, seed=7)
    assert plan.steps_per_epoch == len(clips) // 2
    first = [plan.rows(step) for step in range(plan.steps_per_epoch)]
    visited = sorted(clip for rows in first for clip, _ in rows)
    assert visited == sorted(set(visited)) and len(visited) == 2 * plan.steps_per_epoch  # each clip once per epoch
    assert plan.rows(3) == segments.Segments(clips, 6, 640, 2, seed=7).rows(3)
    batch = plan.build(plan.rows(0))
    for row, (index, start) in enumerate(plan.rows(0)):
        clip = clips[index]
        np.testing.assert_array_equal(batch["units"][row], clip.frame_units[start : start + 6])
        np.testing.assert_array_equal(batch["audio"][row], clip.samples[start * 640 : (start + 6) * 640])
        count = batch["num_runs"][row]
        expanded = np.repeat(batch["run_units"][row, :count], batch["run_frames"][row, :count])
        np.testing.assert_array_equal(expanded, batch["units"][row])
        assert np.max(np.abs(clip.samples)) == pytest.approx(0.95)


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"units": [1, 99], "duration": [1, 1], "file_name": "x.wav"}', "features.jsonl:1: unit 99 is outside 0..15"),
        ('{"units": [1, 2], "duration": [1], "file_name": "x.wav"}', "features.jsonl:1: 'units' and 'duration'"),
        ('{"units": [1, 2], "duration": [1, 1]}', "features.jsonl:1: no 'file_name'"),
        ('{"units": [1, 2], "duration": [1, 1], "file_name": "missing.wav"}', "features.jsonl:1: audio missing.wav"),
    ],
)
def test_bad_units_or_audio_are_one_line_naming_the_line(tmp_path, line, fragment):
    (tmp_path / "features.jsonl").write_text(line + "\n" + line + "\n")
    result = subprocess.run(
        command(tmp_path, tmp_path / "w", **{"train.max_steps": 1, "data.valid_clips": 0}),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    errors = [row for row in result.stderr.splitlines() if row.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr[-1500:]


def test_the_config_refuses_odd_upsampling_in_one_line(units_dir):
    from configs import vocoder as config_module

    config = config_module.get_config()
    config.data.train_path = str(units_dir)
    config.model.upsample_kernel_sizes = (11, 8, 8, 8, 5)
    job = training.VocoderJob.from_config(config, "config")
    with pytest.raises(ValueError, match="upsample_kernel_sizes.*even"):
        training.generator_config(job)
