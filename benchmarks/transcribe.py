"""Whisper transcription speed: slam_jax's greedy search against transformers' `generate`, same weights, same audio.

    python -m benchmarks.transcribe [--json] [--repeats 3] [--clips 8] [--max_new_tokens 128]

The model: whisper-base's architecture (`ARCHITECTURE`: 6 + 6 layers x 512, 8 heads, 80 mel bins, the 51,865-id
vocabulary) with transformers' random initialisation (no checkpoint is reachable offline), saved by transformers
with a byte-level tokenizer of that size and a generation config with Whisper's multilingual suppressed tokens
(`tests/whisper_fixtures.py`), and converted by `conversion.whisper_to_flax`. The audio: `--clips` sentences of
about 9 s spoken by espeak-ng at 16 kHz (`slam_jax.speech.tts`), one batch.

- reference: `WhisperFeatureExtractor` then `WhisperForConditionalGeneration.generate(input_features,
  language="en", task="transcribe", max_new_tokens=...)`, float32, torch on the CPU (or a GPU), under
  `torch.inference_mode()`.
- slam_jax: `slam_jax.speech.asr.load_asr(...).transcribe_ids(waves, 16000, batch_size=clips, ...)`: the
  front end, the encoder and the whole greedy loop in one jitted call.
Both return the same ids (checked: `same_ids`), so both run the same number of decode steps (`decode_steps`).
The parts (front end, encoder, the rest: the decoder's prompt and steps) are timed apart on the same batch, to
say where the time goes. Implementations alternate in rounds after one warm-up each; medians reported.
"""

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np
import torch
import transformers
from transformers.models.whisper.configuration_whisper import NON_SPEECH_TOKENS_MULTI

from benchmarks import common
from conversion import whisper_to_flax
from slam_jax.models import whisper
from slam_jax.paths import Path
from slam_jax.speech import asr, tts, whisper_features
from tests import whisper_fixtures

ARCHITECTURE = dict(  # openai/whisper-base
    num_mel_bins=80,
    d_model=512,
    encoder_layers=6,
    encoder_attention_heads=8,
    encoder_ffn_dim=2048,
    decoder_layers=6,
    decoder_attention_heads=8,
    decoder_ffn_dim=2048,
)
VOCAB_SIZE = 51_865
TEXTS = (
    "The old lighthouse keeper climbed the winding stairs every evening to light the lamp before the fishing boats "
    "came home, and he always counted the ships as they passed the rocks below.",
    "A small brown dog ran across the wet field, chasing a red ball that bounced toward the river bank, while two "
    "children shouted his name from the top of the hill.",
    "Scientists measured the temperature of the lake each morning and wrote the numbers in a green notebook, hoping to "
    "learn why the water had grown so much warmer this year.",
    "The children built a tall tower of wooden blocks on the kitchen floor, and then they laughed for a long time when "
    "it finally wobbled and fell down with a crash.",
    "On quiet Sunday afternoons my grandmother baked fresh bread and told us stories about the little village in the "
    "mountains where she grew up before the war.",
    "The morning train left the station ten minutes late because a tall tree had fallen across the tracks during the "
    "storm, and most passengers missed their meetings.",
    "Please remember to close all the windows, water the plants by the door and turn off the lights in every room "
    "before you leave the office tonight.",
    "Farmers in the green valley planted corn and beans early in the spring, and they harvested everything before the "
    "first frost arrived in the middle of October.",
)


def hf_model(seed: int = 0) -> tuple[transformers.WhisperForConditionalGeneration, transformers.WhisperTokenizer]:
    """whisper-base's architecture, transformers' random init, and a tokenizer of its vocabulary's size."""
    made = whisper_fixtures.tokenizer(VOCAB_SIZE)
    torch.manual_seed(seed)
    config = whisper_fixtures.whisper_config(made, **ARCHITECTURE)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    model.generation_config = whisper_fixtures.generation_config(made, list(NON_SPEECH_TOKENS_MULTI))
    return model, made


def speech(count: int) -> list[np.ndarray]:
    """`count` clips of about 9 s of espeak-ng speech at 16 kHz."""
    return [tts.synthesize(TEXTS[index % len(TEXTS)]) for index in range(count)]


def reference_ids(model, extractor, waves: list[np.ndarray], max_new_tokens: int, device: str) -> list[list[int]]:
    """transformers' ids after the prompt, without the EOS padding."""
    with torch.inference_mode():
        features = extractor(waves, sampling_rate=whisper_features.SAMPLE_RATE, return_tensors="pt").input_features
        rows = model.generate(
            features.to(device), language="en", task="transcribe", max_new_tokens=max_new_tokens
        ).tolist()
    eos = model.generation_config.eos_token_id
    return [[token for token in row if token != eos] for row in rows]


def part_timers(model, extractor, ours: whisper.Whisper, waves: list[np.ndarray], device: str) -> dict:
    """Functions timing the front end and the encoder of each implementation on the batch `waves`."""
    batch = np.stack([whisper_features.pad_or_trim(wave) for wave in waves])
    mel_bins = ours.config.num_mel_bins
    features_fn = jax.jit(whisper_features.log_mel, static_argnums=1)
    encoder_fn = jax.jit(lambda ours, features: ours.encoder(features))
    features = features_fn(batch, mel_bins)
    with torch.inference_mode():
        hf_features = extractor(waves, sampling_rate=whisper_features.SAMPLE_RATE, return_tensors="pt").input_features

    def hf_encoder():
        with torch.inference_mode():
            state = model.model.encoder(hf_features.to(device)).last_hidden_state
            common.torch_sync(device)
        return state

    return {
        "reference_front_end": lambda: extractor(
            waves, sampling_rate=whisper_features.SAMPLE_RATE, return_tensors="pt"
        ),
        "reference_encoder": hf_encoder,
        "slam_jax_front_end": lambda: features_fn(batch, mel_bins).block_until_ready(),
        "slam_jax_encoder": lambda: encoder_fn(ours, features).block_until_ready(),
    }


def build(count: int, max_new_tokens: int) -> tuple[dict[str, Callable[[], object]], dict]:
    """Every timed function by name and facts about the set-up."""
    torch.set_num_threads(os.cpu_count())
    device = common.torch_device()
    model, made = hf_model()
    waves = speech(count)
    with tempfile.TemporaryDirectory() as folder:
        whisper_fixtures.save_checkpoint(Path(folder) / "hf", model, made, model.generation_config)
        whisper_to_flax.convert(str(Path(folder) / "hf"), Path(folder) / "flax")
        transcriber = asr.load_asr(Path(folder) / "flax")
        ours = whisper.load_whisper(Path(folder) / "flax")
    model = model.to(device)
    extractor = transformers.WhisperFeatureExtractor(feature_size=ARCHITECTURE["num_mel_bins"])
    start = time.perf_counter()
    transcriber.transcribe_ids(waves, whisper_features.SAMPLE_RATE, batch_size=count, max_new_tokens=max_new_tokens)
    first_call = time.perf_counter() - start
    fns = {
        "reference_torch_fp32": lambda: reference_ids(model, extractor, waves, max_new_tokens, device),
        "slam_jax_transcribe": lambda: transcriber.transcribe_ids(
            waves, whisper_features.SAMPLE_RATE, batch_size=count, max_new_tokens=max_new_tokens
        ),
        **part_timers(model, extractor, ours, waves, device),
    }
    setup = {
        "audio_seconds": sum(len(wave) for wave in waves) / whisper_features.SAMPLE_RATE,
        "clips": count,
        "max_new_tokens": max_new_tokens,
        "torch_threads": torch.get_num_threads(),
        "slam_jax_first_call_seconds_incl_compile": first_call,
        "jax_devices": len(jax.local_devices()),
    }
    return fns, setup


def summarise(times: dict[str, list[float]], outputs: dict, setup: dict, repeats: int) -> dict:
    reference, ours = "reference_torch_fp32", "slam_jax_transcribe"
    whole = {name: times[name] for name in (reference, ours)}
    implementations = common.audio_rates(whole, setup["audio_seconds"], reference)
    parts = {}
    for prefix, name in (("reference", reference), ("slam_jax", ours)):
        front_end, encoder = (common.median(times[f"{prefix}_{part}"]) for part in ("front_end", "encoder"))
        total = implementations[name]["seconds"]
        parts[prefix] = {"front_end": front_end, "encoder": encoder, "decoder": total - front_end - encoder}
    steps = [len(row) for row in outputs[reference]]
    for figures in parts.values():
        figures["decoder_ms_per_step"] = 1000 * figures["decoder"] / max(max(steps), 1)
    return {
        "benchmark": "transcribe",
        "architecture": "whisper-base sizes, random weights (benchmarks/transcribe.py)",
        "config": {**ARCHITECTURE, "vocab_size": VOCAB_SIZE},
        "repeats": repeats,
        **setup,
        "same_ids": outputs[reference] == outputs[ours],
        "decode_steps": {"longest": max(steps), "per_clip": steps},
        "implementations": implementations,
        "parts_seconds": parts,
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    lines = [
        f"transcribe {result['audio_seconds']:.1f} s of audio ({result['clips']} clips, one batch), "
        f"{result['architecture']}, up to {result['max_new_tokens']} new tokens, median of {result['repeats']}",
        f"same ids: {result['same_ids']}; decode steps {result['decode_steps']['longest']}",
    ]
    for name, figures in result["implementations"].items():
        lines.append(common.audio_rate_line(name, figures))
    for name, parts in result["parts_seconds"].items():
        lines.append(
            f"{name:24s} front end {parts['front_end']:.2f} s, encoder {parts['encoder']:.2f} s, decoder "
            f"{parts['decoder']:.2f} s ({parts['decoder_ms_per_step']:.1f} ms per step)"
        )
    lines.append(f"slam_jax first call incl. compilation: {result['slam_jax_first_call_seconds_incl_compile']:.1f} s")
    lines.append(common.describe(result["machine"]))
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transcribe", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (median reported)")
    parser.add_argument("--clips", type=int, default=8, help="clips of about 9 s, one batch")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="greedy search length limit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.clips < 1 or args.repeats < 1 or args.max_new_tokens < 1:
        print("error: need --clips, --repeats and --max_new_tokens >= 1", file=sys.stderr)
        return 1
    transformers.logging.set_verbosity_error()
    fns, setup = build(args.clips, args.max_new_tokens)
    times, outputs = common.alternate_keeping_outputs(fns, args.repeats)
    result = summarise(times, outputs, setup, args.repeats)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
