"""Vocoder training on several hosts: 2 processes x 1 device train the same global batches as 1 process x 2 devices
(each process builds only its rows of every step), to the same per-step losses, and process 0 alone writes the
metrics and the final vocoder (`python -m slam_jax.main` in local processes, `tests/multihost_runs.py`)."""

import numpy as np
from multihost_runs import assert_same_steps, launch, train_rows
from test_vocoder_training import ONE_RESBLOCK, OVERRIDES, units_dir  # noqa: F401 - the fixture of the espeak units

import slam_jax

STEPS = 3
KEYS = ("loss", "grad_norm", "mel_l1", "discriminator_loss", "discriminator_grad_norm", "duration_mse")


def args(units) -> list[str]:
    values = {
        "data.train_path": units,
        **OVERRIDES,
        "train.max_steps": STEPS,
        "checkpoint.every_steps": STEPS,
        **ONE_RESBLOCK,
    }
    return [f"--config.{key}={value}" for key, value in values.items()]


def test_two_hosts_train_the_one_host_run(units_dir, tmp_path):  # noqa: F811 - the imported fixture
    launch(tmp_path / "1x2", "1x2", args(units_dir), config="configs/vocoder.py", timeout=600).check()
    run = launch(tmp_path / "2x1", "2x1", args(units_dir), config="configs/vocoder.py", timeout=600).check()
    assert_same_steps(
        train_rows(tmp_path / "2x1"), train_rows(tmp_path / "1x2"), range(1, STEPS + 1), KEYS, run.report()
    )
    assert [row["step"] for row in run.rows() if "loss" in row] == list(range(1, STEPS + 1))
    units = np.random.default_rng(2).integers(0, 16, 12)
    ours = slam_jax.load_vocoder(tmp_path / "2x1" / "vocoder").vocode(units)
    theirs = slam_jax.load_vocoder(tmp_path / "1x2" / "vocoder").vocode(units)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.max(np.abs(theirs)))
