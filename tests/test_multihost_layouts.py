"""Multi-host pre-training is independent of the layout: 1 process x 4 devices, 2 x 2 and 4 x 1 train the same global
batches to the same per-step losses, gradient norms and validation loss, and a 2 x 2 run's checkpoint resumes on
1 x 4, 4 x 1 and 1 x 1 exactly as the uninterrupted run goes on (`python -m slam_jax.main` in local processes,
`tests/multihost_runs.py`)."""

import json
import shutil

import pytest
from multihost_runs import TOLERANCE, assert_same_steps, launch, pretrain_args, train_rows, validation_losses

STEPS = 6  # two checkpoints: 3 (where the resumes start) and 6
RUN = {"train.max_steps": STEPS, "checkpoint.every_steps": 3}


def checkpoint_meta(workdir, step: int) -> dict:
    return json.loads((workdir / "checkpoints" / str(step) / "meta" / "metadata").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Factory: the run of 6 steps on a layout, launched once per module (each test checks its exit codes)."""
    root, runs = tmp_path_factory.mktemp("layouts"), {}

    def get(layout: str):
        if layout not in runs:
            runs[layout] = launch(root / layout, layout, pretrain_args(layout, RUN))
        return runs[layout]

    return get


@pytest.mark.parametrize("layout", ["2x2", "4x1"])
def test_every_layout_trains_the_same_batches(trained, layout):
    """Same seed, same global batch (8 rows x 2 micro-batches): every step's loss and gradient norm and the final
    validation loss are those of one process with 4 devices; process 0 logs each step once; the checkpoints hold
    the same global data position and the layout that saved them."""
    reference, run = trained("1x4").check(), trained(layout).check()
    logged = [row["step"] for row in run.rows() if "loss" in row]
    assert logged == list(range(1, STEPS + 1)), run.report()
    want = train_rows(reference.workdir)
    assert_same_steps(train_rows(run.workdir), want, range(1, STEPS + 1), what=f"{layout} vs 1x4")
    assert want[STEPS]["loss"] != want[1]["loss"]  # the steps saw different batches
    validation, want_validation = validation_losses(run.workdir), validation_losses(reference.workdir)
    assert list(validation) == list(want_validation) == [STEPS], run.report()
    assert validation[STEPS] == pytest.approx(want_validation[STEPS], rel=TOLERANCE, abs=TOLERANCE)
    meta, want_meta = checkpoint_meta(run.workdir, STEPS), checkpoint_meta(reference.workdir, STEPS)
    assert isinstance(meta["data_position"], int) and meta["data_position"] == want_meta["data_position"] > 0
    assert meta["layout"] == {"processes": int(layout[0]), "devices": 4, "mesh": {"data": 4, "fsdp": 1, "tensor": 1}}


@pytest.mark.parametrize("layout", ["1x4", "4x1", "1x1"])
def test_a_2x2_checkpoint_resumes_on_another_layout(trained, layout, tmp_path):
    """The 2 x 2 run's workdir as it was after its step-3 checkpoint (a copy without checkpoint 6 and its metrics)
    resumes on another layout with the same global batch (1 x 1: 8 rows per device) and says the layout changed;
    steps 4-6, the validation loss and the data position are those of the uninterrupted 1 x 4 run."""
    reference, stopped = trained("1x4").check(), trained("2x2").check()
    workdir = tmp_path / "run"
    shutil.copytree(stopped.workdir, workdir)
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))
    (workdir / "metrics.jsonl").unlink()
    run = launch(workdir, layout, pretrain_args(layout, RUN)).check()
    output = "\n".join(process.stdout + process.stderr for process in run.processes)
    assert "resumed from" in run.stdout and "(step 3)" in run.stdout, run.report()
    assert "layout" in output, run.report()
    resumed = train_rows(workdir)
    assert sorted(resumed) == [4, 5, 6], run.report()
    assert_same_steps(resumed, train_rows(reference.workdir), range(4, STEPS + 1), what=f"2x2 -> {layout} vs 1x4")
    assert validation_losses(workdir)[STEPS] == pytest.approx(
        validation_losses(reference.workdir)[STEPS], rel=TOLERANCE, abs=TOLERANCE
    )
    meta = checkpoint_meta(workdir, STEPS)
    assert meta["data_position"] == checkpoint_meta(reference.workdir, STEPS)["data_position"]
    processes, devices = (int(size) for size in layout.split("x"))
    assert (meta["layout"]["processes"], meta["layout"]["devices"]) == (processes, processes * devices)
