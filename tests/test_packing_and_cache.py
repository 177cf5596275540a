"""Packed rows (segment_ids + positions) and KV-cache decoding against plain full-sequence passes."""

import jax.numpy as jnp
import numpy as np
import pytest

from slam_jax.models import config as model_config
from slam_jax.models import qwen2
from slam_jax.models.speech_lm import SpeechLM


def random_model(seed: int = 0, **overrides) -> qwen2.Qwen2:
    return qwen2.init_model(model_config.tiny(**overrides), seed=seed)


def perturbed(model: qwen2.Qwen2, seed: int = 1) -> SpeechLM:
    """Shift every weight by noise so that biases and norm scales are exercised too; jit-compiled handle."""
    import jax

    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape).astype(np.float32), qwen2.get_params(model)
    )
    return SpeechLM(qwen2.model_from_params(model.config, params))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_segment_in_packed_row_equals_segment_alone(scan_layers):
    model = perturbed(random_model(scan_layers=scan_layers))
    rng = np.random.default_rng(0)
    lengths = [7, 12, 5]
    segments = [rng.integers(0, 22, length) for length in lengths]
    pad = 4
    input_ids = np.concatenate(segments + [np.zeros(pad, np.int64)])[None]
    segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(pad)])[None]
    positions = np.concatenate([np.arange(n) for n in lengths] + [np.arange(pad)])[None]

    packed = np.asarray(model(input_ids, jnp.asarray(segment_ids, jnp.int32), jnp.asarray(positions, jnp.int32)))
    start = 0
    for segment in segments:
        alone = np.asarray(model(segment[None]))
        np.testing.assert_allclose(packed[:, start : start + len(segment)], alone, atol=1e-5, rtol=0)
        start += len(segment)
    unpacked = np.asarray(model(input_ids))
    assert np.abs(unpacked[:, lengths[0] :] - packed[:, lengths[0] :]).max() > 1e-3, "packing had no effect"


@pytest.mark.parametrize("scan_layers", [True, False])
def test_token_by_token_decoding_equals_full_pass(scan_layers):
    model = perturbed(random_model(scan_layers=scan_layers))
    input_ids = np.random.default_rng(1).integers(0, 22, (3, 14))
    full = np.asarray(model(input_ids))
    cache = model.init_cache(batch_size=3, max_length=20)
    steps = []
    for index in range(input_ids.shape[1]):
        logits, cache = model.decode(input_ids[:, index : index + 1], cache)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)
    assert int(cache["index"]) == 14


def test_prefill_then_decode_equals_full_pass():
    model = perturbed(random_model())
    input_ids = np.random.default_rng(2).integers(0, 22, (2, 16))
    full = np.asarray(model(input_ids))
    cache = model.init_cache(batch_size=2, max_length=16)
    prefill, cache = model.decode(input_ids[:, :9], cache)
    rest = []
    for index in range(9, 16):
        logits, cache = model.decode(input_ids[:, index : index + 1], cache)
        rest.append(np.asarray(logits))
    np.testing.assert_allclose(np.asarray(prefill), full[:, :9], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.concatenate(rest, axis=1), full[:, 9:], atol=1e-5, rtol=0)


def test_left_padded_prompt_in_cache_matches_unpadded():
    """Left padding with segment 0 and positions from the first real token: pads are never attended."""
    model = perturbed(random_model())
    prompt = np.random.default_rng(3).integers(2, 22, 6)
    alone = np.asarray(model(prompt[None]))
    pad = 3
    input_ids = np.concatenate([np.zeros(pad, np.int64), prompt])[None]
    segment_ids = jnp.asarray(np.concatenate([np.zeros(pad), np.ones(6)])[None], jnp.int32)
    positions = jnp.asarray(np.concatenate([np.zeros(pad), np.arange(6)])[None], jnp.int32)
    cache = model.init_cache(batch_size=1, max_length=12)
    logits, cache = model.decode(input_ids, cache, segment_ids, positions)
    np.testing.assert_allclose(np.asarray(logits)[:, pad:], alone, atol=1e-5, rtol=0)
