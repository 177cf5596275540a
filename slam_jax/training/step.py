"""The pre-training step: token-mean cross-entropy over the whole accumulated batch, then one AdamW update.

Pure functions over a `TrainState`; `jit_train_step` compiles them with explicit in/out shardings and
donates the old state, so parameters and optimiser state are updated in place. The gradient accumulation
(`accumulate`) and the optimiser update (`apply_gradients`) are shared with the DPO step (training/dpo.py):
a step is a per-micro-batch gradient function composed with those two.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from slam_jax import parallel
from slam_jax.models.speech_lm import next_token_log_probs


class TrainState(NamedTuple):
    """Everything a step changes: float32 master params, optimiser state and the optimiser step count."""

    params: Any
    opt_state: Any
    step: jax.Array


def init_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def target_mask(segment_ids: jax.Array) -> jax.Array:
    """Targets that count: same segment as the token predicting them, and not padding (segment 0)."""
    return (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)


def cross_entropy_sums(logits: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Summed next-token NLL (float32) over the counted targets, and their number."""
    nll = -next_token_log_probs(logits, batch["input_ids"])
    mask = target_mask(batch["segment_ids"]).astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def loss_sums(params, batch, graphdef) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, params)
    logits = model(batch["input_ids"], batch["segment_ids"], batch["positions"])
    return cross_entropy_sums(logits, batch)


def accumulate(grad_fn, params, batches, sums=()):
    """`grad_fn(params, micro) -> (grads, micro_sums, per_micro)` over the leading (accumulation) axis of `batches`.

    Returns the gradients summed over the micro-batches, `micro_sums` summed onto `sums` (zeros shaped like
    `micro_sums`), and `per_micro` stacked along a leading axis. A `lax.scan` keeps one micro-batch's
    activations alive at a time and adds in micro-batch order, so k micro-batches sum like their concatenation.
    """

    def body(carry, micro):
        grads, micro_sums, per_micro = grad_fn(params, micro)
        return jax.tree.map(jnp.add, carry, (grads, micro_sums)), per_micro

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grad_sum, sums), stacked = jax.lax.scan(body, (zeros, sums), batches)
    return grad_sum, sums, stacked


def apply_gradients(state: TrainState, grads, learning_rate, optimizer) -> tuple[TrainState, jax.Array]:
    """One optimiser update with `grads` at `learning_rate`; returns the new state and the gradients' global norm.

    The optimiser is built without a learning rate (training/optimizer.py) so that the schedule's value can be
    passed per step as an array: changing it does not recompile.
    """
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda update: -learning_rate * update, updates)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, opt_state, state.step + 1), optax.global_norm(grads)


def micro_gradients(params, micro, graphdef):
    """A micro-batch's gradient of its summed NLL, with (NLL sum, target count) to sum over the step."""
    (loss_sum, count), grads = jax.value_and_grad(loss_sums, has_aux=True)(params, micro, graphdef)
    return grads, (loss_sum, count), None


def accumulated_gradients(params, batches, graphdef):
    """Gradient of the token-mean loss over all micro-batches (`batches` leaves: [accum, rows, length])."""
    grad_fn = functools.partial(micro_gradients, graphdef=graphdef)
    grad_sum, (loss_sum, count), _ = accumulate(grad_fn, params, batches, (jnp.zeros(()), jnp.zeros(())))
    # Dividing the summed gradient once by the step's target count makes the loss a mean over every token
    # of the step, not a mean of micro-batch means.
    denominator = jnp.maximum(count, 1.0)
    return jax.tree.map(lambda g: g / denominator, grad_sum), loss_sum / denominator, count


def train_step(state: TrainState, batches, learning_rate, graphdef, optimizer):
    """One optimiser step over `batches` ([accum, rows, length]); returns the new state and metrics."""
    grads, loss, count = accumulated_gradients(state.params, batches, graphdef)
    state, grad_norm = apply_gradients(state, grads, learning_rate, optimizer)
    return state, {"loss": loss, "grad_norm": grad_norm, "tokens": count}


def eval_step(params, batch, graphdef) -> tuple[jax.Array, jax.Array]:
    return loss_sums(params, batch, graphdef)


def train_state_shardings(abstract_state: TrainState, mesh) -> TrainState:
    params = parallel.param_shardings(abstract_state.params, mesh)
    opt_state = parallel.param_like_shardings(abstract_state.opt_state, abstract_state.params, mesh)
    return TrainState(params, opt_state, parallel.replicated(mesh))


def accumulated_batch_shardings(mesh, trailing_axes: dict[str, int]) -> dict:
    """Shardings of a dict batch [accum, rows, ...]: rows over data x fsdp, `trailing_axes[key]` axes after them."""
    return {
        key: parallel.batch_sharding(mesh, leading_axes=1, trailing_axes=axes) for key, axes in trailing_axes.items()
    }


def jit_train_step(graphdef, optimizer, shardings: TrainState, mesh):
    """`step(state, batches, lr) -> (state, metrics)` compiled with shardings and the state donated."""
    return jax.jit(
        parallel.traced_under(mesh, functools.partial(train_step, graphdef=graphdef, optimizer=optimizer)),
        in_shardings=(shardings, parallel.batch_sharding(mesh, leading_axes=1), parallel.replicated(mesh)),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=0,
    )


def jit_eval_step(graphdef, param_shardings, mesh):
    return jax.jit(
        parallel.traced_under(mesh, functools.partial(eval_step, graphdef=graphdef)),
        in_shardings=(param_shardings, parallel.batch_sharding(mesh)),
        out_shardings=parallel.replicated(mesh),
    )
