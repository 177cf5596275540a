"""bf16 end to end: every matmul of a bf16 program multiplies bf16 by bf16, in the forward and the backward pass.

A dtype census of the lowered HLO (`precision.matmul_census`) of the train step, the DPO step, pair scoring
and the tokeniser's encoder; float32 runs of the same programs show the census does count float32 dots.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from slam_jax import parallel
from slam_jax.models import config as model_config
from slam_jax.models import hubert, precision, qwen2
from slam_jax.models.speech_lm import next_token_log_probs
from slam_jax.training import dpo
from slam_jax.training import step as step_lib

TRAIN = ConfigDict(dict(grad_clip=0.5, adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.0))


def slam_shaped(compute_dtype: str, **overrides) -> model_config.ModelConfig:
    """Two layers of the slam architecture's shape family (GQA 14:2 heads, q/k/v biases, tied head), narrow."""
    values = dict(hidden_size=56, intermediate_size=96, num_layers=2, num_heads=14, num_kv_heads=2, head_dim=4)
    return model_config.tiny(compute_dtype=compute_dtype, **{**values, **overrides})


def packed_batches(accumulation=2, rows=2, length=32, vocab=22, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, (accumulation, rows, length)).astype(np.int32)
    segments = np.ones_like(ids)
    segments[..., 12:] = 2
    segments[..., 28:] = 0
    positions = np.concatenate([np.arange(12), np.arange(20)])[None, None].repeat(rows, 1).repeat(accumulation, 0)
    return {"input_ids": ids, "segment_ids": segments, "positions": positions.astype(np.int32)}


def train_step_hlo(cfg):
    model = qwen2.init_model(cfg)
    graphdef, params = nnx.graphdef(model), qwen2.get_params(model)
    chain = optax.adamw(1e-3)
    state = step_lib.init_state(params, chain)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    step = step_lib.jit_train_step(graphdef, chain, step_lib.train_state_shardings(state, mesh), mesh)
    return step.lower(state, packed_batches(), jnp.float32(1e-3)).as_text(dialect="hlo")


def test_train_step_has_no_float32_dot_in_bf16_and_only_float32_dots_in_float32():
    bf16 = precision.matmul_census(train_step_hlo(slam_shaped("bfloat16")))
    fp32 = precision.matmul_census(train_step_hlo(slam_shaped("float32")))
    # forward: q, k, v, o, gate, up, down, 2 attention einsums per layer block, the head; backward: two each
    assert bf16["dots"] >= 30, bf16
    assert bf16["dots_with_f32_operand"] == 0, bf16
    assert fp32["dots_with_f32_operand"] == fp32["dots"] == bf16["dots"], (fp32, bf16)


def test_untied_head_and_unrolled_layers_stay_bf16():
    cfg = slam_shaped("bfloat16", tie_word_embeddings=False, scan_layers=False, remat_policy="dots_no_batch")
    census = precision.matmul_census(train_step_hlo(cfg))
    assert census["dots"] >= 60 and census["dots_with_f32_operand"] == 0, census


def test_dpo_step_and_scoring_have_no_float32_dot_in_bf16():
    model = qwen2.init_model(slam_shaped("bfloat16"))
    graphdef, params = nnx.graphdef(model), qwen2.get_params(model)
    rng = np.random.default_rng(0)
    pairs, length = 3, 24
    batches = {
        "input_ids": rng.integers(2, 22, (2, pairs, 2, length)).astype(np.int32),
        "segment_ids": np.ones((2, pairs, 2, length), np.int32),
        "completion_mask": np.ones((2, pairs, 2, length - 1), np.float32),
        "reference_logps": np.zeros((2, pairs, 2), np.float32),
    }
    settings = ConfigDict({"beta": 0.1, "label_smoothing": 0.0, "loss_type": "sigmoid", "rpo_alpha": 0.0})
    chain = optax.adamw(1e-3)
    state = step_lib.init_state(params, chain)
    step = jax.jit(functools.partial(dpo.dpo_step, graphdef=graphdef, optimizer=chain, dpo=settings))
    census = precision.matmul_census(step.lower(state, batches, 1e-3, None).as_text(dialect="hlo"))
    assert census["dots"] >= 30 and census["dots_with_f32_operand"] == 0, census

    def score(params, ids):
        return next_token_log_probs(nnx.merge(graphdef, nnx.State(params))(ids), ids)

    ids = batches["input_ids"][0, :, 0]
    census = precision.matmul_census(jax.jit(score).lower(params, ids).as_text(dialect="hlo"))
    assert census["dots"] >= 10 and census["dots_with_f32_operand"] == 0, census


def test_tokeniser_encoder_has_no_float32_dot_in_bf16():
    for front_end in ("group", "layer"):
        cfg = hubert.HubertConfig(
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=64,
            conv_dim=(16, 16),
            conv_kernel=(10, 3),
            conv_stride=(5, 2),
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=4,
            feat_extract_norm=front_end,
            compute_dtype="bfloat16",
        )
        graphdef, state = nnx.split(hubert.init_model(cfg))
        forward = jax.jit(lambda state, waves, lengths, graphdef=graphdef: nnx.merge(graphdef, state)(waves, lengths))
        text = forward.lower(state, jnp.zeros((2, 1600)), jnp.array([1600, 1200])).as_text(dialect="hlo")
        census = precision.matmul_census(text)
        assert census["dots"] >= 10 and census["dots_with_f32_operand"] == 0, (front_end, census)


def test_bf16_loss_and_gradients_stay_near_float32():
    """The same weights and packed rows: bf16 compute's loss within 1% of float32's, gradients aligned."""
    batch = jax.tree.map(lambda x: x[0], packed_batches(rows=4))
    results = {}
    for dtype in ("float32", "bfloat16"):
        cfg = slam_shaped(dtype)
        model = qwen2.init_model(cfg, seed=3)
        graphdef, params = nnx.graphdef(model), qwen2.get_params(model)
        grad_fn = jax.jit(jax.value_and_grad(step_lib.loss_sums, has_aux=True), static_argnums=2)
        (loss_sum, count), grads = grad_fn(params, batch, graphdef)
        results[dtype] = float(loss_sum / count), np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
    (loss32, grad32), (loss16, grad16) = results["float32"], results["bfloat16"]
    assert abs(loss16 - loss32) <= 0.01 * loss32, (loss16, loss32)
    cosine = grad16 @ grad32 / (np.linalg.norm(grad16) * np.linalg.norm(grad32))
    assert cosine > 0.99, cosine
    assert grad16.dtype == np.float32  # master gradients stay float32


def test_einsum_accumulates_in_float32_and_differentiates_in_the_operand_dtype():
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.bfloat16)
    b = jnp.asarray(rng.normal(size=(5, 4)), jnp.bfloat16)
    out = precision.einsum("...i,io->...o", a, b, jnp.float32)
    assert out.dtype == jnp.float32 and precision.einsum("...i,io->...o", a, b).dtype == jnp.bfloat16
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(np.asarray(out), a64 @ b64, rtol=1e-6, atol=1e-6)  # bf16 products are exact in f32
    weights = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    loss = lambda a, b: jnp.sum(precision.einsum("...i,io->...o", a, b, jnp.float32) * weights)  # noqa: E731
    grad_a, grad_b = jax.grad(loss, (0, 1))(a, b)
    assert grad_a.dtype == grad_b.dtype == jnp.bfloat16
    w = np.asarray(weights.astype(jnp.bfloat16), np.float64)  # the cotangent is rounded to bf16 first
    np.testing.assert_allclose(np.asarray(grad_a, np.float64), w @ b64.T, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(np.asarray(grad_b, np.float64), np.einsum("bti,bto->io", a64, w), rtol=1e-2, atol=2e-2)
    f32 = [x.astype(jnp.float32) for x in (a, b)]  # float32 operands: exactly the ordinary einsum's gradient
    for mine, plain in zip(
        jax.grad(loss, (0, 1))(*f32),
        jax.grad(lambda a, b: jnp.sum(jnp.einsum("...i,io->...o", a, b) * weights), (0, 1))(*f32),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(mine), np.asarray(plain), rtol=1e-6, atol=1e-6)


def test_census_counts_float32_operands_of_compiled_gpu_style_calls():
    gemm = "(bf16[8,4]{1,0}, s8[64]{0}) custom-call(bf16[8,2]{1,0} %a, bf16[2,4]{1,0} %b), custom_call_target="
    text = "\n".join(
        [
            f'%g = {gemm}"__cublas$gemm"',
            '%h = f32[8,4]{1,0} custom-call(f32[8,2]{1,0} %a, bf16[2,4] %b), custom_call_target="__cublas$lt$matmul"',
            '%c = bf16[8]{0} custom-call(bf16[8]{0} %x), custom_call_target="__cudnn$fmhaSoftmax"',
            "%d = f32[8,4]{1,0} dot(f32[8,2]{1,0} %a, f32[2,4]{1,0} %b), lhs_contracting_dims={1}",
        ]
    )
    assert precision.matmul_census(text) == {"dots": 3, "dots_with_f32_operand": 2}
    by_name = "\n".join(
        [
            "x.1 = bf16[2,3]{1,0} parameter(0)",
            "y.2 = f32[3,4]{1,0} parameter(1)",
            "ROOT dot_general.1 = f32[2,4]{1,0} dot(x.1, y.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}",
            "z.3 = bf16[2,4]{1,0} dot(x.1, x.1), lhs_contracting_dims={1}, rhs_contracting_dims={1}",
        ]
    )
    assert precision.matmul_census(by_name) == {"dots": 2, "dots_with_f32_operand": 1}
