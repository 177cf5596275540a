"""The pre-training loop end to end on CPU (8 forced devices): logs, checkpoints, resume, budget, NaN, SIGTERM."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import slam_jax
from configs import pretrain_synthetic
from slam_jax.errors import TrainingError
from slam_jax.models import storage
from slam_jax.training import checkpoints, loop

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {
    "model.preset": "tiny",
    "data.num_units": 20,
    "data.context_length": 64,
    "data.synthetic_files": 300,
    "train.per_device_batch_size": 1,
    "train.grad_accum_steps": 2,
    "train.eval_every": 4,
    "train.eval_batches": 2,
    "train.learning_rate": 1e-2,
    "train.warmup_steps": 2,
    "train.time_budget": "",
    "train.peak_flops_per_device": 1e11,
    "checkpoint.every_steps": 4,
    "log.every_steps": 1,
}


def tiny_config(**changes):
    config = pretrain_synthetic.get_config()
    for key, value in {**OVERRIDES, **changes}.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    return config


def command(workdir, **changes) -> list[str]:
    args = [f"--config.{key}={value}" for key, value in {**OVERRIDES, **changes}.items()]
    return [
        sys.executable,
        "-m",
        "slam_jax.main",
        "--config",
        "configs/pretrain_synthetic.py",
        "--workdir",
        str(workdir),
        *args,
    ]


def final_params(workdir, step):
    return jax.tree.leaves(jax.device_get(storage.load_params(Path(workdir) / "checkpoints" / str(step))))


def test_training_logs_learns_and_saves_a_loadable_model(tmp_path, capsys):
    result = loop.run(tiny_config(**{"train.max_steps": 12}), tmp_path)
    assert "[pretrain] attention kernel: xla (model.attention='auto', cpu)" in capsys.readouterr().out
    assert result["step"] == 12 and result["stop_reason"] == "max_steps"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if "loss" in row]
    assert [row["step"] for row in train_rows] == list(range(1, 13))
    assert {"step", "loss", "learning_rate", "tokens_per_second", "grad_norm", "mfu"} <= set(train_rows[0])
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.3
    validation = [row for row in rows if "validation_loss" in row]
    assert [row["step"] for row in validation] == [4, 8, 12]
    assert validation[-1]["validation_loss"] < validation[0]["validation_loss"]
    assert list((tmp_path / "tensorboard").iterdir())
    model = slam_jax.load_model(tmp_path, compute_dtype="float32")
    assert model.config.vocab_size == 22
    assert np.isfinite(model.log_likelihood([[1, 5, 6, 7, 1]])).all()

    again = loop.run(tiny_config(**{"train.max_steps": 12}), tmp_path)  # a finished run, re-run: nothing to train
    out = capsys.readouterr().out
    assert again["step"] == 12 and "loss" not in again
    assert "stopped at step 12 (max_steps); no step to train (resumed at the end)" in out and "nan" not in out
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == list(range(1, 13))  # no step trained again


def test_the_first_step_is_timed_with_its_compilation_and_names_the_cache():
    started = time.perf_counter() - 2.0  # a step begun 2 s ago
    line = loop.first_step_line(started, {"loss": jax.numpy.ones(())}, "/data/xla_cache")
    assert re.fullmatch(r"first step 2\.\d s, its compilation included \(compilation cache /data/xla_cache\)", line)
    line = loop.first_step_line(time.perf_counter(), {"loss": jax.numpy.ones(())}, None)
    assert line.endswith("(set JAX_COMPILATION_CACHE_DIR to keep the compiled step)")


def test_time_budget_sets_the_schedule_and_stops(tmp_path):
    changes = {
        "train.max_steps": 0,
        "train.time_budget": "30s",
        "train.calibration_steps": 2,
        "train.eval_every": 0,
        "checkpoint.every_steps": 0,
    }
    result = loop.run(tiny_config(**changes), tmp_path)
    assert result["stop_reason"] == "time_budget"
    meta = json.loads((tmp_path / "checkpoints" / str(result["step"]) / "meta" / "metadata").read_text())
    assert meta["elapsed_seconds"] >= 30
    assert meta["total_steps"] > 0  # the cosine length was set from the measured speed


def test_budget_planner_fits_the_cosine_to_the_remaining_time():
    planner = loop.BudgetPlanner(budget=100.0, calibration_steps=2)
    assert not planner.plan(0, 5.0)  # the first step compiles: not timed
    assert not planner.plan(1, 10.0) and not planner.plan(2, 11.0)
    assert planner.plan(3, 12.0)
    assert planner.seconds_per_step == 1.0 and planner.total_steps == 3 + 88
    planner.interrupted()  # an evaluation or a save restarts the measurement
    assert not planner.plan(4, 20.0) and planner.window == (4, 20.0)


def test_nan_loss_stops_without_saving_the_nan_state(tmp_path):
    with pytest.raises(TrainingError, match="loss is (nan|inf).*stopped without saving.*finite checkpoint is none"):
        loop.run(tiny_config(**{"train.max_steps": 12, "train.learning_rate": 1e38, "train.warmup_steps": 0}), tmp_path)
    for step_dir in (tmp_path / "checkpoints").glob("[0-9]*"):
        assert all(np.isfinite(leaf).all() for leaf in final_params(tmp_path, int(step_dir.name)))


def test_killed_run_resumes_to_identical_params(tmp_path):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    changes = {"train.max_steps": 10, "checkpoint.every_steps": 2}
    subprocess.run(command(uninterrupted, **changes), cwd=ROOT, check=True, capture_output=True)

    process = subprocess.Popen(
        command(killed, **changes), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "4").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "checkpoints" / "10").exists(), "the run finished before it could be killed"
    partial = killed / "checkpoints" / "99.orbax-checkpoint-tmp-1234" / "params"
    partial.mkdir(parents=True)  # what a kill in the middle of a save leaves behind
    (partial / "half_written").write_bytes(b"\0" * 100)

    resumed = subprocess.run(command(killed, **changes), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr + resumed.stdout
    cache = os.environ["JAX_COMPILATION_CACHE_DIR"]  # the test session's (conftest), inherited by the command
    first = rf"\[pretrain\] first step \d+\.\d s, its compilation included \(compilation cache {re.escape(cache)}\)"
    assert re.search(first, resumed.stdout)
    for got, want in zip(final_params(killed, 10), final_params(uninterrupted, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    steps = lambda d: [json.loads(line)["step"] for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert set(steps(uninterrupted)) <= set(steps(killed))


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    process = subprocess.Popen(
        command(tmp_path, **{"train.max_steps": 100000, "checkpoint.every_steps": 1000}),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (tmp_path / "metrics.jsonl").is_file() or len((tmp_path / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-2000:]  # EX_TEMPFAIL: stopped early, the same command resumes
    assert "(preempted)" in stdout
    saved = checkpoints.Checkpointer(tmp_path / "checkpoints", 0, 0, 3).latest_step()
    assert saved is not None and saved >= 3
