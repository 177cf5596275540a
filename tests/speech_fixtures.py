"""Shared helpers of the speech tests: real speech from espeak-ng, tiny random HF HuBERTs, cheap long files."""

import ctypes
import functools
import struct
import threading
from pathlib import Path

import espeakng_loader
import numpy as np
import torch
import transformers

ESPEAK_RATE = 22_050
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A speech language model learns from sound alone.",
    "Seven small boats sailed slowly across the quiet bay.",
    "Hello world.",
)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.Lock()


@functools.cache
def _espeak() -> tuple[ctypes.CDLL, list, object]:
    """libespeak-ng initialised once per process (synchronous output, samples collected by a callback)."""
    library = ctypes.CDLL(espeakng_loader.get_library_path())
    library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    library.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    rate = library.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    assert rate == ESPEAK_RATE, rate
    chunks: list[np.ndarray] = []

    def collect(samples, count, events):
        if count > 0:
            chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        return 0

    callback = _SYNTH_CALLBACK(collect)  # kept alive with the library: espeak calls it later
    library.espeak_SetSynthCallback(callback)
    assert library.espeak_SetVoiceByName(b"en") == 0
    return library, chunks, callback


def synthesize(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng: int16 samples at 22,050 Hz."""
    with _LOCK:
        library, chunks, _ = _espeak()
        chunks.clear()
        encoded = text.encode()
        assert library.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, 0, None, None) == 0
        assert library.espeak_Synchronize() == 0
        return np.concatenate(chunks)


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
