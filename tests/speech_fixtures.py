"""Shared helpers of the speech tests: real speech from espeak-ng, tiny random HF HuBERTs, cheap long files."""

import struct
from pathlib import Path

import numpy as np
import torch
import transformers

from slam_jax.speech import tts

ESPEAK_RATE = 22_050
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A speech language model learns from sound alone.",
    "Seven small boats sailed slowly across the quiet bay.",
    "Hello world.",
)


def synthesize(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng: int16 samples at 22,050 Hz, the same whatever was spoken before.

    Through slam_jax's espeak backend (its flutter-free voice, fixed noise draws, volume under the gain control):
    the stock voice's flutter and noise carry state from one utterance to the next, so the same text came out
    differently on each call and tests depended on what other tests had spoken first.
    """
    wave = tts.EspeakBackend().synthesize(text, tts.Voice("en"))
    return np.round(wave * 32768).astype(np.int16)


def write_silent_wav(path: Path, seconds: float, rate: int) -> Path:
    """A valid 16-bit mono WAV of `seconds` of silence, made sparse (no data written): hours cost nothing."""
    data_bytes = int(seconds * rate) * 2
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", data_bytes)
    with open(path, "wb") as handle:
        handle.write(header)
        handle.truncate(len(header) + data_bytes)
    return path


def tiny_hubert_config(**overrides) -> transformers.HubertConfig:
    """A small HF HuBERT with the 25 Hz front end's shape (one extra stride-2 conv: 640 samples per frame)."""
    values = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        conv_dim=[16] * 8,
        conv_stride=[5, 2, 2, 2, 2, 2, 2, 2],
        conv_kernel=[10, 3, 3, 3, 3, 2, 2, 2],
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    return transformers.HubertConfig(**{**values, **overrides})


def random_hubert(seed: int = 0, **overrides) -> transformers.HubertModel:
    """An HF HubertModel in eval mode with every tensor random (norm scales around 1), so no mapping hides."""
    torch.manual_seed(seed)
    model = transformers.HubertModel(tiny_hubert_config(**overrides)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, 0.2)
    return model


def hf_hidden_states(model: transformers.HubertModel, waveforms: np.ndarray, attention_mask=None) -> list[np.ndarray]:
    """Every HF hidden state of `waveforms` [batch, samples] as numpy."""
    mask = None if attention_mask is None else torch.as_tensor(attention_mask)
    with torch.no_grad():
        outputs = model(torch.as_tensor(waveforms, dtype=torch.float32), attention_mask=mask, output_hidden_states=True)
    return [state.numpy() for state in outputs.hidden_states]
