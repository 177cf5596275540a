"""Llama text LMs through the one decoder: conversion by the CLI, logits against transformers' LlamaForCausalLM
(with and without llama3 RoPE scaling, tied and untied), the Llama-3.2-1B size, the export back, and the text-LM
NLL that GenPPL averages against the reference's formula in torch."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import hf_logits
from text_lm_fixtures import CONFIGS, LLAMA3_ROPE, TINY_LLAMA, random_llama, reference_nll, save_word_tokenizer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from conversion import flax_to_hf, hf_to_flax, qwen2_hf
from conversion.safetensors_io import CheckpointError
from slam_jax import load_model, parallel
from slam_jax.evaluation import text_lm
from slam_jax.models import config as model_config
from slam_jax.models import qwen2, storage


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (transformers model, HF folder with a tokenizer, folder converted by the CLI)."""
    root = tmp_path_factory.mktemp("llama")
    made = {}
    for name in CONFIGS:
        model, source, out = random_llama(name), root / f"{name}_hf", root / name
        model.save_pretrained(source)
        save_word_tokenizer(source)
        assert hf_to_flax.main(["--model", str(source), "--out", str(out)]) == 0
        made[name] = model, source, out
    return made


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers_llama(converted, name):
    hf_model, _, out = converted[name]
    model = load_model(out, compute_dtype="float32")
    assert model.config.architecture == "llama" and not model.config.attention_bias
    assert model.config.tie_word_embeddings == CONFIGS[name]["tie_word_embeddings"]
    assert "bias" not in model.params["layers"]["self_attn"]["q_proj"]
    input_ids = np.random.default_rng(1).integers(0, TINY_LLAMA["vocab_size"], (3, 40))  # 40 > 16 positions
    reference = hf_logits(hf_model, input_ids)
    np.testing.assert_allclose(np.asarray(model(input_ids)), reference, atol=1e-4, rtol=0)
    if name == "llama3_tied":  # the scaling changes the logits: the test above sees it
        unscaled = qwen2.model_from_params(model.config.replace(rope_scaling="none"), model.params)
        assert np.abs(np.asarray(unscaled(input_ids)) - reference).max() > 1e-2


def test_llama3_inverse_frequencies_are_transformers(converted):
    hf_model, _, out = converted["llama3_tied"]
    config = storage.load_config(out)
    assert (config.rope_scaling, config.rope_factor, config.rope_original_max_position_embeddings) == ("llama3", 8, 16)
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_model.config)
    # within an ulp or two: torch's float32 pow and the rounded float64 one can differ in the last bit
    np.testing.assert_allclose(qwen2.llama3_inverse_frequencies(config), want.numpy(), rtol=3e-7, atol=0)
    for factor, low, high, original in [(32.0, 1.0, 4.0, 8192), (4.0, 2.0, 3.0, 64)]:  # Llama-3.2-1B's and others
        rope = {**LLAMA3_ROPE, "factor": factor, "low_freq_factor": low, "high_freq_factor": high}
        rope.update(rope_theta=500_000.0, original_max_position_embeddings=original)
        hf_config = transformers.LlamaConfig(**{**TINY_LLAMA, "head_dim": 64, "rope_parameters": rope})
        ours = qwen2_hf.model_config_from_hf(hf_config.to_dict(), "config.json")
        want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config)
        np.testing.assert_allclose(qwen2.llama3_inverse_frequencies(ours), want.numpy(), rtol=3e-7, atol=0)


def test_llama3_2_1b_size():
    config = model_config.llama3_2_1b()
    assert qwen2.count_params(config) == config.num_params() == 1_235_814_400
    assert config.num_params(include_embedding=False) == 1_235_814_400 - 128_256 * 2048


def test_export_writes_llama_for_causal_lm_and_copies_the_tokenizer(converted, tmp_path):
    hf_model, source, out = converted["llama3_tied"]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name
    flax_to_hf.export(out, tmp_path / "back", format="hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert isinstance(reloaded, transformers.LlamaForCausalLM)
    assert reloaded.config.rope_parameters == {**LLAMA3_ROPE, "rope_theta": 10_000.0}
    assert (reloaded.config.bos_token_id, reloaded.config.eos_token_id) == (1, 2)
    original = hf_model.state_dict()
    assert sorted(reloaded.state_dict()) == sorted(original)
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    input_ids = np.random.default_rng(2).integers(0, TINY_LLAMA["vocab_size"], (2, 30))
    np.testing.assert_allclose(hf_logits(reloaded, input_ids), hf_logits(hf_model, input_ids), atol=1e-5, rtol=0)

    hf_to_flax.convert(str(source), tmp_path / "speech", twist_vocab=True, num_units=10)
    assert not (tmp_path / "speech" / "tokenizer.json").exists()  # a speech LM has no text tokenizer
    with pytest.raises(FileNotFoundError, match="no tokenizer files.*without --twist"):
        text_lm.load_text_lm(tmp_path / "speech")


def hf_config_dict(**changes) -> dict:
    return {**transformers.LlamaConfig(**TINY_LLAMA).to_dict(), **changes}


def test_config_forms_and_refusals(converted, tmp_path):
    # transformers 4 wrote the scaling as `rope_scaling` and theta at the top level
    old_style = hf_config_dict(rope_parameters=None, rope_theta=500_000.0, rope_scaling={**LLAMA3_ROPE, "factor": 32.0})
    del old_style["rope_scaling"]["rope_theta"]
    config = qwen2_hf.model_config_from_hf(old_style, "config.json")
    assert (config.rope_theta, config.rope_scaling, config.rope_factor) == (500_000.0, "llama3", 32.0)
    refused = {
        "attention_bias=true": dict(attention_bias=True),
        "mlp_bias=true": dict(mlp_bias=True),
        "rope type 'yarn'": dict(rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}),
    }
    for message, changes in refused.items():
        with pytest.raises(CheckpointError, match=f"^config.json: {message}"):
            qwen2_hf.model_config_from_hf(hf_config_dict(**changes), "config.json")
    with pytest.raises(ValueError, match="rope_high_freq_factor=1.0: must be > rope_low_freq_factor=1.0"):
        model_config.tiny(rope_scaling="llama3", rope_high_freq_factor=1.0)  # the band would divide by 0
    # a Qwen2 checkpoint (q/k/v biases) relabelled llama would lose its biases: refused, nothing written
    qwen = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**TINY_LLAMA, "tie_word_embeddings": True}))
    qwen.save_pretrained(tmp_path / "qwen")
    path = tmp_path / "qwen" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type 'llama' has no q/k/v biases, but .* holds .*q_proj.bias"):
        hf_to_flax.convert(str(tmp_path / "qwen"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_old_model_config_loads_as_qwen2(tmp_path):
    new_keys = {"architecture", "attention_bias", "rope_scaling", "rope_factor", "rope_low_freq_factor"}
    new_keys |= {"rope_high_freq_factor", "rope_original_max_position_embeddings"}
    old = {key: value for key, value in model_config.tiny().to_dict().items() if key not in new_keys}
    assert len(old) == len(model_config.tiny().to_dict()) - len(new_keys)
    (tmp_path / "model_config.json").write_text(json.dumps(old))
    config = model_config.ModelConfig.load(tmp_path / "model_config.json")
    assert config == model_config.tiny()
    assert (config.architecture, config.attention_bias, config.rope_scaling) == ("qwen2", True, "none")


TEXTS = [
    "the cat sat on the mat",
    "",
    "a dog ran",
    "the big red dog ran under the log and then it was very small and the green cat sat on a blue mat and ran",
    "the cat <eos> sat",  # an eos inside a text: not scored, pad being eos
    "zebra the cat",  # an unknown word
    "it",
    "then the small blue cat sat on it",
    "dog",
    "a",
]


def test_nll_is_the_reference_formula_whatever_the_batching(converted):
    hf_model, source, out = converted["llama3_tied"]
    lm = text_lm.load_text_lm(out)
    assert lm.tokenizer.pad_token == "<eos>"
    assert lm.tokenizer("the cat")["input_ids"] == [1, 3, 5]
    expected = reference_nll(hf_model, source, TEXTS)
    assert np.isnan(expected).tolist() == [text == "" for text in TEXTS]  # BOS alone: nothing to score

    scores = lm.nll(TEXTS, batch_size=16)
    assert scores.shape == (len(TEXTS),) and scores.dtype == np.float64
    assert np.array_equal(np.isnan(scores), np.isnan(expected))
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)

    one_device = text_lm.TextLM(lm.model, lm.tokenizer, mesh=parallel.make_mesh(devices=jax.devices()[:1]))
    for other in (one_device.nll(TEXTS, batch_size=1), lm.nll(TEXTS[::-1], batch_size=8)[::-1]):
        assert np.array_equal(np.isnan(other), np.isnan(expected))
        np.testing.assert_allclose(other, scores, atol=1e-5, rtol=0)
    assert lm.nll([]).shape == (0,)
