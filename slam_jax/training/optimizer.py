"""Learning-rate schedules and the optax chain, built from the config.

The learning rate is not baked into the optimiser: the step multiplies the optax update by `-lr(step)`
computed outside jit, so a schedule whose length is decided at run time (a wall-clock budget) needs no
recompilation and resumes exactly.
"""

import math

import optax

from slam_jax.training.settings import SCHEDULES, TrainSettings


def warmup_steps(total_steps: int, warmup: int, warmup_fraction: float) -> int:
    """The recipe's warmup: max(`warmup` steps, `warmup_fraction` of the run)."""
    return max(int(warmup), int(math.ceil(warmup_fraction * total_steps)))


def learning_rate(step: int, schedule: str, peak: float, warmup: int, total_steps: int, min_lr: float = 0.0) -> float:
    """lr at optimiser step `step` (0-based), as `transformers`' schedulers define them.

    cosine: linear warmup from 0, then cosine from `peak` to `min_lr` at `total_steps`
            (get_cosine_with_min_lr_schedule_with_warmup); constant: warmup then `peak`;
    inverse_sqrt: warmup then peak * sqrt(warmup / step) (get_inverse_sqrt_schedule).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"train.schedule={schedule!r} is not one of {SCHEDULES}")
    if step < warmup:
        return peak * step / max(1, warmup)
    if schedule == "constant":
        return peak
    if schedule == "inverse_sqrt":
        return peak * math.sqrt(max(1, warmup) / max(step, 1))
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + (peak - min_lr) * cosine


def build(train: TrainSettings) -> optax.GradientTransformation:
    """clip_by_global_norm -> Adam moments -> decoupled weight decay; the step scales by -lr.

    `train.mu_dtype` is the first moment's dtype: bfloat16 halves its memory and traffic (the second moment
    stays float32)."""
    return optax.chain(
        optax.clip_by_global_norm(train.grad_clip),
        optax.scale_by_adam(b1=train.adam_b1, b2=train.adam_b2, eps=train.adam_eps, mu_dtype=train.mu_dtype),
        optax.add_decayed_weights(train.weight_decay),
    )
