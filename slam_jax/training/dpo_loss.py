"""The DPO objective (Rafailov et al., 2023) on per-sequence log-probabilities, as TRL defines it."""

import jax
import jax.numpy as jnp

LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-pair losses and the (gradient-free) implicit rewards beta * (policy - reference) log-ratio.

    sigmoid: -(1 - eps) log sigma(beta h) - eps log sigma(-beta h), with h the difference of the chosen and
    rejected log-ratios (eps = label smoothing; conservative DPO); ipo: (h - 1 / (2 beta))^2.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo.loss_type={loss_type!r} is not one of {LOSS_TYPES}")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -jax.nn.log_sigmoid(beta * h) * (1 - label_smoothing) - jax.nn.log_sigmoid(-beta * h) * label_smoothing
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * jax.lax.stop_gradient(chosen_ratio)
    rejected_rewards = beta * jax.lax.stop_gradient(rejected_ratio)
    return losses, chosen_rewards, rejected_rewards


def dpo_metrics(losses, chosen_rewards, rejected_rewards) -> dict[str, jax.Array]:
    """Batch means: loss, reward accuracy (chosen reward > rejected), rewards and their margin."""
    return {
        "loss": jnp.mean(losses),
        "reward_accuracy": jnp.mean((chosen_rewards > rejected_rewards).astype(jnp.float32)),
        "chosen_reward": jnp.mean(chosen_rewards),
        "rejected_reward": jnp.mean(rejected_rewards),
        "reward_margin": jnp.mean(chosen_rewards - rejected_rewards),
    }
