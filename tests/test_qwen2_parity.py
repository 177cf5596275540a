"""The Flax decoder against transformers' Qwen2ForCausalLM on random tiny models (fp32)."""

import jax
import numpy as np
import pytest
from conftest import hf_logits

from conversion import hf_to_flax
from slam_jax.models import qwen2

CONFIGS = {
    "tied_mha": dict(num_attention_heads=4, num_key_value_heads=4, hidden_size=32, tie_word_embeddings=True),
    "untied_gqa2": dict(num_attention_heads=4, num_key_value_heads=2, hidden_size=32, tie_word_embeddings=False),
    "gqa7_odd_sizes": dict(
        num_attention_heads=7,
        num_key_value_heads=1,
        hidden_size=42,
        intermediate_size=53,
        vocab_size=97,
        rope_theta=1_000_000.0,
        num_hidden_layers=3,
    ),
    "explicit_head_dim": dict(
        num_attention_heads=6,
        num_key_value_heads=3,
        hidden_size=48,
        head_dim=10,
        rope_theta=500.0,
        tie_word_embeddings=False,
    ),
}


def flax_model(folder, **overrides) -> qwen2.Qwen2:
    config, params, _ = hf_to_flax.read_checkpoint(folder)
    return qwen2.model_from_params(config.replace(**{"compute_dtype": "float32", **overrides}), params)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_and_hidden_states_match_transformers(hf_checkpoint, name, scan_layers):
    hf_model, folder = hf_checkpoint(**CONFIGS[name])
    model = flax_model(folder, scan_layers=scan_layers)
    input_ids = np.random.default_rng(1).integers(0, hf_model.config.vocab_size, (3, 23))

    np.testing.assert_allclose(np.asarray(model(input_ids)), hf_logits(hf_model, input_ids), atol=1e-4, rtol=0)

    import torch

    with torch.no_grad():
        reference = hf_model(torch.as_tensor(input_ids), output_hidden_states=True).hidden_states
    ours = model.hidden_states(input_ids)
    assert len(ours) == len(reference) == hf_model.config.num_hidden_layers + 1
    for layer, (got, want) in enumerate(zip(ours, reference, strict=True)):
        np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4, rtol=0, err_msg=f"hidden state {layer}")


def test_bfloat16_compute_stays_close_to_fp32(hf_checkpoint):
    hf_model, folder = hf_checkpoint()
    input_ids = np.random.default_rng(2).integers(0, 300, (2, 16))
    reference = hf_logits(hf_model, input_ids)
    logits = np.asarray(flax_model(folder, compute_dtype="bfloat16")(input_ids))
    assert logits.dtype == np.float32
    assert np.abs(logits - reference).max() < 0.05 * np.abs(reference).max()


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_keep_values_and_gradients(hf_checkpoint, policy):
    _, folder = hf_checkpoint()
    input_ids = np.random.default_rng(3).integers(0, 300, (2, 12))

    def loss_and_grads(model):
        from flax import nnx

        graphdef, state = nnx.split(model)
        loss = lambda s: nnx.merge(graphdef, s)(input_ids).std()  # noqa: E731
        return jax.value_and_grad(loss)(state)

    base_loss, base_grads = loss_and_grads(flax_model(folder))
    loss, grads = loss_and_grads(flax_model(folder, remat_policy=policy))
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)
