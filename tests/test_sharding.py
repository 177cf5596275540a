"""8 forced CPU devices: a sharded step equals the 1-device step, and state is really sharded."""

import jax
import numpy as np
import pytest
from flax import nnx

from slam_jax import parallel
from slam_jax.models import config as model_config
from slam_jax.models import qwen2
from slam_jax.training import optimizer
from slam_jax.training.settings import TrainSettings
from slam_jax.training.step import init_state, jit_train_step, train_state_shardings

TRAIN = TrainSettings(grad_clip=0.5, adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.0)
# Sizes divisible by 2 and 4 so every rule really shards.
CONFIG = model_config.tiny(vocab_size=24, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64)


def run_step(mesh, params, batches):
    chain = optimizer.build(TRAIN)
    graphdef = nnx.graphdef(qwen2.abstract_model(CONFIG))
    abstract = jax.eval_shape(lambda p: init_state(p, chain), params)
    shardings = train_state_shardings(abstract, mesh)
    state = jax.jit(lambda p: init_state(p, chain), out_shardings=shardings)(jax.device_put(params, shardings.params))
    batches = jax.device_put(batches, parallel.batch_sharding(mesh, leading_axes=1))
    step = jit_train_step(graphdef, chain, shardings, mesh)
    return step(state, batches, np.float32(1e-3))


def batches(accum=2, rows=8, length=16):
    rng = np.random.default_rng(0)
    return {
        "input_ids": rng.integers(2, 24, (accum, rows, length)).astype(np.int32),
        "segment_ids": np.ones((accum, rows, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (accum, rows, length)).copy(),
    }


def test_eight_devices_are_available():
    assert jax.device_count() == 8


@pytest.mark.parametrize("shape", [(2, 4, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device_step(shape):
    params = qwen2.get_params(qwen2.init_model(CONFIG, seed=0))
    single_state, single_metrics = run_step(parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1]), params, batches())
    state, metrics = run_step(parallel.make_mesh(*shape), params, batches())

    np.testing.assert_allclose(metrics["loss"], single_metrics["loss"], rtol=1e-6)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(single_state.params), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)

    q_kernel = state.params["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q_kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert q_kernel.addressable_shards[0].data.shape == (2, 32 // shape[1], 32 // shape[2])
    adam = state.opt_state[1]
    assert (
        adam.mu["layers"]["mlp"]["down_proj"]["kernel"].sharding
        == state.params["layers"]["mlp"]["down_proj"]["kernel"].sharding
    )
    assert adam.nu["embed_tokens"].addressable_shards[0].data.shape == (24 // shape[2], 32 // shape[1])


def test_indivisible_dimensions_are_replicated_not_refused():
    mesh = parallel.make_mesh(1, 4, 2)
    spec = parallel.spec_for("embed_tokens", (502, 896), mesh)
    assert spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert parallel.spec_for("embed_tokens", (501, 30), mesh) == jax.sharding.PartitionSpec(None, None)


def test_mesh_shape_errors_are_clear():
    with pytest.raises(ValueError, match="does not use the 8 devices"):
        parallel.make_mesh(3, 1, 1)
    assert dict(parallel.make_mesh(-1, 2, 2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def dpo_batches(accum=2, pairs=8, length=12, precomputed=True):
    """[accum, pairs, 2, length] rows whose last 5 targets are the completion, as preference.PairSource builds them."""
    rng = np.random.default_rng(1)
    mask = np.zeros((accum, pairs, 2, length - 1), np.float32)
    mask[..., -5:] = 1.0
    batch = {
        "input_ids": rng.integers(2, 24, (accum, pairs, 2, length)).astype(np.int32),
        "segment_ids": np.ones((accum, pairs, 2, length), np.int32),
        "completion_mask": mask,
    }
    if precomputed:
        batch["reference_logps"] = rng.normal(-20, 2, (accum, pairs, 2)).astype(np.float32)
    return batch


def run_dpo_step(mesh, params, batches, reference_params):
    """The trainer's compiled DPO step (`jit_dpo_step`) on `mesh`: (state, metrics) and the compiled input shardings."""
    from slam_jax.training.dpo import jit_dpo_step
    from slam_jax.training.settings import DpoSettings

    chain = optimizer.build(TRAIN)
    graphdef = nnx.graphdef(qwen2.abstract_model(CONFIG))
    shardings = train_state_shardings(jax.eval_shape(lambda p: init_state(p, chain), params), mesh)
    state = jax.jit(lambda p: init_state(p, chain), out_shardings=shardings)(jax.device_put(params, shardings.params))
    trailing_axes = {key: value.ndim - 2 for key, value in batches.items()}
    frozen = reference_params is not None
    if frozen:
        reference_params = jax.device_put(reference_params, shardings.params)
    step = jit_dpo_step(graphdef, chain, DpoSettings(rpo_alpha=0.5), shardings, mesh, trailing_axes, frozen)
    compiled = step.lower(state, batches, np.float32(1e-3), reference_params).compile()
    return compiled(state, batches, np.float32(1e-3), reference_params), compiled.input_shardings[0][1]


@pytest.mark.parametrize("reference", ["precomputed", "frozen"])
@pytest.mark.parametrize("shape", [(2, 4, 1), (2, 2, 2)])
def test_dpo_step_splits_pairs_over_data_and_fsdp_and_equals_single_device_step(shape, reference):
    params = qwen2.get_params(qwen2.init_model(CONFIG, seed=0))
    reference_params = qwen2.get_params(qwen2.init_model(CONFIG, seed=1)) if reference == "frozen" else None
    data = dpo_batches(precomputed=reference == "precomputed")
    single_mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    (single_state, single_metrics), _ = run_dpo_step(single_mesh, params, data, reference_params)
    (state, metrics), batch_shardings = run_dpo_step(parallel.make_mesh(*shape), params, data, reference_params)

    assert set(batch_shardings) == set(data)
    rows_per_shard = 8 // (shape[0] * shape[1])
    for key, sharding in batch_shardings.items():
        assert sharding.spec[:2] == (None, parallel.BATCH_AXES), (key, sharding.spec)
        assert sharding.shard_shape(data[key].shape) == (2, rows_per_shard, *data[key].shape[2:]), key
    for name in ("loss", "reward_margin", "grad_norm"):
        np.testing.assert_allclose(metrics[name], single_metrics[name], rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(single_state.params), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
