"""Learning-rate schedules against transformers' schedulers (the reference's Trainer uses them)."""

import pytest
import torch
import transformers

from slam_jax.training import optimizer
from slam_jax.training.settings import parse_duration


def transformers_lrs(make, steps: int) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    torch_optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    scheduler = make(torch_optimizer)
    values = []
    for _ in range(steps):
        values.append(scheduler.get_last_lr()[0])
        torch_optimizer.step()
        scheduler.step()
    return values


def test_warmup_is_max_of_100_steps_and_one_percent():
    assert optimizer.warmup_steps(17_625, 100, 0.01) == 177
    assert optimizer.warmup_steps(5_000, 100, 0.01) == 100


def test_cosine_with_min_lr_matches_transformers():
    total, warmup = 2_000, 100
    expected = transformers_lrs(
        lambda opt: transformers.get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr=5e-5), total
    )
    for step in (0, 1, 50, 99, 100, 101, 700, 1_500, 1_999):
        got = optimizer.learning_rate(step, "cosine", 1e-3, warmup, total, min_lr=5e-5)
        assert got == pytest.approx(expected[step], rel=1e-9, abs=1e-12), step


def test_inverse_sqrt_and_constant_match_transformers():
    inverse = transformers_lrs(lambda opt: transformers.get_inverse_sqrt_schedule(opt, num_warmup_steps=100), 900)
    constant = transformers_lrs(lambda opt: transformers.get_constant_schedule_with_warmup(opt, 100), 300)
    for step in (0, 10, 99, 100, 101, 400, 899):
        assert optimizer.learning_rate(step, "inverse_sqrt", 1e-3, 100, 0) == pytest.approx(inverse[step], rel=1e-9)
    for step in (0, 50, 100, 299):
        assert optimizer.learning_rate(step, "constant", 1e-3, 100, 0) == pytest.approx(constant[step], rel=1e-9)


def test_time_budget_parsing():
    assert parse_duration("23h30m") == 84_600
    assert parse_duration("90m") == 5_400 and parse_duration("45") == 45 and parse_duration("") == 0
    assert parse_duration("1d2h") == 93_600
    with pytest.raises(ValueError, match="train.time_budget='23 hours'"):
        parse_duration("23 hours")
