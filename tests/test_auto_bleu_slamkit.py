"""Text Auto-BLEU-n equals the reference's: its code, copied below, against `auto_bleu_text` on varied texts.

The reference (slamkit) scores the GenPPL transcripts (Auto-BLEU-2) and SpokenSwag's prompt + chosen texts (kept
below 0.3) with `calc_auto_bleu(text, NLTKWordTokenizer(), n)`; the scores must be the same float.
"""

import random

import pytest
from nltk.tokenize import NLTKWordTokenizer

from slam_jax.data.auto_bleu import auto_bleu_text, words

# --- copied verbatim from github.com/slp-rl/slamkit, slamkit/utils/calculation_utils.py at commit
# 388b40222a1736930dad5e6b231754217c69629a (its callers, slamkit/metric/generative_metric.py `asr_perplexity` and
# slamkit/data/hf_dataset.py `get_repetition_filter_fn`, pass `NLTKWordTokenizer()` from nltk.tokenize)


def calc_ngram(text: str, nltk_word_tokenizer, n: int):
    tokens = nltk_word_tokenizer.tokenize(text)
    ngrams = [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return ngrams


def calc_auto_bleu(text, nltk_word_tokenizer, n):
    res = 0
    ngrams = calc_ngram(text, nltk_word_tokenizer, n)
    if len(ngrams) == 0:
        return 0
    for i in range(len(ngrams)):
        left = ngrams[:i]
        right = ngrams[i + 1 :]
        if ngrams[i] in left or ngrams[i] in right:
            res += 1
    return res / len(ngrams)


# --- end of the reference's code

REFERENCE_TOKENIZER = NLTKWordTokenizer()

FRAGMENTS = [
    "don't stop",
    "I can't",
    "we won't",
    "y'all",
    "it's 3 o'clock",
    "they'd've gone",
    "Don’t",
    "can’t stop",
    "rock ’n’ roll",
    "gonna",
    "wanna",
    "gimme",
    "wait...",
    "wait… what",
    "and then . . . nothing",
    '"quoted"',
    "'single'",
    "''doubled''",
    "``latex''",
    "“curly”",
    "‘curly single’",
    "« French »",
    "«collé»",
    "pi is 3.14",
    "1,000 people",
    "$5",
    "50%",
    "£3.50 each",
    "-5 degrees",
    "well-known",
    "so -- anyway",
    "yes—no",
    "a – b",
    "café",
    "Straße",
    "naïve résumé",
    "日本語のテキスト",
    "Привет, мир",
    "😀 emoji 🎉",
    "https://example.com/a?b=c&d=e",
    "www.example.org",
    "mail me@example.com",
    "(parenthesised)",
    "[bracketed]",
    "{braced}",
    "<angled>",
    "Hello world.",
    "Hello, world!",
    "What?",
    "No!",
    "semi; colon: here",
    "Mr. Smith",
    "U.S.A.",
    "e.g. this",
    "the cat",
    "the cat sat",
    "The cat",
    "the the the",
    "A",
    "",
    " ",
    "\t\n",
    "#hashtag",
    "@mention",
    "a/b",
    "C++ & C#",
    "it's",
    "'tis",
    "o'er",
    "rock'n'roll",
]

HAND_WRITTEN = [
    "",
    " ",
    "   \t \n ",
    "word",
    "Word.",
    "don't stop, don't stop",
    "Hello world. Hello world.",
    "Hello, world. Hello, world.",
    "I can't, I won't, I can't, I won't.",
    "Y'all ain't seen nothin' yet, y'all.",
    "She said, “It’s fine.” She said, “It’s fine.”",
    "Wait... wait... wait...",
    "Wait… wait… wait…",
    "He sold 1,000 shares at $5 each -- a 50% loss -- and 1,000 more at $5.",
    "Pi is 3.14, not 3.1415; pi is 3.14.",
    "A well-known—and well-liked—man. A well-known—and well-liked—man.",
    "« Bonjour », dit-il. « Bonjour », dit-elle.",
    "Café crème, café crème, Straße, Straße.",
    "日本語 日本語 日本語",
    "😀 😀 🎉 😀 😀",
    "See https://example.com/x?y=1 and https://example.com/x?y=1 again.",
    "'Quoted' and 'quoted' and ''quoted'' and \"quoted\".",
    "the cat the cat",
    "The cat the cat",
    "the cat sat the cat sat the cat sat the cat sat",
    "A man sits at a piano. He plays a song. He plays a song.",
    "(a) [b] {c} <d> (a) [b] {c} <d>",
    "Mr. Smith met Mrs. Smith. Mr. Smith left.",
    " the transcript starts with a space, as Whisper's do",
    "no punctuation at all here just words and words and words",
    "It's, it's, it's.",
    "can't can’t cannot can not",
    "won't wont won’t",
    "gonna gotta wanna lemme gimme",
    "'tis the season, 'twas the night",
    "Don't you know? I don't!",
    "end with a quote'",
    'end with a quote"',
    '"start with a quote',
    "multiple   spaces\tand\ttabs\nand newlines",
    "a" * 50,
    "a " * 50,
    "ab ab ab ab ab ab",
]


def reference(text: str, n: int) -> float:
    return calc_auto_bleu(text, REFERENCE_TOKENIZER, n)


def generated_texts(count: int, seed: int = 0) -> list[str]:
    """Seeded random concatenations of the fragments, with phrases repeated to make n-gram repeats."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        pieces = rng.choices(FRAGMENTS, k=rng.randint(1, 8))
        if rng.random() < 0.6:  # repeat a run of the pieces, once or more, at a later position
            start = rng.randrange(len(pieces))
            run = pieces[start : start + rng.randint(1, 3)]
            at = rng.randint(start + len(run), len(pieces))
            pieces[at:at] = run * rng.randint(1, 3)
        separator = rng.choice([" ", " ", " ", ", ", ". ", "  ", "\n", " ... ", "! ", "? "])
        text = separator.join(pieces)
        if rng.random() < 0.3:
            text = text + rng.choice([".", "!", "?", "...", "…", '"', "'", "”", ""])
        texts.append(text)
    return texts


TEXTS = HAND_WRITTEN + FRAGMENTS + generated_texts(300)


def test_the_example_texts_score_as_the_reference():
    assert reference("don't stop, don't stop", 2) == pytest.approx(0.67, abs=0.005)
    assert auto_bleu_text("don't stop, don't stop") == 4 / 6  # do-n't, n't-stop twice each; 6 bigrams
    assert reference("Hello world. Hello world.", 2) == 0.0
    assert auto_bleu_text("Hello world. Hello world.") == 0.0  # Hello world. | Hello world . : no bigram repeats


def test_words_are_the_reference_tokens():
    assert words("don't stop") == ["do", "n't", "stop"]
    assert words("Hello world. Hello world.") == ["Hello", "world.", "Hello", "world", "."]
    assert words("Wait... I won't.") == ["Wait", "...", "I", "wo", "n't", "."]
    for text in TEXTS:
        assert words(text) == REFERENCE_TOKENIZER.tokenize(text), repr(text)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_text_auto_bleu_equals_the_reference_exactly(n):
    assert len(TEXTS) > 400
    scores = [(auto_bleu_text(text, n), reference(text, n)) for text in TEXTS]
    mismatches = [(text, ours, theirs) for text, (ours, theirs) in zip(TEXTS, scores, strict=True) if ours != theirs]
    assert not mismatches, mismatches[:5]
    # the cases are varied: repeats and non-repeats, empty and partial scores all occur
    values = {theirs for _, theirs in scores}
    assert 0 in values and 1 in values and any(0 < value < 1 for value in values)


def test_the_default_is_auto_bleu_2():
    for text in HAND_WRITTEN:
        assert auto_bleu_text(text) == reference(text, 2), repr(text)


def test_words_loads_no_nltk_data(monkeypatch):
    """The splitting needs no downloaded NLTK data (no punkt): it works where every data lookup fails."""
    import nltk.data

    def no_data(*args, **kwargs):
        raise LookupError("no NLTK data here")

    monkeypatch.setattr(nltk.data, "load", no_data)
    monkeypatch.setattr(nltk.data, "find", no_data)
    assert words("Hello world. Don't stop... “Here”.") == [
        "Hello",
        "world.",
        "Do",
        "n't",
        "stop",
        "...",
        "“",
        "Here",
        "”",
        ".",
    ]
