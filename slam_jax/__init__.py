"""slam_jax: train speech language models the Slam way (Maimon et al., 2025) in JAX.

`SpeechLM`, `load_model` and `load_vocoder` (units -> speech) load on first use, so that `import slam_jax.files`
(or any job's module) does not pull in the model stack.
"""

import importlib

from slam_jax.tokens import BOS_ID, EOS_ID, PAD_ID, UNIT_OFFSET

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNIT_OFFSET", "SpeechLM", "load_model", "load_vocoder"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("SpeechLM", "load_model"):
        return getattr(importlib.import_module("slam_jax.models.speech_lm"), name)
    if name == "load_vocoder":
        return importlib.import_module("slam_jax.speech.vocoders").load_vocoder
    raise AttributeError(f"module 'slam_jax' has no attribute {name!r}")
