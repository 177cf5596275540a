"""The vocoder's training step: HiFi-GAN's two updates, in its order, as one compiled function.

Per step, as HiFi-GAN's `train.py` (and CodeHiFiGAN's, which adds the duration predictor):
    1. the generator makes y_hat from the segment's frame units; the duration predictor (dropout on) predicts
       log(1 + frames) of the segment's runs;
    2. discriminator update: least-squares loss of both discriminators (MPD, MSD) on the real y and on y_hat
       (no gradient into the generator), AdamW step;
    3. generator update, with the UPDATED discriminators: mel L1 x `mel_weight` (45) + feature matching (x 2 inside
       `feature_loss`) + least-squares adversarial loss of both + `duration_weight` x the duration MSE, AdamW step.
The generator runs once: its outputs' vector-Jacobian product carries step 3's gradient back to its parameters.

The generator trains with weight norm, as the reference does: each of its convolution kernels is kept as
(g, v), kernel = g * v / ||v|| (`fold`); the norm is over every axis but torch's first (a Conv1d's output
channels, a ConvTranspose1d's input channels). The inference vocoder (models/vocoder.py) holds folded kernels.

The state: `params` = {"generator", "mpd", "msd"}; `opt_state` = {"generator": AdamW state, "discriminator":
AdamW state of mpd + msd, "spectral": the spectral-norm power-iteration vectors of the MSD's first
discriminator (not trained: advanced by every call, as torch's spectral_norm in training mode)}.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from slam_jax import parallel
from slam_jax.models import discriminators
from slam_jax.models import vocoder as generator_model
from slam_jax.speech import mel as mel_frontend
from slam_jax.training import vocoder_losses as losses
from slam_jax.training.step import TrainState

WEIGHT_NORMED = ("conv_pre", "stages", "conv_post")  # the generator's subtrees whose kernels are weight-normed


def _norm_axes(path: tuple[str, ...]) -> tuple[int, int]:
    """Axes of a [width, in, out] kernel that torch's weight norm (dim=0) sums over: (width, in) for a Conv1d,
    (width, out) for an upsampling ConvTranspose1d (whose torch weight is [in, out, width])."""
    return (0, 2) if "upsample" in path else (0, 1)


def _map_kernels(params: dict, fn, path: tuple[str, ...] = ()) -> dict:
    """`params` with every weight-normed layer's subtree {kernel | g, v, bias} replaced by `fn(path, layer)`."""
    if "bias" in params and ("kernel" in params or "v" in params) and path and path[0] in WEIGHT_NORMED:
        return fn(path, params)
    return {
        key: _map_kernels(value, fn, (*path, str(key))) if isinstance(value, dict) else value
        for key, value in params.items()
    }


def split_weight_norm(params: dict) -> dict:
    """Inference parameters -> training parameters: each weight-normed kernel as g = ||kernel||, v = kernel."""

    def split(path, layer):
        axes = _norm_axes(path)
        kernel = layer["kernel"]
        return {"g": jnp.sqrt(jnp.sum(jnp.square(kernel), axis=axes)), "v": kernel, "bias": layer["bias"]}

    return _map_kernels(params, split)


def fold(params: dict) -> dict:
    """Training parameters -> inference parameters: kernel = g * v / ||v|| (torch's `_weight_norm`)."""

    def folded(path, layer):
        axes = _norm_axes(path)
        v = layer["v"]
        norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))
        return {"kernel": v * (jnp.expand_dims(layer["g"], axes) / norm), "bias": layer["bias"]}

    return _map_kernels(params, folded)


def duration_log_predictions(model: generator_model.CodeHiFiGAN, run_units, num_runs, key, dropout: float):
    """The duration predictor in training mode on each row's runs: [rows, runs] log(1 + frames), with dropout
    after each layer norm (the reference's VariancePredictor: conv, ReLU, layer norm, dropout, twice; a linear
    head)."""
    predictor = model.duration_predictor
    mask = generator_model.frame_mask(num_runs, run_units.shape[1])
    keys = jax.random.split(key)

    def drop(x, index):
        if not dropout:
            return x
        keep = jax.random.bernoulli(keys[index], 1.0 - dropout, x.shape)
        return jnp.where(keep, x / (1.0 - dropout), 0.0)

    x = model.unit_embedding[...][run_units] * mask
    hidden = drop(predictor.layer_norm1(jax.nn.relu(predictor.conv1(x))), 0) * mask
    hidden = drop(predictor.layer_norm2(jax.nn.relu(predictor.conv2(hidden))), 1)
    return predictor.proj(hidden)[..., 0]


def generator_outputs(params, batch, key, graphdef, dropout: float):
    """(y_hat [rows, samples], log-duration predictions [rows, runs] or None) of training parameters."""
    model = nnx.merge(graphdef, fold(params))
    units = batch["units"]
    rows, frames = units.shape
    lengths = jnp.full((rows,), frames, jnp.int32)
    zeros = jnp.zeros((rows,), jnp.int32)
    y_hat = model(units, lengths, zeros, zeros)
    if model.duration_predictor is None:
        return y_hat, None
    return y_hat, duration_log_predictions(model, batch["run_units"], batch["num_runs"], key, dropout)


def discriminate(graphs, params, spectral, waves):
    """Scores and feature maps of both discriminators on each waveform batch of `waves`, in order (the MSD's
    spectral norm advances once per batch); returns ({"mpd": [...], "msd": [...]} per batch, new spectral)."""
    mpd = nnx.merge(graphs["mpd"], params["mpd"])
    scales, spectral = discriminators.functional_call(graphs["msd"], params["msd"], spectral, *waves)
    outputs = [{"mpd": mpd(wave), "msd": scale} for wave, scale in zip(waves, scales, strict=True)]
    return outputs, spectral.to_pure_dict()


def vocoder_step(state: TrainState, batch, learning_rate, *, graphs, optimizers, settings):
    """One step (module docstring); returns the new state and its metrics."""
    params, opt_state = state.params, state.opt_state
    key = jax.random.fold_in(jax.random.key(settings.seed), state.step)
    y = batch["audio"]
    outputs = functools.partial(
        generator_outputs, batch=batch, key=key, graphdef=graphs["generator"], dropout=settings.duration_dropout
    )
    (y_hat, log_durations), pullback = jax.vjp(outputs, params["generator"])

    def discriminator_objective(disc_params, spectral):
        (real, fake), spectral = discriminate(graphs, disc_params, spectral, (y, jax.lax.stop_gradient(y_hat)))
        loss_f, _, _ = losses.discriminator_loss(real["mpd"][0], fake["mpd"][0])
        loss_s, _, _ = losses.discriminator_loss(real["msd"][0], fake["msd"][0])
        return loss_f + loss_s, (spectral, loss_f, loss_s)

    disc_params = {"mpd": params["mpd"], "msd": params["msd"]}
    (disc_loss, (spectral, disc_f, disc_s)), disc_grads = jax.value_and_grad(discriminator_objective, has_aux=True)(
        disc_params, opt_state["spectral"]
    )
    disc_params, disc_opt, disc_norm = _update(
        optimizers["discriminator"], disc_params, disc_grads, opt_state["discriminator"], learning_rate
    )
    mel = functools.partial(mel_frontend.mel_spectrogram, **settings.mel_loss_arguments)
    y_mel = mel(y)

    def generator_objective(y_hat, log_durations, spectral):
        mel_error = losses.mel_loss(y_mel, mel(y_hat))
        (real, fake), spectral = discriminate(graphs, disc_params, spectral, (y, y_hat))
        feature = losses.feature_loss(real["mpd"][1], fake["mpd"][1]) + losses.feature_loss(
            real["msd"][1], fake["msd"][1]
        )
        adversarial = losses.generator_loss(fake["mpd"][0])[0] + losses.generator_loss(fake["msd"][0])[0]
        duration = jnp.zeros(())
        if log_durations is not None:
            mask = generator_model.frame_mask(batch["num_runs"], log_durations.shape[1])[..., 0] > 0
            duration = losses.duration_loss(log_durations, batch["run_frames"], mask)
        total = settings.mel_weight * mel_error + feature + adversarial + settings.duration_weight * duration
        return total, (spectral, mel_error, feature, adversarial, duration)

    argnums = (0, 1) if log_durations is not None else (0,)
    (gen_loss, (spectral, mel_error, feature, adversarial, duration)), cotangents = jax.value_and_grad(
        generator_objective, argnums=argnums, has_aux=True
    )(y_hat, log_durations, spectral)
    if log_durations is None:
        cotangents = (cotangents[0], None)
    (gen_grads,) = pullback(cotangents)
    gen_params, gen_opt, gen_norm = _update(
        optimizers["generator"], params["generator"], gen_grads, opt_state["generator"], learning_rate
    )
    new_state = TrainState(
        {"generator": gen_params, **disc_params},
        {"generator": gen_opt, "discriminator": disc_opt, "spectral": spectral},
        state.step + 1,
    )
    metrics = {
        "loss": gen_loss,
        "grad_norm": gen_norm,
        "discriminator_loss": disc_loss,
        "discriminator_grad_norm": disc_norm,
        "discriminator_mpd": disc_f,
        "discriminator_msd": disc_s,
        "mel_l1": mel_error,
        "feature_matching": feature,
        "adversarial": adversarial,
        "duration_mse": duration,
    }
    return new_state, metrics


def _update(optimizer, params, grads, opt_state, learning_rate):
    """One AdamW update at `learning_rate` (the optimiser is built without one: training/optimizer.py's rule)."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, jax.tree.map(lambda update: -learning_rate * update, updates))
    return params, opt_state, optax.global_norm(grads)


def adamw(b1: float, b2: float, eps: float, weight_decay: float) -> optax.GradientTransformation:
    """torch.optim.AdamW without its learning rate: m_hat / (sqrt(v_hat) + eps) + weight_decay * p."""
    return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), optax.add_decayed_weights(weight_decay))


def jit_vocoder_step(graphs, optimizers, settings, shardings: TrainState, mesh, batch_shardings: dict):
    """`step(state, batch, lr) -> (state, metrics)` with the state's `shardings`, the batch's, the state donated."""
    step = functools.partial(vocoder_step, graphs=graphs, optimizers=optimizers, settings=settings)
    return jax.jit(
        parallel.traced_under(mesh, step),
        in_shardings=(shardings, batch_shardings, parallel.replicated(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=0,
    )
