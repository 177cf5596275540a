"""Auto-BLEU-n: how much a sequence repeats itself (docs/recipe.md §6).

The score is the fraction of the sequence's n-grams that also occur at another position of the same
sequence (0 when it has no n-gram), as the reference's `calc_auto_bleu` computes it: a fraction, not a percent,
case-sensitive. On text, the sequence is the tokens of NLTK's `NLTKWordTokenizer().tokenize`, the reference's
splitter for the GenPPL transcripts and the SpokenSwag filter: "don't" is "do" + "n't", "..." stays whole, and
there is no sentence splitting, so a full stop inside the text stays on its word ("world." in "Hello world. Hello
world."). It needs no NLTK data (no `punkt`). tests/test_auto_bleu_slamkit.py checks it against the reference's
code. On speech, the sequence is the unit sequence itself. Higher means more repetitive; papers report it in
percent.
"""

import functools
from collections import Counter
from collections.abc import Sequence


@functools.cache
def _tokenizer():
    from nltk.tokenize import NLTKWordTokenizer  # deferred: importing nltk takes about a second

    return NLTKWordTokenizer()


def words(text: str) -> list[str]:
    """The tokens of `text`, in order, as the reference splits it: `NLTKWordTokenizer().tokenize(text)`."""
    return _tokenizer().tokenize(text)


def auto_bleu(sequence: Sequence, n: int = 2) -> float:
    """Fraction of the n-grams of `sequence` (units, words, ...) that occur more than once in it."""
    if n < 1:
        raise ValueError(f"auto_bleu: n={n} must be >= 1")
    items = list(sequence)
    ngrams = [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
    if not ngrams:
        return 0.0
    counts = Counter(ngrams)
    return sum(counts[ngram] > 1 for ngram in ngrams) / len(ngrams)


def auto_bleu_text(text: str, n: int = 2) -> float:
    """Auto-BLEU-n of a text over its words (docs/recipe.md §6's Auto-BLEU-2 with n = 2)."""
    return auto_bleu(words(text), n)
