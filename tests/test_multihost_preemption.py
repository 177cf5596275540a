"""A multi-host run whose processes are signalled or lost: SIGTERM to one process stops every process at one saved
step (exit 75) and the same command resumes it exactly; SIGKILL of one process makes the others exit 69 within
`train.host_timeout` + 40 s naming the lost process and the last committed checkpoint, from which the same command
resumes exactly; a checkpoint whose model gives a non-finite loss is never resumed (`python -m slam_jax.main` in
local processes, `tests/multihost_runs.py`). "Exactly": the resumed steps' losses and gradient norms are those of one
uninterrupted process."""

import math
import re

import pytest
from multihost_runs import (
    SIGKILL,
    SIGTERM,
    Signal,
    all_of,
    assert_same_steps,
    checkpoint_committed,
    launch,
    logged_step,
    metrics_rows,
    pretrain_args,
)

FINAL = 12  # the resumed runs' last step (the signals come at step 2 or 3)
LONG = 200  # a run's max_steps when a signal is to stop it mid-run (warmup is 100 steps: the same lr as FINAL's)
HOST_TIMEOUT = 20
EXIT_PREEMPTED, EXIT_HOST_LOST = 75, 69


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """{step: row} of one uninterrupted process with 4 devices, steps 1 to FINAL."""
    workdir = tmp_path_factory.mktemp("reference")
    launch(workdir, "1x4", pretrain_args("1x4", {"train.max_steps": FINAL})).check()
    return {row["step"]: row for row in metrics_rows(workdir) if "loss" in row}


def rows_from(workdir, start: int) -> dict[int, dict]:
    """{step: training row} of the rows of metrics.jsonl from index `start` on (those a resumed run wrote)."""
    return {row["step"]: row for row in metrics_rows(workdir)[start:] if "loss" in row}


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(path.name) for path in (workdir / "checkpoints").glob("*") if path.name.isdigit())


def resume(workdir, layout: str, overrides: dict, reference: dict) -> tuple[int, dict]:
    """Re-run the command to step FINAL on `layout`: (the step it resumed from, {step: row} of what it trained),
    checked against the reference run."""
    before = len(metrics_rows(workdir))
    run = launch(workdir, layout, pretrain_args(layout, {**overrides, "train.max_steps": FINAL})).check()
    found = re.search(r"resumed from \S+ \(step (\d+)\)", run.stdout)
    assert found, run.report()
    start = int(found.group(1))
    resumed = rows_from(workdir, before)
    assert sorted(resumed) == list(range(start + 1, FINAL + 1)), run.report()
    assert_same_steps(resumed, reference, range(start + 1, FINAL + 1), what=f"resumed at {start} vs one process")
    return start, resumed


def test_sigterm_to_one_process_stops_all_at_one_saved_step_and_resumes_exactly(tmp_path, reference):
    """SIGTERM to process 1 of 2 mid-run: both exit 75 within 60 s, each naming the same step k, the one new
    checkpoint is WORKDIR/checkpoints/k, and the same command continues from k as one uninterrupted process."""
    overrides = {"train.max_steps": LONG, "checkpoint.every_steps": 1000}
    term = Signal(1, SIGTERM, logged_step(tmp_path, 2))
    run = launch(tmp_path, "2x2", pretrain_args("2x2", overrides), signals=[term], after_signal=90)
    run.check(EXIT_PREEMPTED)
    sent = run.signals[0].sent_at
    assert all(process.elapsed - sent <= 60 for process in run.processes), run.report()
    found = re.search(r"stopped at step (\d+) \(preempted\)", run.stdout)
    assert found, run.report()
    step = int(found.group(1))
    assert 2 <= step < FINAL, run.report()
    for process in run.processes:  # each process says which step it saved: the same one
        assert re.search(rf"\bstep {step}\b", process.last_line()), run.report()
    assert checkpoint_steps(tmp_path) == [step], run.report()
    assert (tmp_path / "checkpoints" / str(step) / "params").is_dir()

    start, _ = resume(tmp_path, "2x2", overrides, reference)
    assert start == step


LOSE = {"train.max_steps": LONG, "checkpoint.every_steps": 1, "train.host_timeout": HOST_TIMEOUT}


def lose(workdir, lost: int) -> str:
    """Kill process `lost` of a 2 x 2 run once step 3 is logged and checkpoint 2 committed (a checkpoint every step,
    so the kill may land in a save); check that the other exits 69 within train.host_timeout + 40 s and that its
    last stderr line names the lost process and a checkpoint; return that line."""
    kill = Signal(lost, SIGKILL, all_of(logged_step(workdir, 3), checkpoint_committed(workdir, 2)))
    run = launch(workdir, "2x2", pretrain_args("2x2", LOSE), signals=[kill], after_signal=HOST_TIMEOUT + 70)
    codes = [EXIT_HOST_LOST, EXIT_HOST_LOST]
    codes[lost] = -SIGKILL
    run.check(*codes)
    survivor = run.processes[1 - lost]
    assert survivor.elapsed - run.signals[0].sent_at <= HOST_TIMEOUT + 40, run.report()
    last = survivor.last_line()
    assert f"process {lost}" in last and "checkpoint" in last, run.report()
    return last


def test_a_lost_process_stops_the_other_naming_it_and_the_checkpoint_it_resumes_from(tmp_path, reference):
    """SIGKILL of process 1 mid-run: process 0 exits 69 in time naming process 1 and the last committed checkpoint;
    nothing half-written is taken for a checkpoint: the same command on 2 processes resumes from the one named (step
    2 or later) and trains on as one uninterrupted process."""
    last = lose(tmp_path, 1)
    start, resumed = resume(tmp_path, "2x2", LOSE, reference)
    assert start >= 2 and re.search(rf"(checkpoints/|step |checkpoint ){start}\b", last), (start, last)
    assert all(math.isfinite(row["loss"]) for row in resumed.values())


def test_a_lost_coordinator_stops_the_other_naming_it(tmp_path):
    """SIGKILL of process 0 (the coordination service's host): process 1 exits 69 in time, its last stderr line
    naming process 0 and the last committed checkpoint, a complete one (step 2 or later: committed before the
    kill)."""
    last = lose(tmp_path, 0)
    named = re.search(r"checkpoint\D*?(\d+)", last)
    assert named and int(named.group(1)) >= 2, last
    assert (tmp_path / "checkpoints" / named.group(1) / "params").is_dir(), last


def test_a_poisoned_checkpoint_is_not_resumed(tmp_path, reference):
    """lr 1e30 blows the parameters up at step 2 (step 1's lr is 0 in the warmup) while they are still finite, so a
    checkpoint every step can hold a model whose loss is not finite: the run fails with one `error:` line; the same
    command with the default lr then never resumes such a checkpoint and trains to the end as one uninterrupted
    process does (from a checkpoint of step 1, whose parameters are the initial ones, or afresh)."""
    overrides = {"train.max_steps": 6, "checkpoint.every_steps": 1}
    run = launch(tmp_path, "1x4", pretrain_args("1x4", {**overrides, "train.learning_rate": 1e30})).check(1)
    errors = [line for line in run.processes[0].stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.report()

    before = len(metrics_rows(tmp_path))
    run = launch(tmp_path, "1x4", pretrain_args("1x4", overrides)).check()
    trained = rows_from(tmp_path, before)
    assert trained and max(trained) == 6 and min(trained) <= 2, run.report()
    assert sorted(trained) == list(range(min(trained), 7)), run.report()
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) for row in trained.values())
    assert_same_steps(trained, reference, sorted(trained), what="recovered run vs one process")
