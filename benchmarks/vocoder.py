"""Unit vocoder throughput: slam_jax's CodeHiFiGAN against the PyTorch HiFi-GAN generator, same units, same run.

    python -m benchmarks.vocoder [--json] [--repeats 3] [--clips 8]

The architecture is a 16 kHz CodeHiFiGAN for 25 Hz units (`ARCHITECTURE`): speech-resynthesis's HuBERT unit
vocoder (512 channels, residual blocks of widths 3, 7, 11 and dilations 1, 3, 5, 128-wide embeddings and
duration predictor) with upsampling rates 5, 4, 4, 4, 2 for 640 samples per unit frame; the released
mhubert-base-25hz config is not available offline, so its exact rates and widths are assumed. Weights are random
(see `reference_generator`).
The units: `--clips` clips of 2 to 16 s of random unit ids at 25 per second, one frame each (durations given).

- reference: textlesslib's inference path: the unit embedding, then the HiFi-GAN generator (the pip package
  `hifi-gan`'s `Generator` with its first conv widened to the embedding, as textlesslib's CodeGenerator builds
  it), weight norm removed, float32 under `torch.inference_mode()`, one clip per call as CodeHiFiGANVocoder
  does.
- slam_jax: the same weights saved in the reference's layout (`{"generator": state_dict}` with weight norm, and
  the JSON config), converted by `conversion.vocoder_to_flax` and loaded by `slam_jax.load_vocoder`:
  `vocode_batch` (clips batched by length, padded and masked) and `vocode` clip by clip. The first pass, which
  compiles every length bucket, is reported apart.
Implementations alternate in rounds after one warm-up each; medians reported, with audio seconds per second and
the largest difference from the reference's samples. On a machine with a GPU both run on it.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
from hifi_gan.models import Generator
from torch.nn.utils import weight_norm

import slam_jax
from benchmarks import common
from conversion import vocoder_to_flax
from slam_jax.paths import Path

ARCHITECTURE = {
    "resblock": "1",
    "upsample_rates": [5, 4, 4, 4, 2],
    "upsample_kernel_sizes": [11, 8, 8, 8, 4],
    "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_embeddings": 500,
    "embedding_dim": 128,
    "model_in_dim": 128,
    "dur_predictor_params": {
        "encoder_embed_dim": 128,
        "var_pred_hidden_dim": 128,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    "sampling_rate": 16_000,
}
UNITS_PER_SECOND = 25
SECONDS = (2.0, 16.0)


def reference_generator(config: dict, seed: int = 0) -> torch.nn.Module:
    """HiFi-GAN's `Generator` (weight-normed) whose first conv reads `model_in_dim` channels, with random weights of
    about unit gain (magnitudes U(0.7, 1.3), directions N(0, 1), biases N(0, 0.1)): its output is speech-loud
    (RMS about 0.2) and unsaturated, unlike the tiny signal of the training init (std 0.01)."""
    torch.manual_seed(seed)
    generator = Generator(SimpleNamespace(**config))
    width = config["upsample_initial_channel"]
    generator.conv_pre = weight_norm(torch.nn.Conv1d(config["model_in_dim"], width, 7, 1, padding=3))
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith("weight_g"):
                parameter.uniform_(0.7, 1.3)
            elif name.endswith("weight_v"):
                parameter.normal_()
            else:
                parameter.normal_(0.0, 0.1)
    return generator.eval()


def reference_state(generator: torch.nn.Module, config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """The generator's state dict plus the unit embedding and duration predictor, named as textlesslib's."""
    rng = torch.Generator().manual_seed(seed)
    dim, hidden = config["embedding_dim"], config["dur_predictor_params"]["var_pred_hidden_dim"]
    shapes = {
        "dict.weight": (config["num_embeddings"], dim),
        "dur_predictor.conv1.0.weight": (hidden, dim, 3),
        "dur_predictor.conv1.0.bias": (hidden,),
        "dur_predictor.ln1.weight": (hidden,),
        "dur_predictor.ln1.bias": (hidden,),
        "dur_predictor.conv2.0.weight": (hidden, hidden, 3),
        "dur_predictor.conv2.0.bias": (hidden,),
        "dur_predictor.ln2.weight": (hidden,),
        "dur_predictor.ln2.bias": (hidden,),
        "dur_predictor.proj.weight": (1, hidden),
        "dur_predictor.proj.bias": (1,),
    }
    extra = {name: torch.randn(shape, generator=rng) for name, shape in shapes.items()}
    return {**generator.state_dict(), **extra}


def clips(count: int, num_units: int, seed: int = 0) -> list[np.ndarray]:
    """`count` unit sequences of 2 to 16 s at 25 units per second."""
    rng = np.random.default_rng(seed)
    lengths = [round(rng.uniform(*SECONDS) * UNITS_PER_SECOND) for _ in range(count)]
    return [rng.integers(0, num_units, length) for length in lengths]


def reference_waveforms(generator, embedding: torch.Tensor, units: list[np.ndarray], device: str) -> list[np.ndarray]:
    """The reference's waveforms, one clip per call."""
    waves = []
    with torch.inference_mode():
        for ids in units:
            features = embedding[torch.from_numpy(ids).to(device)].T[None]
            waves.append(generator(features)[0, 0])
        common.torch_sync(device)
    return [wave.cpu().numpy() for wave in waves]


def build(count: int) -> tuple[dict[str, Callable[[], list]], dict]:
    """Every timed function by name and facts about the set-up (compile seconds, audio seconds, ...)."""
    torch.set_num_threads(os.cpu_count())
    device = common.torch_device()
    generator = reference_generator(ARCHITECTURE)
    state = reference_state(generator, ARCHITECTURE)
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"generator": state}, Path(folder) / "generator.pt")
        (Path(folder) / "config.json").write_text(json.dumps(ARCHITECTURE))
        out = vocoder_to_flax.convert(Path(folder) / "generator.pt", Path(folder) / "config.json", Path(folder) / "out")
        vocoder = slam_jax.load_vocoder(out)
    with contextlib.redirect_stdout(io.StringIO()):  # the reference prints "Removing weight norm..."
        generator.remove_weight_norm()
    generator = generator.to(device)
    embedding = state["dict.weight"].to(device)
    units = clips(count, ARCHITECTURE["num_embeddings"])
    fns = {
        "reference_torch_fp32": lambda: reference_waveforms(generator, embedding, units, device),
        "slam_jax_vocode_batch": lambda: vocoder.vocode_batch(units),
        "slam_jax_vocode": lambda: [vocoder.vocode(ids) for ids in units],
    }
    first_pass = {}
    for name in ("slam_jax_vocode_batch", "slam_jax_vocode"):
        start = time.perf_counter()
        fns[name]()  # compiles every length bucket
        first_pass[name] = time.perf_counter() - start
    setup = {
        "audio_seconds": sum(len(ids) for ids in units) / UNITS_PER_SECOND,
        "clips": len(units),
        "torch_threads": torch.get_num_threads(),
        "first_pass_seconds_incl_compile": first_pass,
        "slam_jax_batch_size": vocoder.batch_size,
    }
    return fns, setup


def summarise(times: dict[str, list[float]], outputs: dict[str, list], setup: dict, repeats: int) -> dict:
    reference = "reference_torch_fp32"
    implementations = common.audio_rates(times, setup["audio_seconds"], reference)
    for name, figures in implementations.items():
        pairs = zip(outputs[name], outputs[reference], strict=True)
        figures["max_abs_difference_from_reference"] = max(float(np.max(np.abs(a - b))) for a, b in pairs)
    samples = np.concatenate(outputs[reference])
    return {
        "benchmark": "vocoder",
        "architecture": "CodeHiFiGAN, 25 Hz units -> 16 kHz (random weights; shape in benchmarks/vocoder.py)",
        "config": ARCHITECTURE,
        "repeats": repeats,
        "reference_rms": float(np.sqrt(np.mean(np.square(samples)))),
        **setup,
        "implementations": implementations,
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    lines = [
        f"vocode {result['audio_seconds']:.1f} s of audio ({result['clips']} clips), {result['architecture']}, "
        f"median of {result['repeats']}"
    ]
    for name, figures in result["implementations"].items():
        difference = figures["max_abs_difference_from_reference"]
        lines.append(f"{common.audio_rate_line(name, figures)}  max |diff| {difference:.1e}")
    lines.append(f"first pass incl. compilation: {result['first_pass_seconds_incl_compile']}")
    lines.append(common.describe(result["machine"]))
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vocoder", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (median reported)")
    parser.add_argument("--clips", type=int, default=8, help="clips of 2-16 s per round")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.clips < 1 or args.repeats < 1:
        print("error: need --clips >= 1 and --repeats >= 1", file=sys.stderr)
        return 1
    fns, setup = build(args.clips)
    times, outputs = common.alternate_keeping_outputs(fns, args.repeats)
    result = summarise(times, outputs, setup, args.repeats)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
