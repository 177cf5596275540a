"""Progress on stderr: a bar on a terminal, one plain line per period in a log file (no carriage return, short)."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile
from test_pretrain import ROOT, command

from configs import tokenize as tokenize_config
from slam_jax import progress
from slam_jax.speech import tokenize
from slam_jax.training import loop

TINY = {
    "model.preset": "tiny",
    "data.num_units": 20,
    "data.context_length": 64,
    "data.synthetic_files": 100,
    "train.per_device_batch_size": 1,
    "train.max_steps": 6,
    "train.eval_every": 0,
    "train.time_budget": "",
    "train.peak_flops_per_device": 1e11,
    "checkpoint.every_steps": 100,
    "log.every_steps": 2,
    "log.tensorboard": False,
}
PLAIN_STEP = re.compile(
    r"^\[pretrain\] step (\d+)/6 \([\d.]+%\) loss [\d.]+ lr [\d.e+-]+ grad_norm \S+ tokens/s [\d,]+ mfu [\d.]+% "
    r"elapsed \d+:\d\d:\d\d eta \d+:\d\d:\d\d$"
)


def quiet_environment(**extra) -> dict[str, str]:
    """This environment without a progress choice of its own."""
    env = {
        key: value for key, value in os.environ.items() if key not in (progress.MODE_VARIABLE, progress.TTY_VARIABLE)
    }
    return env | extra


def train_command(workdir: Path) -> list[str]:
    return command(workdir, **TINY)


def test_a_plain_line_has_the_count_percentage_figures_elapsed_and_eta():
    line = progress.plain_line("pretrain", "step", 120, 2000, {"loss": "3.1234", "mfu": "1.2%"}, 133.0, 120 / 133)
    assert line == "[pretrain] step 120/2,000 (6.0%) loss 3.1234 mfu 1.2% elapsed 0:02:13 eta 0:34:43"
    assert progress.plain_line("tokenize", "files", 3, None, {}, 5.0, 0.6) == "[tokenize] files 3 elapsed 0:00:05"
    assert (
        progress.plain_line("scoring", "batches", 0, 4, {}, 0.0, 0.0) == "[scoring] batches 0/4 (0.0%) elapsed 0:00:00"
    )
    assert progress.duration(90_061) == "25:01:01"


def test_a_plain_line_stays_one_short_line():
    line = progress.plain_line("dpo", "step", 1, 2, {f"figure{i}": "x\r\ny" * 20 for i in range(20)}, 1.0, 1.0)
    assert len(line) < 300 and "\r" not in line and "\n" not in line and line.endswith("...")


def test_the_mode_is_the_setting_then_the_environment_then_the_terminal():
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    terminal, log_file = Stream(True), Stream(False)
    assert progress.choose_mode("auto", {}, terminal) == "bar"
    assert progress.choose_mode("auto", {}, log_file) == "plain"
    assert progress.choose_mode("plain", {progress.MODE_VARIABLE: "bar"}, terminal) == "plain"
    assert progress.choose_mode("bar", {}, log_file) == "bar"
    assert progress.choose_mode("auto", {progress.MODE_VARIABLE: "plain"}, terminal) == "plain"
    assert progress.choose_mode("auto", {progress.MODE_VARIABLE: "auto"}, terminal) == "bar"
    # the child of a supervising parent: the parent's stderr decides, not the pipe between them
    assert progress.choose_mode("auto", {progress.TTY_VARIABLE: "1"}, log_file) == "bar"
    assert progress.choose_mode("auto", {progress.TTY_VARIABLE: "0"}, terminal) == "plain"
    assert progress.choose_mode("auto", {progress.MODE_VARIABLE: "bar", progress.TTY_VARIABLE: "0"}, log_file) == "bar"
    with pytest.raises(ValueError, match="SLAM_JAX_PROGRESS='fancy'"):
        progress.choose_mode("auto", {progress.MODE_VARIABLE: "fancy"}, terminal)
    with pytest.raises(ValueError, match="'fancy'"):
        progress.choose_mode("fancy", {}, terminal)


def test_plain_progress_writes_at_emit_or_per_period_and_at_the_end(capsys, monkeypatch):
    monkeypatch.setenv(progress.MODE_VARIABLE, "plain")
    bar = progress.Progress("pretrain", None, label="step", every_seconds=None)
    bar.update(3, loss="1.0")
    bar.emit({"loss": "1.0000"})
    bar.total = 10
    bar.update(2)
    bar.close()  # lines at emit() only
    assert re.fullmatch(r"\[pretrain\] step 3 loss 1.0000 elapsed 0:00:00\n", capsys.readouterr().err)
    assert list(progress.track(["a", "b"], "scoring", unit="batch")) == ["a", "b"]
    assert re.fullmatch(r"\[scoring\] batches 2/2 \(100.0%\) elapsed 0:00:00 eta 0:00:00\n", capsys.readouterr().err)
    assert list(progress.track(["a"], "scoring", enabled=False)) == ["a"]
    assert capsys.readouterr().err == ""
    assert progress.process_prefix() == ""  # one process, no jax.distributed


def test_a_dpo_row_shows_its_own_metrics():
    row = {
        "loss": 0.6931,
        "learning_rate": 5e-7,
        "grad_norm": 0.25,
        "tokens_per_second": 12345.6,
        "mfu": 0.012,
        "tokens_seen": 1e6,
        "reward_accuracy": 0.75,
        "reward_margin": 0.0123456,
    }
    assert loop.progress_figures(row) == {
        "loss": "0.6931",
        "lr": "5.0e-07",
        "grad_norm": "0.25",
        "tokens/s": "12,346",
        "mfu": "1.2%",
        "reward_accuracy": "0.75",
        "reward_margin": "0.01235",
    }


def test_training_into_a_log_file_writes_one_plain_line_per_metrics_row(tmp_path):
    with open(tmp_path / "stderr.log", "w") as stderr:
        result = subprocess.run(
            train_command(tmp_path / "run"), cwd=ROOT, env=quiet_environment(), stdout=subprocess.PIPE, stderr=stderr
        )
    text = (tmp_path / "stderr.log").read_text()
    assert result.returncode == 0, text[-3000:]
    assert "\r" not in text and max(len(line) for line in text.splitlines()) < 300
    steps = [int(match[1]) for line in text.splitlines() if (match := PLAIN_STEP.match(line))]
    assert steps == [1, 2, 4, 6], text[-3000:]  # the rows of metrics.jsonl
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) >= len(steps)


def test_training_on_a_terminal_draws_the_bar(tmp_path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks = []

    def read():
        try:
            while chunk := os.read(leader, 65_536):
                chunks.append(chunk)
        except OSError:  # the terminal closed
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    command = train_command(tmp_path / "run") + ["--config.train.max_steps=2"]
    result = subprocess.run(command, cwd=ROOT, env=quiet_environment(), stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    reader.join(30)
    os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert result.returncode == 0, text[-3000:]
    assert "\r" in text and re.search(r"pretrain: +\d+%\|", text), text[-3000:]
    assert not any(PLAIN_STEP.match(line) for line in text.splitlines())


def test_tokenize_writes_a_plain_line_of_files_audio_seconds_and_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(progress.MODE_VARIABLE, "plain")
    rng = np.random.default_rng(0)
    (tmp_path / "audio").mkdir()
    for index in range(3):
        soundfile.write(tmp_path / "audio" / f"a{index}.wav", rng.normal(0, 0.1, 8000).astype(np.float32), 16_000)
    config = tokenize_config.get_config()
    config.tokenize.update(
        data_path=str(tmp_path / "audio"), out_path=str(tmp_path / "out"), encoder_path="mfcc", kmeans_path=""
    )
    config.tokenize.update(fit_units=4, fit_num_init=1, progress=True)
    tokenize.run(config, tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[tokenize] files")]
    assert len(lines) == 1 and re.fullmatch(
        r"\[tokenize\] files 3/3 \(100.0%\) audio-s/s [\d.]+ elapsed 0:00:\d\d eta 0:00:00", lines[0]
    ), lines
