"""Auto-BLEU-n: how much a sequence repeats itself (docs/recipe.md §6).

The score is the fraction of the sequence's n-grams that also occur at another position of the same
sequence (0 when it has no n-gram). On text, the sequence is its words and punctuation marks, split as
NLTK's word tokenizer splits them, except that contractions stay whole ("don't" is one word); on speech, it
is the unit sequence itself. Higher means more repetitive; papers report it in percent.
"""

import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


def words(text: str) -> list[str]:
    """Words and punctuation marks of `text`, in order."""
    return _WORD.findall(text)


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
