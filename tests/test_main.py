"""The command line: `python -m slam_jax.main --config configs/X.py` does real work and exits 0."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run_main(*args, workdir, config: str = "selfcheck") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "slam_jax.main", "--config", str(ROOT / "configs" / f"{config}.py"), *args]
    return subprocess.run(command + ["--workdir", str(workdir)], capture_output=True, text=True, cwd=ROOT)


def test_selfcheck_runs_end_to_end(tmp_path):
    result = run_main("--config.model.preset=tiny", "--config.selfcheck.lengths=(8,20)", workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "selfcheck passed" in result.stdout
    summary = json.loads((tmp_path / "selfcheck" / "summary.json").read_text())
    assert summary["speech_params"] < summary["text_params"]
    assert summary["decode_max_abs_diff"] <= 1e-5
    log_likelihoods = np.array(summary["log_likelihoods"])
    assert log_likelihoods.shape == (2,) and np.all(log_likelihoods < 0)
    assert (tmp_path / "selfcheck" / "speech_slamkit" / "model.safetensors").is_file()


def test_unknown_mode_is_a_one_line_error(tmp_path):
    result = run_main("--config.mode=bogus", workdir=tmp_path)
    assert result.returncode != 0
    assert "--config.mode='bogus' is not one of" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_lists_the_valid_ones(tmp_path):
    result = run_main("--config.train.learning_rat=1e-3", workdir=tmp_path, config="slam")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "unknown config key 'train.learning_rat'" in result.stderr
    assert "train.learning_rate" in result.stderr and "data.context_length" in result.stderr
