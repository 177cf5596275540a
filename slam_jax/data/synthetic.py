"""A synthetic "speech" corpus: a stochastic grammar over units, for tests, benchmarks and the demo.

Words are fixed random unit strings (like the unit sequences of spoken words); sentences follow a small
probabilistic grammar (determiner, optional adjective, noun, verb, object) and files are runs of
sentences. A model that learns the words and the grammar lowers its loss well below the uniform
log(num_units), so "the loss goes down" is a meaningful check.
"""

import json

import numpy as np

from slam_jax import files
from slam_jax.paths import Path

_CATEGORIES = {"det": 4, "adj": 12, "noun": 30, "verb": 20, "end": 1}


def make_lexicon(num_units: int, rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Per category, its words as unit strings of 2-6 units."""
    return {
        category: [rng.integers(0, num_units, rng.integers(2, 7)) for _ in range(size)]
        for category, size in _CATEGORIES.items()
    }


def sentence(lexicon: dict[str, list[np.ndarray]], rng: np.random.Generator) -> list[np.ndarray]:
    """det (adj) noun verb [det (adj) noun] end, with Zipf-like word choice."""
    categories = ["det"] + (["adj"] if rng.random() < 0.5 else []) + ["noun", "verb"]
    if rng.random() < 0.7:
        categories += ["det"] + (["adj"] if rng.random() < 0.3 else []) + ["noun"]
    words = []
    for category in categories + ["end"]:
        options = lexicon[category]
        weights = 1.0 / np.arange(1, len(options) + 1)
        words.append(options[rng.choice(len(options), p=weights / weights.sum())])
    return words


def generate(num_files: int, num_units: int, seed: int = 0, sentences_per_file: tuple[int, int] = (2, 12)):
    """`num_files` records like the tokeniser's output: {"units", "file_name"}."""
    rng = np.random.default_rng(seed)
    lexicon = make_lexicon(num_units, rng)
    for index in range(num_files):
        count = rng.integers(*sentences_per_file)
        units = np.concatenate([np.concatenate(sentence(lexicon, rng)) for _ in range(count)])
        yield {"units": units.tolist(), "file_name": f"synthetic/{seed}/{index:07d}.wav"}


def write_jsonl(path: str | Path, num_files: int, num_units: int, seed: int = 0) -> Path:
    """The synthetic corpus as a features.jsonl file (written whole and atomically: `files.write_text`)."""
    path = Path(path)
    files.write_text(path, "".join(json.dumps(record) + "\n" for record in generate(num_files, num_units, seed)))
    return path
