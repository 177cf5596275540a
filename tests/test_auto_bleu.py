"""Auto-BLEU-n (docs/recipe.md §6) on hand-computed examples, and against the reference's formula written out."""

import numpy as np
import pytest

from slam_jax.data.auto_bleu import auto_bleu, auto_bleu_text, words


def reference_auto_bleu(items: list, n: int) -> float:
    """The reference's loop: an n-gram counts if it occurs in the n-grams before or after it."""
    ngrams = [" ".join(map(str, items[i : i + n])) for i in range(len(items) - n + 1)]
    if not ngrams:
        return 0
    return sum(ngrams[i] in ngrams[:i] or ngrams[i] in ngrams[i + 1 :] for i in range(len(ngrams))) / len(ngrams)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("the cat the cat", 2 / 3),  # bigrams: the-cat, cat-the, the-cat
        ("a b c d", 0.0),
        ("", 0.0),
        ("alone", 0.0),  # no bigram at all
        ("Hello, world. Hello, world.", 2 / 6),  # Hello , world. Hello , world . : only 'Hello-,' repeats
        ("don't stop, don't stop", 4 / 6),  # do n't stop , do n't stop : 'do-n't' and 'n't-stop' repeat
        ("The cat the cat", 0.0),  # case matters: The-cat differs from the-cat
    ],
)
def test_text_auto_bleu_2_by_hand(text, expected):
    assert auto_bleu_text(text) == pytest.approx(expected)


def test_words_split_punctuation_and_contractions_as_nltk():
    assert words("Hi, it's 3 o'clock!") == ["Hi", ",", "it", "'s", "3", "o'clock", "!"]


@pytest.mark.parametrize(
    "units,n,expected",
    [
        ([5, 5, 5, 5], 2, 1.0),
        ([1, 2, 3, 1, 2, 4], 2, 2 / 5),
        ([1, 2, 3, 1, 2, 4], 3, 0.0),
        ([1, 2, 1], 1, 2 / 3),
        ([7], 2, 0.0),
    ],
)
def test_unit_auto_bleu_by_hand(units, n, expected):
    assert auto_bleu(units, n) == pytest.approx(expected)


def test_matches_the_reference_loop_on_random_sequences():
    rng = np.random.default_rng(0)
    for _ in range(200):
        items = rng.integers(0, 4, rng.integers(0, 30)).tolist()
        for n in (1, 2, 3):
            assert auto_bleu(items, n) == pytest.approx(reference_auto_bleu(items, n))


def test_n_must_be_positive():
    with pytest.raises(ValueError, match="n=0"):
        auto_bleu([1, 2, 3], 0)
