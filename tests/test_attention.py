"""Attention backends against the plain definition (float64 numpy) on packed rows with grouped-query heads.

The Pallas kernels (splash for TPUs, the Triton flash kernel for GPUs) run in interpret mode on this CPU;
cuDNN has no interpreter and is checked against the same reference by the GPU suite on a GPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from slam_jax import parallel
from slam_jax.models import attention, qwen2, sampling
from slam_jax.models import config as model_config

BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 2, 40, 4, 2, 16  # 40: not a block multiple, so padding is exercised


def packed_inputs(dtype=jnp.float32, seed=0):
    """q, k, v and segment ids of two packed rows: three segments, and two segments then padding (segment 0)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(BATCH, LENGTH, HEADS, HEAD_DIM))
    k = rng.normal(size=(BATCH, LENGTH, KV_HEADS, HEAD_DIM))
    v = rng.normal(size=(BATCH, LENGTH, KV_HEADS, HEAD_DIM))
    segments = np.ones((BATCH, LENGTH), np.int32)
    segments[0, 11:23], segments[0, 23:] = 2, 3
    segments[1, 17:31], segments[1, 31:] = 2, 0
    return (*(jnp.asarray(x, dtype) for x in (q, k, v)), jnp.asarray(segments))


def reference(q, k, v, segments) -> np.ndarray:
    """Causal, same-segment softmax attention in float64, head h reading kv head h // (heads / kv_heads)."""
    q, k, v, segments = (np.asarray(x, np.float64) for x in (q, k, v, segments))
    groups = q.shape[2] // k.shape[2]
    out = np.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            for i in range(q.shape[1]):
                keys = [j for j in range(i + 1) if segments[b, j] == segments[b, i]]
                scores = k[b, keys, h // groups] @ q[b, i, h] / np.sqrt(q.shape[3])
                weights = np.exp(scores - scores.max())
                out[b, i, h] = weights / weights.sum() @ v[b, keys, h // groups]
    return out.reshape(q.shape[0], q.shape[1], -1)


def run(backend, q, k, v, segments):
    return attention.causal_attention(q, k, v, segments, backend, interpret=True)


CPU_BACKENDS = ("xla", "splash", "pallas_gpu")


@pytest.fixture(scope="module")
def inputs():
    return packed_inputs()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_equals_the_definition_on_packed_rows_with_grouped_heads(backend, inputs):
    out = run(backend, *inputs)
    assert out.shape == (BATCH, LENGTH, HEADS * HEAD_DIM)
    np.testing.assert_allclose(np.asarray(out), reference(*inputs), atol=2e-5)


@pytest.mark.parametrize("backend", ("splash", "pallas_gpu"))
def test_backend_gradients_equal_the_einsum_backend(backend, inputs):
    """Gradients of a nonlinear function of the output, kernel vs the blocked einsum (itself checked against
    the float64 definition above; its own gradient is plain autodiff of XLA ops)."""
    q, k, v, segments = inputs
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(BATCH, LENGTH, HEADS * HEAD_DIM)), jnp.float32)

    def loss(name):
        return lambda q, k, v: jnp.sum(jnp.tanh(run(name, q, k, v, segments)) * weights)

    expected = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    found = jax.grad(loss(backend), argnums=(0, 1, 2))(q, k, v)
    for name, want, got in zip("qkv", expected, found, strict=True):
        assert float(jnp.max(jnp.abs(want))) > 1e-2, name  # a real gradient, not zeros
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=5e-5, err_msg=f"d{name}")


def test_einsum_gradient_equals_finite_differences(inputs):
    q, k, v, segments = inputs
    direction = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)

    def loss(q):
        return jnp.sum(jnp.tanh(attention.xla_attention(q, k, v, segments)))

    analytic = float(jnp.vdot(jax.grad(loss)(q), direction))
    step = 1e-3
    numeric = (float(loss(q + step * direction)) - float(loss(q - step * direction))) / (2 * step)
    assert abs(analytic - numeric) <= 2e-3 * max(1.0, abs(numeric))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bf16_inputs_stay_within_bf16_rounding_of_the_definition(backend):
    q, k, v, segments = packed_inputs(jnp.bfloat16)
    out = run(backend, q, k, v, segments)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), reference(q, k, v, segments), atol=3e-2)


def test_segments_never_mix():
    """Changing the keys and values of one segment leaves every other segment's output as it was."""
    q, k, v, segments = packed_inputs()
    other = segments[0] != 2
    changed_k = k.at[0, ~other].add(5.0)
    changed_v = v.at[0, ~other].add(5.0)
    for backend in CPU_BACKENDS:
        before = np.asarray(run(backend, q, k, v, segments))[0, other]
        after = np.asarray(run(backend, q, changed_k, changed_v, segments))[0, other]
        np.testing.assert_allclose(after, before, atol=1e-6, err_msg=backend)


def test_kernel_runs_per_shard_under_the_step_mesh(inputs):
    """Under a 2 x 2 (data, tensor) mesh in context the kernel runs in shard_map, with the same result."""
    mesh = parallel.make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
    q, k, v, segments = inputs
    spec = NamedSharding(mesh, P(parallel.BATCH_AXES))
    fn = jax.jit(parallel.traced_under(mesh, lambda *args: run("pallas_gpu", *args)), in_shardings=spec)
    text = fn.lower(q, k, v, segments).as_text()
    assert "manual_computation" in text  # shard_map's region (absent when traced without the mesh)
    np.testing.assert_allclose(np.asarray(fn(q, k, v, segments)), reference(q, k, v, segments), atol=2e-5)


def test_auto_picks_the_backend_per_platform():
    assert attention.choose("cpu") == "xla"
    assert attention.choose("tpu", "TPU v5 lite") == "splash"
    assert attention.choose("tpu", "TPU v6 lite") == "splash"
    assert attention.choose("gpu", "NVIDIA H100 80GB HBM3") == "pallas_gpu"
    assert attention.choose("cuda", "NVIDIA RTX A5000") == "pallas_gpu"
    assert attention.resolve("auto") == attention.choose(jax.default_backend())
    assert attention.resolve("splash") == "splash"
    with pytest.raises(ValueError, match="model.attention='flash'"):
        attention.resolve("flash")


def test_every_configurable_backend_has_a_kernel():
    assert set(attention.KERNELS) == set(attention.BACKENDS) == set(model_config.ATTENTION_BACKENDS) - {"auto"}
    with pytest.raises(ValueError, match="attention='flash'"):
        model_config.tiny(attention="flash")


def test_triton_blocks_are_powers_of_two():
    assert [attention.triton_block(n) for n in (1, 5, 16, 17, 40, 80, 128, 1000, 1024)] == [
        16,
        16,
        16,
        32,
        64,
        128,
        128,
        128,
        128,
    ]


def test_kernel_names_are_found_in_program_text():
    assert attention.kernel_in_program('custom_call_target="__cudnn$fmhaSoftmaxBackward"') == (
        "__cudnn$fmhaSoftmaxBackward"
    )
    assert attention.kernel_in_program("kernel_name=splash_mha_fwd_segmented") == "splash_mha_fwd_segmented"
    assert attention.kernel_in_program('name = "mha_forward"') == "mha_forward"
    assert attention.kernel_in_program('"mha_forward" x "mha_backward" y "mha_forward"') == "mha_backward,mha_forward"
    assert attention.kernel_in_program("dot(bf16[2,3] %a, bf16[3,4] %b)") == "none"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_prefill_through_a_kernel_equals_attention_over_the_cache(backend, monkeypatch):
    """Generation's prefill (left-padded prompts into an empty cache) runs the configured kernel; its logits and
    cache equal the einsum attention over the cache slots (the decode path)."""
    if backend != "xla":
        interpreted = functools.partial(attention.KERNELS[backend], interpret=True)
        monkeypatch.setitem(attention.KERNELS, backend, interpreted)
    model = qwen2.init_model(model_config.tiny(attention=backend), seed=1)
    prompts = np.random.default_rng(3).integers(2, 22, (2, 12)).astype(np.int32)
    prompts[1, :5] = 0  # left padding
    segments, positions, _ = sampling.left_pad_layout(jnp.asarray(prompts))
    cache = model.init_cache(2, 20)
    logits, filled = model.prefill(jnp.asarray(prompts), cache, segments, positions)
    want_logits, want_cache = model.decode(jnp.asarray(prompts), cache, segments, positions)
    real = np.asarray(segments, bool)
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(want_logits)[real], atol=2e-5)
    for key in ("k", "v", "segment_ids", "index"):
        np.testing.assert_allclose(np.asarray(filled[key]), np.asarray(want_cache[key]), atol=1e-6, err_msg=key)
