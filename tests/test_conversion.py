"""HF <-> Flax conversion: round trips (hf and slamkit formats), sharded and bf16 inputs, TWIST."""

import json

import numpy as np
import pytest
import torch
import transformers
from conftest import hf_logits
from safetensors.torch import load_file

from conversion import flax_to_hf, hf_to_flax
from slam_jax import load_model
from slam_jax.models import storage


def state_dict(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}


def assert_bit_identical(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize("tied", [True, False])
def test_hf_round_trip_is_bit_identical(hf_checkpoint, tmp_path, tied):
    original, folder = hf_checkpoint(tie_word_embeddings=tied)
    hf_to_flax.convert(str(folder), tmp_path / "flax")
    flax_to_hf.export(tmp_path / "flax", tmp_path / "back", format="hf")

    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert_bit_identical(state_dict(reloaded), state_dict(original))
    input_ids = np.random.default_rng(0).integers(0, 300, (2, 19))
    np.testing.assert_allclose(hf_logits(reloaded, input_ids), hf_logits(original, input_ids), atol=1e-5, rtol=0)
    flax_logits = np.asarray(load_model(tmp_path / "flax", compute_dtype="float32")(input_ids))
    np.testing.assert_allclose(flax_logits, hf_logits(original, input_ids), atol=1e-4, rtol=0)


def load_slamkit_as_reference(folder) -> transformers.Qwen2ForCausalLM:
    """What the reference's UnitLM does: a Qwen2ForCausalLM from `base_config`, its embedding resized to the
    top-level (speech) `vocab_size`, holding the `lm.` weights."""
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "speech_language_model"
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**config["base_config"])).eval()
    model.resize_token_embeddings(config["vocab_size"])
    weights = load_file(folder / "model.safetensors")
    assert all(name.startswith("lm.") for name in weights)
    missing, unexpected = model.load_state_dict({k[3:]: v for k, v in weights.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return model


def test_slamkit_round_trip_is_bit_identical(hf_checkpoint, tmp_path):
    original, folder = hf_checkpoint(vocab_size=22)
    hf_to_flax.convert(str(folder), tmp_path / "flax")
    flax_to_hf.export(tmp_path / "flax", tmp_path / "slamkit", format="slamkit")

    config = json.loads((tmp_path / "slamkit" / "config.json").read_text())
    assert config["base_config"]["model_type"] == "qwen2"
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (0, 1, 1)
    reference = load_slamkit_as_reference(tmp_path / "slamkit")
    assert_bit_identical(state_dict(reference), state_dict(original))
    input_ids = np.random.default_rng(1).integers(0, 22, (2, 15))
    np.testing.assert_allclose(hf_logits(reference, input_ids), hf_logits(original, input_ids), atol=1e-5, rtol=0)

    hf_to_flax.convert(str(tmp_path / "slamkit"), tmp_path / "reimported")
    flax_to_hf.export(tmp_path / "reimported", tmp_path / "back", format="hf")
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert_bit_identical(state_dict(reloaded), state_dict(original))


def test_sharded_checkpoint_reads_like_a_single_file(hf_checkpoint, tmp_path):
    original, folder = hf_checkpoint(save_kwargs={"max_shard_size": "40KB"})
    assert (folder / "model.safetensors.index.json").is_file()
    hf_to_flax.convert(str(folder), tmp_path / "flax")
    flax_to_hf.export(tmp_path / "flax", tmp_path / "back", max_shard_bytes=40_000)
    assert len(list((tmp_path / "back").glob("model-*.safetensors"))) > 1
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert_bit_identical(state_dict(reloaded), state_dict(original))


def test_bfloat16_checkpoint_is_upcast_exactly(hf_checkpoint, tmp_path):
    original, folder = hf_checkpoint()
    original.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    hf_to_flax.convert(str(tmp_path / "bf16"), tmp_path / "flax")
    flax_to_hf.export(tmp_path / "flax", tmp_path / "back", dtype="bfloat16")
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.bfloat16)
    for name, tensor in original.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    params = storage.load_params(tmp_path / "flax")
    assert params["embed_tokens"].dtype == np.float32


def twisted_reference(original, num_units: int, rope_theta: float) -> transformers.Qwen2ForCausalLM:
    """The reference's TWIST: the text model with its rope theta overridden, then resize_token_embeddings."""
    config = transformers.Qwen2Config(**{**original.config.to_dict(), "rope_theta": rope_theta})
    config.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    model = transformers.Qwen2ForCausalLM(config).eval()
    model.load_state_dict(original.state_dict())
    model.resize_token_embeddings(num_units + 2)
    return model


def test_twist_keeps_first_rows_and_matches_resized_transformers(hf_checkpoint, tmp_path):
    original, folder = hf_checkpoint(rope_theta=1_000_000.0)
    hf_to_flax.convert(str(folder), tmp_path / "speech", twist_vocab=True, num_units=40)
    speech = load_model(tmp_path / "speech", compute_dtype="float32")

    assert speech.config.vocab_size == 42 and speech.config.tie_word_embeddings
    assert speech.config.rope_theta == 10_000.0 and speech.config.max_position_embeddings == 1024
    text_embedding = original.model.embed_tokens.weight.detach().numpy()
    assert np.array_equal(np.asarray(speech.params["embed_tokens"]), text_embedding[:42])

    reference = twisted_reference(original, num_units=40, rope_theta=10_000.0)
    input_ids = np.random.default_rng(2).integers(0, 42, (2, 30))
    np.testing.assert_allclose(np.asarray(speech(input_ids)), hf_logits(reference, input_ids), atol=1e-4, rtol=0)


def test_twist_of_an_untied_model_ties_the_head(hf_checkpoint, tmp_path):
    original, folder = hf_checkpoint(tie_word_embeddings=False)
    hf_to_flax.convert(str(folder), tmp_path / "speech", twist_vocab=True, num_units=10)
    flax_to_hf.export(tmp_path / "speech", tmp_path / "back")
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "back")
    assert reloaded.config.tie_word_embeddings and reloaded.config.vocab_size == 12
    assert torch.equal(reloaded.lm_head.weight, reloaded.model.embed_tokens.weight)
    assert torch.equal(reloaded.model.embed_tokens.weight, original.model.embed_tokens.weight[:12])


@pytest.mark.parametrize("init", ["mean", "random"])
def test_twist_alternative_inits(hf_checkpoint, tmp_path, init):
    original, folder = hf_checkpoint()
    hf_to_flax.convert(str(folder), tmp_path / "speech", twist_vocab=True, num_units=200, twist_init=init, seed=3)
    params = storage.load_params(tmp_path / "speech")
    embedding = np.asarray(params["embed_tokens"])
    text = original.model.embed_tokens.weight.detach().numpy()
    assert embedding.shape == (202, 48)
    if init == "mean":
        np.testing.assert_allclose(embedding.mean(axis=0), text.mean(axis=0), atol=3e-3)
        assert 0 < embedding.std(axis=0).mean() < 0.02 * text.std(axis=0).mean()
    else:
        assert abs(embedding.std() - 0.02) < 0.002 and abs(embedding.mean()) < 0.002
    q_kernel = np.asarray(params["layers"]["self_attn"]["q_proj"]["kernel"][0])
    np.testing.assert_array_equal(q_kernel, original.model.layers[0].self_attn.q_proj.weight.detach().numpy().T)
