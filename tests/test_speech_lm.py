"""SpeechLM: load_model, log-likelihood as docs/recipe.md §6 defines it, against a torch computation."""

import numpy as np
import pytest
import torch

import slam_jax
from conversion import hf_to_flax
from slam_jax.models import storage


def reference_log_likelihood(hf_model, sequence: list[int]) -> float:
    """Minus the mean NLL over targets sequence[1:] (BOS not scored, EOS scored), computed by hand."""
    with torch.no_grad():
        logits = hf_model(torch.tensor([sequence])).logits[0, :-1].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(sequence[1:])
    return float(log_probs[torch.arange(len(targets)), targets].mean())


@pytest.fixture
def speech_model(hf_checkpoint, tmp_path):
    hf_model, folder = hf_checkpoint(vocab_size=22)
    hf_to_flax.convert(str(folder), tmp_path / "speech")
    return hf_model, slam_jax.load_model(tmp_path / "speech", compute_dtype="float32")


def test_token_ids_are_the_reference_ones():
    assert (slam_jax.PAD_ID, slam_jax.BOS_ID, slam_jax.EOS_ID, slam_jax.UNIT_OFFSET) == (0, 1, 1, 2)


def test_log_likelihood_matches_hand_computed_mean_nll(speech_model):
    hf_model, model = speech_model
    rng = np.random.default_rng(0)
    sequences = [[1, *(rng.integers(0, 20, n) + 2).tolist(), 1] for n in (5, 17, 9)]
    scores = model.log_likelihood(sequences)
    expected = [reference_log_likelihood(hf_model, sequence) for sequence in sequences]
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


def test_padding_and_batch_composition_change_no_score(speech_model):
    _, model = speech_model
    rng = np.random.default_rng(1)
    sequences = [[1, *(rng.integers(0, 20, n) + 2).tolist(), 1] for n in (4, 30, 11)]
    together = model.log_likelihood(sequences)
    alone = [model.log_likelihood([sequence])[0] for sequence in sequences]
    padded = np.zeros((3, 70), np.int32)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.log_likelihood(padded), together, atol=1e-5, rtol=0)


def test_eos_is_scored_and_bos_is_not(speech_model):
    hf_model, model = speech_model
    with_eos = [1, 5, 9, 12, 1]
    without_eos = [1, 5, 9, 12]
    assert model.log_likelihood([with_eos])[0] != pytest.approx(model.log_likelihood([without_eos])[0], abs=1e-6)
    np.testing.assert_allclose(
        model.log_likelihood([without_eos])[0], reference_log_likelihood(hf_model, without_eos), atol=1e-4
    )


def test_load_model_finds_the_newest_step_of_a_workdir(speech_model, tmp_path):
    _, model = speech_model
    for step in (100, 2000):
        storage.save_model(tmp_path / "run" / "checkpoints" / str(step), model.config, model.params)
    assert storage.resolve_model_dir(tmp_path / "run").name == "2000"
    loaded = slam_jax.load_model(tmp_path / "run", compute_dtype="float32")
    input_ids = np.array([[1, 4, 5, 6, 1]])
    np.testing.assert_array_equal(np.asarray(loaded(input_ids)), np.asarray(model(input_ids)))
    with pytest.raises(FileNotFoundError, match="no such model dir"):
        slam_jax.load_model(tmp_path / "nowhere")


def test_compute_dtype_default_is_bfloat16_and_overridable(speech_model, tmp_path):
    assert slam_jax.load_model(tmp_path / "speech").config.compute_dtype == "bfloat16"
    assert slam_jax.load_model(tmp_path / "speech", compute_dtype="float32").config.compute_dtype == "float32"
