"""Training: mesh and sharding rules, optimiser and schedules, train and DPO steps, checkpoints, the loop."""

from slam_jax.training.dpo_loss import dpo_loss

__all__ = ["dpo_loss"]
