"""The training jobs' typed settings: every shipped config loads, and a bad value is one line naming its key."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from slam_jax.data.stores import DataSettings
from slam_jax.training import dpo, loop
from slam_jax.training.settings import MeshSettings, PretrainJob, TrainSettings, parse_duration

ROOT = Path(__file__).resolve().parents[1]
JOBS = {"pretrain": PretrainJob, "dpo": dpo.DpoJob}


def training_configs() -> list[tuple[str, ConfigDict]]:
    """(name, config) of every pretrain / dpo job in configs/, pipeline stages included."""
    found = []
    for path in sorted((ROOT / "configs").glob("*.py")):
        if path.name == "__init__.py":
            continue
        config = runpy.run_path(str(path))["get_config"]()
        sections = [(path.stem, config)]
        if config.mode == "pipeline":
            sections = [(f"{path.stem}.{stage}", config[stage]) for stage in config.pipeline.stages.split(",")]
        found += [(name, without_stage_paths(section)) for name, section in sections if section.get("mode") in JOBS]
    return found


def without_stage_paths(config: ConfigDict) -> ConfigDict:
    """A stage's `model.init_from` names an earlier stage's output (`{workdir}/pretrain`), which exists only
    when the pipeline reaches the stage: blank it to load the rest."""
    config = ConfigDict(config.to_dict())
    if "{workdir}" in config.model.init_from:
        config.model.init_from = ""
    return config


def test_every_shipped_training_config_loads_into_its_job():
    names = []
    for name, config in training_configs():
        job = JOBS[config.mode].from_config(config, "config")
        assert job.train.per_device_batch_size == config.train.per_device_batch_size, name
        assert job.data.context_length == config.data.context_length, name
        names.append(name)
    assert {"slam", "slam_dpo", "demo.pretrain", "demo.dpo", "pretrain_synthetic"} <= set(names), names


def test_the_paper_values_are_the_defaults():
    """Table 4's optimiser and schedule (docs/recipe.md) with nothing set."""
    train = TrainSettings()
    assert (train.learning_rate, train.min_learning_rate, train.grad_clip) == (1e-3, 5e-5, 0.5)
    assert (train.adam_b1, train.adam_b2, train.adam_eps, train.weight_decay) == (0.9, 0.999, 1e-8, 0.0)
    assert (train.per_device_batch_size, train.grad_accum_steps, train.warmup_steps) == (8, 16, 100)
    assert parse_duration(train.time_budget) == 23.5 * 3600
    assert (DataSettings().num_units, DataSettings().context_length) == (500, 1024)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.learning_rate", -1.0, r"config\.train\.learning_rate=-1\.0: must be >= 0"),
        ("train.schedule", "linear", r"config\.train\.schedule='linear': not one of"),
        ("train.grad_accum_steps", 0, r"config\.train\.grad_accum_steps=0: must be > 0"),
        ("data.context_length", 0, r"config\.data\.context_length=0: must be >= 2"),
        ("data.packing", "yes", r"config\.data\.packing='yes': expected true or false"),
        ("model.attention", "flash", r"config\.model\.attention='flash': not one of"),
        ("model.init_from", "/no/such/model", r"config\.model\.init_from='/no/such/model': no such file"),
        ("train.time_budget", "ten minutes", r"config\.train\.time_budget='ten minutes': use e\.g\."),
    ],
)
def test_a_bad_value_names_its_key(key, value, message):
    values = runpy.run_path(str(ROOT / "configs/slam.py"))["get_config"]().to_dict()
    section, name = key.split(".")
    values[section][name] = value  # a plain dict: ConfigDict itself refuses some type changes
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        PretrainJob.from_dict(values, "config")


def test_unknown_keys_and_sections_are_refused():
    config = runpy.run_path(str(ROOT / "configs/slam.py"))["get_config"]()
    config.train.learnig_rate = 1e-3
    with pytest.raises(ValueError, match=r"config\.train: unknown keys \['learnig_rate'\]"):
        PretrainJob.from_config(config, "config")
    del config.train.learnig_rate
    config.trian = ConfigDict({"max_steps": 1})
    with pytest.raises(ValueError, match=r"config: unknown keys \['trian'\]"):
        PretrainJob.from_config(config, "config")


def test_cross_field_checks():
    with pytest.raises(ValueError, match=r"mesh: sizes \(-1, -1, 1\) must be >= 1, with at most one -1"):
        MeshSettings.from_dict({"data": -1, "fsdp": -1}, "mesh")
    with pytest.raises(ValueError, match="train: set max_steps and/or time_budget"):
        TrainSettings.from_dict({"max_steps": 0, "time_budget": ""}, "train")


def test_settings_are_checked_before_any_work(tmp_path):
    """A bad value stops `loop.run` before the workdir is touched."""
    config = runpy.run_path(str(ROOT / "configs/pretrain_synthetic.py"))["get_config"]()
    config.train.per_device_batch_size = -2
    with pytest.raises(ValueError, match=r"config\.train\.per_device_batch_size=-2"):
        loop.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_command_line_reports_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "slam_jax.main",
            "--config",
            str(ROOT / "configs/pretrain_synthetic.py"),
            "--config.data.context_length=1",
            "--workdir",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: config.data.context_length=1: must be >= 2"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
