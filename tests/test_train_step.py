"""The pre-training step: hand-computed token-mean CE, gradient accumulation, learning on a synthetic corpus."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from slam_jax.models import config as model_config
from slam_jax.models import qwen2
from slam_jax.training import optimizer
from slam_jax.training import step as train_lib
from slam_jax.training.settings import TrainSettings
from slam_jax.training.step import init_state, train_step

TRAIN = TrainSettings(grad_clip=0.5, adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.0)


def accumulated_gradients(params, batches, graphdef):
    return jax.jit(train_lib.accumulated_gradients, static_argnums=2)(params, batches, graphdef)


def tiny_setup(seed=0):
    model = qwen2.init_model(model_config.tiny(), seed=seed)
    graphdef, state = nnx.split(model)
    return model, graphdef, state.to_pure_dict()


def packed_batch(rows: int, length: int = 24, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of two segments each plus padding, positions restarting per segment."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(2, 22, (rows, length)).astype(np.int32)
    segment_ids = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    for row in range(rows):
        first, second = rng.integers(3, 12), rng.integers(3, 10)
        segment_ids[row, :first], segment_ids[row, first : first + second] = 1, 2
        positions[row, :first], positions[row, first : first + second] = np.arange(first), np.arange(second)
        input_ids[row, first + second :] = 0
    return {"input_ids": input_ids, "segment_ids": segment_ids, "positions": positions}


def hand_computed_loss(model, batch) -> float:
    """Token-mean CE by hand in float64: each segment scored alone, its first token not predicted."""
    total, count = 0.0, 0
    forward = nnx.jit(lambda m, ids: m(ids))
    for row in range(batch["input_ids"].shape[0]):
        for segment in (1, 2):
            ids = batch["input_ids"][row][batch["segment_ids"][row] == segment]
            logits = np.asarray(forward(model, ids[None]), np.float64)[0]
            log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            log_probs -= logits.max(-1, keepdims=True)
            total -= sum(log_probs[t, ids[t + 1]] for t in range(len(ids) - 1))
            count += len(ids) - 1
    return total / count


def test_loss_is_the_hand_computed_token_mean_cross_entropy():
    model, graphdef, params = tiny_setup()
    batch = packed_batch(rows=3)
    stacked = jax.tree.map(lambda x: x[None], batch)
    _, loss, count = accumulated_gradients(params, stacked, graphdef)
    expected_count = sum(int((batch["segment_ids"][r] == s).sum()) - 1 for r in range(3) for s in (1, 2))
    assert int(count) == expected_count
    np.testing.assert_allclose(float(loss), hand_computed_loss(model, batch), rtol=1e-5)


def test_four_micro_batches_of_two_equal_one_batch_of_eight():
    _, graphdef, params = tiny_setup()
    batch = packed_batch(rows=8, seed=1)
    whole = jax.tree.map(lambda x: x[None], batch)
    split = jax.tree.map(lambda x: x.reshape(4, 2, -1), batch)
    grads_whole, loss_whole, _ = accumulated_gradients(params, whole, graphdef)
    grads_split, loss_split, _ = accumulated_gradients(params, split, graphdef)
    np.testing.assert_allclose(loss_split, loss_whole, rtol=1e-6, atol=1e-6)
    for got, want in zip(jax.tree.leaves(grads_split), jax.tree.leaves(grads_whole), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_accumulate_sums_gradients_and_sums_and_stacks_the_rest():
    """The accumulation both steps share: gradients and `micro_sums` added up, `per_micro` stacked."""
    params = {"w": jnp.array([1.0, -2.0])}
    batches = jnp.arange(6.0).reshape(3, 2)

    def grad_fn(params, micro):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum(p["w"] * micro) ** 2)(params)
        return grads, (loss, jnp.sum(micro)), micro[0]

    grads, (loss_sum, micro_sum), stacked = train_lib.accumulate(grad_fn, params, batches, (0.0, 0.0))
    np.testing.assert_allclose(grads["w"], sum(2 * (m @ params["w"]) * m for m in np.asarray(batches)))
    np.testing.assert_allclose(loss_sum, sum((m @ params["w"]) ** 2 for m in np.asarray(batches)))
    assert float(micro_sum) == 15.0
    np.testing.assert_array_equal(stacked, [0.0, 2.0, 4.0])


def test_update_is_adamw_with_clipping_and_the_given_learning_rate():
    _, graphdef, params = tiny_setup()
    optax_chain = optimizer.build(TRAIN)
    batch = jax.tree.map(lambda x: x[None], packed_batch(rows=2, seed=2))
    step = jax.jit(lambda s, b: train_step(s, b, 1e-3, graphdef, optax_chain))
    state, metrics = step(init_state(params, optax_chain), batch)
    grads, _, _ = accumulated_gradients(params, batch, graphdef)
    reference = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(1e-3, 0.9, 0.999, 1e-8, weight_decay=0.0))
    updates, _ = jax.jit(reference.update)(grads, reference.init(params), params)
    expected = optax.apply_updates(params, updates)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-7, rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], optax.global_norm(grads), rtol=1e-6)
    assert int(state.step) == 1


def test_loss_decreases_on_the_synthetic_corpus(tmp_path):
    from slam_jax.data import ingest, pipeline, synthetic

    synthetic.write_jsonl(tmp_path / "corpus.jsonl", num_files=300, num_units=20, seed=0)
    ingest.prepare(str(tmp_path / "corpus.jsonl"), tmp_path / "prepared", num_units=20)
    batches = iter(pipeline.train_dataset([str(tmp_path / "prepared" / "train")], None, 64, 8, seed=0))
    _, graphdef, params = tiny_setup()
    chain = optimizer.build(TRAIN)
    step = jax.jit(lambda s, b: train_step(s, b, 3e-3, graphdef, chain))
    state = init_state(params, chain)
    losses = []
    for _ in range(40):
        state, metrics = step(state, jax.tree.map(lambda x: jnp.asarray(x)[None], next(batches)))
        losses.append(float(metrics["loss"]))
    assert losses[0] > np.log(22) - 0.3
    assert np.mean(losses[-5:]) < losses[0] - 0.5, losses
