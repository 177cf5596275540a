"""A run never saves a diverged state nor stops at a damaged checkpoint, and a workdir knows what it holds.

Non-finite updates (a learning-rate spike), checkpoints damaged on disk, settings changed on resume, a second run
in the same workdir, changed source files, a zero gradient and `data.valid_path`'s hold-out, on tiny CPU runs.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_pretrain import ROOT, command, final_params, tiny_config

from slam_jax.data import stores
from slam_jax.data.stores import DataSettings
from slam_jax.data.unit_store import UnitStore
from slam_jax.errors import TrainingError
from slam_jax.training import checkpoints, loop, manifest
from slam_jax.training import step as step_module

BASE = {"train.max_steps": 4, "checkpoint.every_steps": 2, "train.eval_every": 0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workdir with checkpoints at steps 2 and 4 (copied by each test that changes it)."""
    workdir = tmp_path_factory.mktemp("trained")
    loop.run(tiny_config(**BASE), workdir)
    return workdir


def copy_of(workdir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(workdir, target)
    return target


def saved_steps(workdir: Path) -> list[int]:
    return sorted(int(path.name) for path in (workdir / "checkpoints").iterdir() if path.name.isdigit())


def spike_at(monkeypatch, spiked_step: int) -> None:
    """An infinite learning rate for the update of step `spiked_step` (the schedule is asked with the 0-based step)."""
    schedule = loop.Schedule.__call__
    monkeypatch.setattr(
        loop.Schedule, "__call__", lambda self, step: float("inf") if step == spiked_step - 1 else schedule(self, step)
    )


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning:" in line]


def test_a_diverged_update_is_never_saved_and_the_resume_continues_from_the_last_finite_checkpoint(
    trained, tmp_path, monkeypatch, capsys
):
    workdir = tmp_path / "run"
    with monkeypatch.context() as patch:
        spike_at(patch, 4)
        with pytest.raises(TrainingError) as error:
            loop.run(tiny_config(**BASE), workdir)
    message = str(error.value)
    assert "\n" not in message
    assert "after step 4 hold NaN or inf" in message and "the last finite checkpoint is step 2" in message
    assert saved_steps(workdir) == [2]
    assert all(np.isfinite(leaf).all() for leaf in final_params(workdir, 2))

    capsys.readouterr()
    result = loop.run(tiny_config(**BASE), workdir)  # the learning rate of the config, unspiked
    assert "(step 2)" in capsys.readouterr().out and result["step"] == 4
    # The same steps from the same checkpoint: the run that never diverged ends on the same parameters.
    for got, want in zip(final_params(workdir, 4), final_params(trained, 4), strict=True):
        np.testing.assert_array_equal(got, want)


def test_finite_parameters_that_give_a_non_finite_loss_are_never_resumed(trained, tmp_path, capsys):
    """lr 1e30: the parameters stay finite (|w| ~ 1e30) but the model's loss is not; no such state is saved or
    resumed, and a re-run with a sane learning rate trains to the end as a run that never diverged."""
    workdir = tmp_path / "run"
    diverging = {**BASE, "train.learning_rate": 1e30, "checkpoint.every_steps": 1}
    with pytest.raises(TrainingError) as error:
        loop.run(tiny_config(**diverging), workdir)
    assert "\n" not in str(error.value)
    assert "non-finite loss" in str(error.value) or "loss is nan" in str(error.value)
    # Step 1 ran at the warmup's learning rate 0 (a usable state, saved); step 2's state gives a NaN loss.
    assert saved_steps(workdir) == [1]
    capsys.readouterr()
    result = loop.run(tiny_config(**BASE), workdir)
    assert "(step 1)" in capsys.readouterr().out
    assert result["step"] == 4 and np.isfinite(result["loss"])
    for got, want in zip(final_params(workdir, 4), final_params(trained, 4), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_non_finite_loss_right_after_a_checkpoint_marks_it_suspect(trained, tmp_path, monkeypatch, capsys):
    """The loss at step k + 1 is the loss of checkpoint k's state on that step's batch: when it is not finite, the
    next resume sets checkpoint k aside (here the only one: the run starts from its initialisation)."""
    workdir = tmp_path / "run"
    setup = loop.Trainer.setup_task

    def nan_loss_at_step_3(self):
        setup(self)
        step, calls = self.train_step, []

        def train_step(state, batch, lr):
            state, metrics = step(state, batch, lr)
            calls.append(1)
            return state, {**metrics, "loss": metrics["loss"] * np.nan} if len(calls) == 3 else metrics

        self.train_step = train_step

    with monkeypatch.context() as patch:
        patch.setattr(loop.Trainer, "setup_task", nan_loss_at_step_3)
        with pytest.raises(TrainingError) as error:
            loop.run(tiny_config(**BASE), workdir)
    message = str(error.value)
    assert "at step 3" in message and "checkpoint step 2 gave it and is marked suspect" in message, message
    assert "continues from the initialisation" in message
    assert saved_steps(workdir) == [2]
    capsys.readouterr()
    result = loop.run(tiny_config(**BASE), workdir)
    captured = capsys.readouterr()
    rejected = workdir / "rejected_checkpoints" / "step-2"
    assert warnings_in(captured.err) == [
        f"[pretrain] warning: checkpoint step 2 is suspect (loss nan at step 3): moved to {rejected}; starting "
        "from the initialisation"
    ]
    assert result["step"] == 4 and not (workdir / checkpoints.SUSPECTS).exists()
    for got, want in zip(final_params(workdir, 4), final_params(trained, 4), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_non_finite_checkpoint_of_an_older_run_is_set_aside(trained, tmp_path, monkeypatch, capsys):
    workdir = copy_of(trained, tmp_path)
    with monkeypatch.context() as patch:  # what a run without the checks saved: a step-6 checkpoint of inf
        patch.setattr(checkpoints, "all_finite", lambda tree: jnp.asarray(True))
        patch.setattr(loop.Trainer, "evaluate", lambda self, params: None)
        patch.setattr(loop.Trainer, "probe_loss", lambda self, params: 0.0)
        spike_at(patch, 6)
        loop.run(tiny_config(**{**BASE, "train.max_steps": 6}), workdir)
    assert not np.isfinite(final_params(workdir, 6)[0]).all()

    capsys.readouterr()
    result = loop.run(tiny_config(**{**BASE, "train.max_steps": 6}), workdir)
    captured = capsys.readouterr()
    rejected = workdir / "rejected_checkpoints" / "step-6"
    assert warnings_in(captured.err) == [
        f"[pretrain] warning: checkpoint step 6 holds NaN or inf: moved to {rejected}; resuming from step 4"
    ]
    assert "(step 4)" in captured.out and result["step"] == 6
    assert (rejected / "params").is_dir()  # kept, not deleted
    assert (rejected / checkpoints.WHY).read_text() == "step 6 holds NaN or inf\n"
    assert all(np.isfinite(leaf).all() for leaf in final_params(workdir, 6))


def params_data_files(step_dir: Path) -> list[Path]:
    """The params item's OCDBT data files. Damage goes to all of them, not to the largest alone: how OCDBT spreads
    the arrays over its files varies from run to run, and a file may hold only values that no array refers to any
    longer, so damaging one file did not always damage what a restore reads."""
    files = [path for path in (step_dir / "params").rglob("*") if path.is_file() and path.parent.name == "d"]
    assert files, f"no data files under {step_dir / 'params'}"
    return files


def delete_the_params_data_files(step_dir: Path) -> None:
    for path in params_data_files(step_dir):
        path.unlink()


def truncate_the_params_data_files(step_dir: Path) -> None:
    """Each cut to half its size, as an interrupted copy leaves them."""
    for path in params_data_files(step_dir):
        os.truncate(path, path.stat().st_size // 2)


def garble_the_metadata(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text("{step: 4,")


@pytest.mark.parametrize("damage", [delete_the_params_data_files, truncate_the_params_data_files, garble_the_metadata])
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(trained, tmp_path, capsys, damage):
    workdir = copy_of(trained, tmp_path)
    damage(workdir / "checkpoints" / "4")
    result = loop.run(tiny_config(**{**BASE, "train.max_steps": 5}), workdir)
    captured = capsys.readouterr()
    (warning,) = warnings_in(captured.err)
    assert warning.startswith("[pretrain] warning: checkpoint step 4 is unreadable (")
    assert warning.endswith(f"): moved to {workdir / 'rejected_checkpoints' / 'step-4'}; resuming from step 2")
    assert "Traceback" not in captured.err and "(step 2)" in captured.out
    assert result["step"] == 5 and saved_steps(workdir) == [2, 4, 5]


def test_no_readable_checkpoint_is_one_line_listing_them_and_moves_nothing(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    delete_the_params_data_files(workdir / "checkpoints" / "4")
    garble_the_metadata(workdir / "checkpoints" / "2")
    with pytest.raises(TrainingError) as error:
        loop.run(tiny_config(**BASE), workdir)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"no usable checkpoint in {workdir / 'checkpoints'}: step 4 is unreadable (")
    assert "; step 2 is unreadable (JSONDecodeError: " in message
    assert saved_steps(workdir) == [2, 4] and not (workdir / "rejected_checkpoints").exists()


@pytest.mark.parametrize(
    "key, old, new, setting, value",
    [
        ("data.num_units", 20, 30, "data.num_units", 30),
        ("data.context_length", 64, 128, "data.context_length", 128),
        ("seed", 0, 1, "seed", 1),
        # The global batch, not the per-device size: 1 row on each of the 8 devices, then 2.
        ("train.global_batch_rows", 8, 16, "train.per_device_batch_size", 2),
    ],
)
def test_a_setting_changed_on_resume_is_refused_naming_it(trained, tmp_path, key, old, new, setting, value):
    workdir = copy_of(trained, tmp_path)
    config = tiny_config(**BASE)
    if setting == "seed":
        config.seed = value
    else:
        config = tiny_config(**{**BASE, setting: value})
    prepared = sorted(path.name for path in (workdir / "data").iterdir())
    with pytest.raises(ValueError) as error:
        loop.run(config, workdir)
    message = str(error.value)
    assert "\n" not in message
    assert f"{key} was {old!r}, now {new!r}" in message
    assert f"--config.train.allow_changed={key}" in message
    assert sorted(path.name for path in (workdir / "data").iterdir()) == prepared  # nothing prepared anew
    assert saved_steps(workdir) == [2, 4]


def test_allow_changed_lets_a_resume_change_a_setting_and_records_it(trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    changes = {**BASE, "train.max_steps": 5, "train.per_device_batch_size": 2}
    result = loop.run(tiny_config(**changes, **{"train.allow_changed": "train.global_batch_rows"}), workdir)
    assert result["step"] == 5 and "(step 4)" in capsys.readouterr().out
    recorded = json.loads((workdir / manifest.MANIFEST).read_text())
    assert recorded["settings"]["train.global_batch_rows"] == 16
    assert recorded["run"] == {"job": "pretrain", "max_steps": 5, "time_budget": ""}  # what this start was asked
    assert [(change["key"], change["old"], change["new"]) for change in recorded["changes"]] == [
        ("train.global_batch_rows", 8, 16)
    ]


def test_allow_changed_names_only_manifest_keys(tmp_path):
    with pytest.raises(ValueError, match=r"train\.allow_changed names \['train\.learning_rate'\], which are not"):
        loop.run(tiny_config(**{**BASE, "train.allow_changed": "train.learning_rate"}), tmp_path / "run")


def test_a_second_run_in_the_same_workdir_is_refused_naming_the_first(tmp_path):
    workdir = tmp_path / "run"
    process = subprocess.Popen(
        command(workdir, **{"train.max_steps": 100000, "checkpoint.every_steps": 0}),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not ((workdir / ".lock").is_file() and (workdir / ".lock").read_text()):
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.05)
        with pytest.raises(TrainingError) as error:
            loop.run(tiny_config(**BASE), workdir)
        assert "\n" not in str(error.value)
        assert str(error.value).startswith(f"{workdir} is in use by pid {process.pid} on ")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with manifest.workdir_lock(workdir):  # a killed run holds nothing
        assert (workdir / ".lock").read_text().startswith(f"pid {os.getpid()} on ")


def write_units(path: Path, count: int, start: int = 0) -> Path:
    """`count` files of units below 20, one jsonl line each."""
    with open(path, "a") as handle:
        for index in range(start, start + count):
            units = [(index + offset) % 20 for offset in range(5 + index % 7)]
            handle.write(json.dumps({"file_name": f"file{index}.wav", "units": units}) + "\n")
    return path


def sequences(store_dirs: list[str]) -> int:
    return sum(len(UnitStore(store)) for store in store_dirs)


def test_a_prepared_store_is_prepared_again_when_its_source_or_num_units_changes(tmp_path, capsys):
    source = write_units(tmp_path / "units.jsonl", 40)
    data = DataSettings(train_path=str(source), num_units=20, valid_fraction=0.0)
    assert sequences(stores.resolve(data, tmp_path / "work", seed=0).train) == 40
    manifest_file = next((tmp_path / "work" / "data").glob("units-*/train/manifest.json"))
    written = manifest_file.stat().st_mtime_ns
    assert sequences(stores.resolve(data, tmp_path / "work", seed=0).train) == 40
    assert manifest_file.stat().st_mtime_ns == written and "preparing it again" not in capsys.readouterr().out

    write_units(source, 10, start=40)
    assert sequences(stores.resolve(data, tmp_path / "work", seed=0).train) == 50
    assert f"{source} changed (size " in capsys.readouterr().out

    stores.resolve(data.replace(num_units=30), tmp_path / "work", seed=0)
    assert "prepared with num_units=20, now 30; preparing it again" in capsys.readouterr().out
    assert UnitStore(manifest_file.parent).vocab_size == 32


def test_a_zero_gradient_warns_once(tmp_path, monkeypatch, capsys):
    # A loss that does not depend on the parameters: every gradient is exactly zero, the loss stays finite.
    monkeypatch.setattr(step_module, "cross_entropy_sums", lambda logits, batch: (0.0 * jnp.sum(logits), 1.0))
    loop.run(tiny_config(**{**BASE, "train.max_steps": 6, "train.stall_steps": 3}), tmp_path)
    (warning,) = warnings_in(capsys.readouterr().err)
    assert "gradient norm has been exactly 0 for 3 steps in a row (steps 1-3)" in warning
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row for row in rows if "stalled_steps" in row] == [{"step": 3, "stalled_steps": 3.0}]


def test_a_validation_path_holds_nothing_out_of_train_path(tmp_path, capsys):
    train = write_units(tmp_path / "train.jsonl", 60)
    valid = write_units(tmp_path / "valid.jsonl", 9, start=100)
    data = DataSettings(train_path=str(train), num_units=20, valid_fraction=0.5)
    split = stores.resolve(data, tmp_path / "split", seed=0)
    assert sequences(split.train) + sequences(split.valid) == 60 and sequences(split.valid) > 0
    whole = stores.resolve(data.replace(valid_path=str(valid)), tmp_path / "whole", seed=0)
    assert sequences(whole.train) == 60 and sequences(whole.valid) == 9

    # A prepared folder's valid/ split is trained on too, its mixture weight shared by token counts.
    folder = Path(split.train[0]).parent
    both = stores.resolve(data.replace(train_path=str(folder), valid_path=str(valid), weights="2"), tmp_path, 0)
    assert sequences(both.train) == 60
    tokens = [UnitStore(store).num_tokens for store in both.train]
    assert both.weights == pytest.approx([2 * count / sum(tokens) for count in tokens])

    config = tiny_config(**{**BASE, "train.max_steps": 1, "data.train_path": str(train), "data.valid_path": str(valid)})
    loop.run(config, tmp_path / "run")
    assert "[pretrain] validation: 9 sequences from data.valid_path (" in capsys.readouterr().out


def test_checks_are_one_reduction_over_the_tree():
    tree = {"a": jnp.ones((3,)), "b": {"c": jnp.arange(4), "d": jnp.array([1.0, np.inf])}}
    assert not bool(jax.jit(checkpoints.all_finite)(tree))
    assert bool(jax.jit(checkpoints.all_finite)({"a": jnp.ones((3,)), "c": jnp.arange(4)}))
