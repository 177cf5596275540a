"""Generation: greedy decoding equals transformers `generate` token for token (left-padded batches, EOS stop,
repetition penalty); seeded sampling is reproducible and stays in the top k; the logits processors equal
transformers' on fixed logits."""

import numpy as np
import pytest
import torch
from conftest import random_hf_model
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import slam_jax
from conversion import hf_to_flax
from slam_jax.models import sampling

VOCAB = 40
PROMPT_LENGTHS = (3, 9, 14)
MAX_NEW = 24


def hf_generate(hf_model, prompts: list[list[int]], max_new: int, **kwargs) -> np.ndarray:
    """transformers' new tokens for left-padded `prompts` (attention mask on the pads), PAD-filled to `max_new`."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.tensor([[0] * (width - len(prompt)) + prompt for prompt in prompts])
    mask = torch.tensor([[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts])
    with torch.no_grad():
        out = hf_model.generate(
            ids, attention_mask=mask, max_new_tokens=max_new, pad_token_id=0, eos_token_id=1, bos_token_id=1, **kwargs
        )
    new = out[:, width:].numpy()
    return np.pad(new, ((0, 0), (0, max_new - new.shape[1])))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers model, converted SpeechLM) of a random untied Qwen2 whose head makes EOS likely: EOS's head
    row is 1.02x the row of the token greedy decoding emits most, so EOS wins where that token would."""
    hf_model = random_hf_model(3, vocab_size=VOCAB, tie_word_embeddings=False)
    prompts = make_prompts()
    emitted = hf_generate(hf_model, prompts, MAX_NEW, do_sample=False)
    favourite = np.bincount(emitted[emitted >= 2].ravel()).argmax()
    with torch.no_grad():
        hf_model.lm_head.weight[1] = 1.02 * hf_model.lm_head.weight[favourite]
    folder = tmp_path_factory.mktemp("generation")
    hf_model.save_pretrained(folder / "hf")
    hf_to_flax.convert(str(folder / "hf"), folder / "speech")
    return hf_model, slam_jax.load_model(folder / "speech", compute_dtype="float32")


def make_prompts(seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[1, *rng.integers(2, VOCAB, length - 1).tolist()] for length in PROMPT_LENGTHS]


def test_greedy_equals_transformers_with_left_padding_and_eos(models):
    hf_model, model = models
    prompts = make_prompts()
    ours = model.generate(prompts, max_new_tokens=MAX_NEW, temperature=0)
    assert ours.shape == (3, MAX_NEW) and ours.dtype == np.int32
    np.testing.assert_array_equal(ours, hf_generate(hf_model, prompts, MAX_NEW, do_sample=False))
    for row, prompt in enumerate(prompts):
        np.testing.assert_array_equal(ours[row], hf_generate(hf_model, [prompt], MAX_NEW, do_sample=False)[0])
    ended = [row for row in ours if (row == slam_jax.EOS_ID).any()]
    assert ended, "no row reached EOS: the fixture should make EOS likely"
    for row in ended:
        stop = int(np.flatnonzero(row == slam_jax.EOS_ID)[0])
        assert (row[stop + 1 :] == slam_jax.PAD_ID).all()
    right_padded = np.zeros((3, 16), np.int32)
    for row, prompt in enumerate(prompts):
        right_padded[row, : len(prompt)] = prompt
    np.testing.assert_array_equal(model.generate(right_padded, max_new_tokens=MAX_NEW, temperature=0), ours)


def test_greedy_with_repetition_penalty_equals_transformers(models):
    hf_model, model = models
    prompts = make_prompts(1)
    ours = model.generate(prompts, max_new_tokens=MAX_NEW, temperature=0, repetition_penalty=1.3)
    plain = model.generate(prompts, max_new_tokens=MAX_NEW, temperature=0)
    assert (ours != plain).any(), "the penalty changed nothing"
    for row, prompt in enumerate(prompts):
        expected = hf_generate(hf_model, [prompt], MAX_NEW, do_sample=False, repetition_penalty=1.3)[0]
        np.testing.assert_array_equal(ours[row], expected)


def test_sampling_is_seeded_and_stays_in_the_top_k(models):
    hf_model, model = models
    prompts = make_prompts(2)
    settings = dict(max_new_tokens=MAX_NEW, temperature=1.5, top_k=4)
    first = model.generate(prompts, seed=7, **settings)
    np.testing.assert_array_equal(model.generate(prompts, seed=7, **settings), first)
    assert (model.generate(prompts, seed=8, **settings) != first).any()
    assert len({tuple(row) for row in first}) == 3
    for prompt, row in zip(prompts, first, strict=True):
        stops = np.flatnonzero(row == slam_jax.EOS_ID)
        kept = row[: stops[0] + 1] if stops.size else row
        assert (row[len(kept) :] == slam_jax.PAD_ID).all()
        with torch.no_grad():
            logits = hf_model(torch.tensor([prompt + kept.tolist()])).logits[0, len(prompt) - 1 : -1].numpy()
        kth_largest = np.sort(logits, axis=-1)[:, -4]
        assert (logits[np.arange(len(kept)), kept] >= kth_largest - 1e-4).all()


def assert_same_scores(ours, theirs: torch.Tensor) -> None:
    ours, theirs = np.asarray(ours), theirs.numpy()
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("top_k", [1, 3, 10, 100])
@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95, 1.0])
def test_processors_equal_transformers_on_fixed_logits(top_k, top_p):
    """Ties are checked for top-k, whose cut keeps every logit equal to the k-th; top-p and the chain run on
    tie-free logits, since torch's unstable sort orders tied tokens arbitrarily."""
    rng = np.random.default_rng(top_k)
    logits = rng.normal(0, 2, (5, 30)).astype(np.float32)
    tied = logits.copy()
    tied[0, [3, 7, 11]] = tied[0].max()  # a tie at the top
    tied[1, :] = 0.5  # all equal
    input_ids = rng.integers(0, 30, (5, 12))
    seen = np.zeros((5, 30), bool)
    np.put_along_axis(seen, input_ids, True, axis=1)
    ids = torch.tensor(input_ids)
    for values in (logits, tied):
        scores = torch.tensor(values)
        assert_same_scores(
            sampling.apply_repetition_penalty(values, seen, 1.3), RepetitionPenaltyLogitsProcessor(1.3)(ids, scores)
        )
        assert_same_scores(sampling.apply_temperature(values, 0.7), TemperatureLogitsWarper(0.7)(ids, scores))
        assert_same_scores(sampling.apply_top_k(values, top_k), TopKLogitsWarper(top_k)(ids, scores))
    scores = torch.tensor(logits)
    chain = [RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(top_k)]
    if top_p < 1.0:
        assert_same_scores(sampling.apply_top_p(logits, top_p), TopPLogitsWarper(top_p)(ids, scores))
        chain.append(TopPLogitsWarper(top_p))
    settings = sampling.SamplingSettings(10, 0.7, top_k, top_p, 1.3)
    assert_same_scores(sampling.process_logits(logits, seen, settings), LogitsProcessorList(chain)(ids, scores))


def test_bad_settings_and_prompts_are_clear_errors(models):
    _, model = models
    with pytest.raises(ValueError, match="top_p=0"):
        model.generate([[1, 5]], top_p=0.0)
    with pytest.raises(ValueError, match="temperature=-1"):
        model.generate([[1, 5]], temperature=-1)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        model.generate([[1, 5], []])
