"""Token ids shared with the reference implementation (docs/recipe.md §2).

PAD is 0, `<S>` (both BOS and EOS) is 1, and speech unit u has id u + UNIT_OFFSET.
"""

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 1
UNIT_OFFSET = 2


def vocab_size_for(num_units: int) -> int:
    """Vocabulary size of a speech LM over `num_units` units (500 -> 502)."""
    return num_units + UNIT_OFFSET


def unit_sequence(units) -> np.ndarray:
    """`[BOS, u0 + 2, ..., EOS]`: the ids a model reads for one unit sequence (a file, an utterance)."""
    return np.concatenate([[BOS_ID], np.asarray(units, np.int64) + UNIT_OFFSET, [EOS_ID]])
