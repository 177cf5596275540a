"""slam_jax: train speech language models the Slam way (Maimon et al., 2025) in JAX."""

from slam_jax.models.speech_lm import SpeechLM, load_model
from slam_jax.tokens import BOS_ID, EOS_ID, PAD_ID, UNIT_OFFSET

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNIT_OFFSET", "SpeechLM", "load_model"]
__version__ = "0.1.0"
