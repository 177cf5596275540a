"""HiFi-GAN's GAN losses (the pip `hifi-gan`'s `models.py`), the mel L1 loss of its generator step and CodeHiFiGAN's
duration predictor loss, in JAX.

The reference's training step: the discriminators' loss is `discriminator_loss` of the MPD's plus the MSD's scores
on the real batch and the (detached) generated one; the generator's loss is
45 x `mel_loss` + `feature_loss` (MPD and MSD) + `generator_loss` (MPD and MSD), plus, for CodeHiFiGAN with a
duration predictor, `duration_loss`. Scores and feature maps are lists (one entry per sub-discriminator) as
`slam_jax.models.discriminators` returns them; the per-discriminator losses come back as arrays (the reference
returns the discriminator's as Python floats via .item(), which a jitted step cannot).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def feature_loss(fmap_real: Sequence[Sequence[jax.Array]], fmap_generated: Sequence[Sequence[jax.Array]]) -> jax.Array:
    """2 x the sum over every sub-discriminator's every feature map of mean |real - generated| (the reference does
    not detach the real maps; they do not depend on the generator)."""
    loss = jnp.zeros((), jnp.float32)
    for maps_real, maps_generated in zip(fmap_real, fmap_generated, strict=True):
        for real, generated in zip(maps_real, maps_generated, strict=True):
            loss = loss + jnp.mean(jnp.abs(real - generated))
    return loss * 2


def discriminator_loss(
    real_scores: Sequence[jax.Array], generated_scores: Sequence[jax.Array]
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """Least-squares GAN loss of the discriminators: (sum over sub-discriminators of mean((1 - real)^2) +
    mean(generated^2), the real terms, the generated terms)."""
    loss = jnp.zeros((), jnp.float32)
    real_losses, generated_losses = [], []
    for real, generated in zip(real_scores, generated_scores, strict=True):
        real_loss, generated_loss = jnp.mean(jnp.square(1 - real)), jnp.mean(jnp.square(generated))
        loss = loss + (real_loss + generated_loss)
        real_losses.append(real_loss)
        generated_losses.append(generated_loss)
    return loss, real_losses, generated_losses


def generator_loss(generated_scores: Sequence[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
    """Least-squares GAN loss of the generator: (sum over sub-discriminators of mean((1 - generated)^2), the terms)."""
    losses = [jnp.mean(jnp.square(1 - generated)) for generated in generated_scores]
    loss = jnp.zeros((), jnp.float32)
    for term in losses:
        loss = loss + term
    return loss, losses


def mel_loss(mel_real: jax.Array, mel_generated: jax.Array) -> jax.Array:
    """mean |mel_real - mel_generated| (F.l1_loss; the reference's generator step weighs it by 45)."""
    return jnp.mean(jnp.abs(mel_real - mel_generated))


def duration_loss(log_predicted: jax.Array, durations: jax.Array, mask: jax.Array) -> jax.Array:
    """CodeHiFiGAN's duration predictor loss: the mean over the valid units (mask true) of
    (log_predicted - log(durations + 1))^2, as F.mse_loss(log_predicted[mask], log(durations + 1)); all arrays
    [batch, units]. With no valid unit it is 0 (torch's mean of nothing is nan)."""
    target = jnp.log(durations.astype(jnp.float32) + 1)
    squared = jnp.where(mask, jnp.square(log_predicted - target), 0.0)
    return jnp.sum(squared) / jnp.maximum(jnp.sum(mask), 1)
