"""DPO under the multi-controller runtime: 2 processes x 2 devices train on the same preference pairs, step by step,
as 1 process x 4 devices (`python -m slam_jax.main --config configs/slam_dpo.py` in local processes,
`tests/multihost_runs.py`)."""

import json

import numpy as np
import pytest
from multihost_runs import DPO, assert_same_steps, launch, layout, pretrain_args, train_rows

STEPS = 4
PAIRS = 8  # per step: 4 pairs per micro-batch (one per device) x 2 micro-batches


def write_pairs(path, count=64, seed=0):
    """Toy preferences (tests/test_dpo.py's): the chosen completion repeats the prompt's last unit, the rejected
    one is random."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        for _ in range(count):
            prompt = rng.integers(0, 20, rng.integers(3, 8)).tolist()
            row = {"prompt": prompt, "chosen": [prompt[-1]] * 4, "rejected": rng.integers(0, 20, 4).tolist()}
            handle.write(json.dumps(row) + "\n")
    return path


def dpo_args(layout_text: str, init_from, pairs) -> list[str]:
    """A short DPO run of the tiny pre-trained model, 8 pairs a step whatever the layout."""
    processes, devices = layout(layout_text)
    return [
        f"--config.model.init_from={init_from}",
        "--config.model.compute_dtype=float32",
        "--config.data.num_units=20",
        f"--config.dpo.train_path={pairs}",
        "--config.dpo.max_prompt_length=10",
        "--config.dpo.max_completion_length=6",
        f"--config.train.per_device_batch_size={PAIRS // 2 // (processes * devices)}",
        "--config.train.grad_accum_steps=2",
        "--config.train.learning_rate=3e-3",
        "--config.train.warmup_steps=2",
        f"--config.train.max_steps={STEPS}",
        "--config.train.time_budget=",
        "--config.train.peak_flops_per_device=1e11",
        "--config.checkpoint.every_steps=1000",
        "--config.log.every_steps=1",
        "--config.log.tensorboard=False",
    ]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """(a tiny model pre-trained for 2 steps by one process, the pairs file)."""
    root = tmp_path_factory.mktemp("dpo")
    launch(root / "pretrain", "1x1", pretrain_args("1x1", {"train.max_steps": 2})).check()
    return root / "pretrain", write_pairs(root / "pairs.jsonl")


def test_dpo_on_2x2_steps_as_on_1x4(start, tmp_path):
    """Per-step loss, gradient norm and reward margin (reward accuracy too once the rewards have moved away from
    0, where float noise decides a tie) of 2 x 2 equal 1 x 4's."""
    init_from, pairs = start
    runs = {
        name: launch(tmp_path / name, name, dpo_args(name, init_from, pairs), config=DPO).check()
        for name in ("1x4", "2x2")
    }
    rows = {name: train_rows(run.workdir) for name, run in runs.items()}
    assert sorted(rows["2x2"]) == sorted(rows["1x4"]) == list(range(1, STEPS + 1)), runs["2x2"].report()
    assert rows["1x4"][1]["loss"] == pytest.approx(np.log(2.0), abs=1e-5)  # the policy starts as the reference
    steps = range(1, STEPS + 1)
    assert_same_steps(rows["2x2"], rows["1x4"], steps, keys=("loss", "grad_norm", "reward_margin"), what="DPO 2x2")
    assert_same_steps(rows["2x2"], rows["1x4"], range(3, STEPS + 1), keys=("reward_accuracy",), what="DPO 2x2")
    assert rows["1x4"][STEPS]["loss"] < np.log(2.0) - 1e-3, rows["1x4"]  # it learned: the steps are not trivial
