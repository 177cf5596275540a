"""Speech tokeniser throughput: slam_jax (HuBERT in JAX + k-means) against the reference approach, same run.

    python -m benchmarks.tokenize [--json] [--repeats 3] [--clips 16] [--dtypes float32,bfloat16]

The mHuBERT-25Hz architecture (12 layers x 768, 8 conv layers, 640 samples = 40 ms per frame) with random
weights: transformers' HubertModel (seeded init) is the reference, and the same weights converted by
conversion.hubert_to_flax run in slam_jax. The 500 centroids are frames of the model's own layer-11 features.
The audio: `--clips` clips of 2 to 16 s (noise at speech level), in memory at 16 kHz; audio reading is not
timed (the pipeline does it on CPU threads beside the encoder).

- reference: slamkit's extraction: clips longest first, batches of 8 padded to the longest, 40 zeros per side,
  `HubertModel(..., output_hidden_states=True).hidden_states[11]` in float32 under `torch.inference_mode()`,
  then scikit-learn `KMeans.predict`, each row trimmed to ceil(n / longest * frames).
- slam_jax: the encoder `mode: tokenize` builds from configs/tokenize.py (`tokenize.build_encoder`): batches
  of 8, on a CPU in steps of 2 similar-length rows (`tokenize.micro_batch`) each padded only to its own
  length bucket (`tokenize.buckets_per_octave`), each clip padded by 40 zeros per side and masked, only
  layers 1-11 run (unrolled: `tokenize.scan_layers`), the conv front end in 1 s windows on a CPU
  (`tokenize.conv_chunk_frames`), and the k-means assignment in the same jit;
  compilation (once per bucket) happens in a first pass reported apart. `--dtypes` picks the compute dtypes (float32 by
  default: bfloat16 only pays where the hardware has bf16 matmuls).
Every implementation runs once to warm up, then in alternating rounds; the median round is reported, with
audio seconds per second, the ratio to the reference, and the share of frames whose unit equals the
reference's: masked units differ where the reference's unmasked padding shifts its features, so one untimed
float32 pass with `reference_padding` (the reference's batches reproduced) shows the encoder itself agrees.
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
from sklearn.cluster import KMeans

from benchmarks import common
from configs import tokenize as tokenize_config
from conversion import hubert_to_flax
from slam_jax.models import hubert
from slam_jax.paths import Path
from slam_jax.speech import encoder as unit_encoder
from slam_jax.speech import tokenize
from slam_jax.speech.tokenize import conv_chunk_frames, micro_batch

LAYER = 11
NUM_UNITS = 500
BATCH = 8
SAMPLE_RATE = 16_000
REFERENCE_PADDING = 40


def reference_model(seed: int = 0) -> transformers.HubertModel:
    """transformers' HubertModel with mHuBERT-25Hz's shapes and seeded random weights, in eval mode."""
    config = transformers.HubertConfig(
        conv_dim=[512] * 8, conv_stride=[5, 2, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2, 2]
    )
    torch.manual_seed(seed)
    return transformers.HubertModel(config).eval()


def clips(count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` clips of 2 to 16 s, longest first (as the reference sorts them)."""
    rng = np.random.default_rng(seed)
    lengths = sorted((round(rng.uniform(2.0, 16.0) * SAMPLE_RATE) for _ in range(count)), reverse=True)
    return [(0.1 * rng.standard_normal(length)).astype(np.float32) for length in lengths]


def batches(items: list, size: int = BATCH) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def reference_features(model: transformers.HubertModel, batch: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """slamkit's `HubertFeatureExtractor.extract` up to the clustering: features and frames kept per row."""
    lengths = torch.tensor([len(wave) for wave in batch])
    padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(wave) for wave in batch], batch_first=True)
    with torch.inference_mode():
        outputs = model(
            torch.nn.functional.pad(padded, (REFERENCE_PADDING, REFERENCE_PADDING)), output_hidden_states=True
        )
    features = outputs.hidden_states[LAYER].numpy()
    keep = ((lengths.float() / padded.shape[1]) * features.shape[1]).ceil().int().tolist()
    return features, keep


def reference_units(model, kmeans: KMeans, waves: list[np.ndarray]) -> list[np.ndarray]:
    """Units of every clip the reference's way: batch, encode, `KMeans.predict` on [B * T, C], trim."""
    result = []
    for batch in batches(waves):
        features, keep = reference_features(model, batch)
        rows, frames, dim = features.shape
        labels = kmeans.predict(features.reshape(rows * frames, dim)).reshape(rows, frames)
        result += [labels[row, : keep[row]] for row in range(rows)]
    return result


def settings(encoder_dir: Path, dtype: str, **overrides) -> tokenize.TokenizeSettings:
    """configs/tokenize.py's `tokenize` section (what `mode: tokenize` runs) for the converted encoder."""
    values = tokenize.TokenizeSettings.from_config(tokenize_config.get_config().tokenize, "tokenize")
    return values.replace(
        encoder_path=str(encoder_dir), layer=LAYER, compute_dtype=dtype, batch_size=BATCH, **overrides
    )


def sklearn_kmeans(centroids: np.ndarray) -> KMeans:
    """A fitted scikit-learn KMeans whose centres are `centroids` (one Lloyd step on the centroids themselves)."""
    return KMeans(len(centroids), init=centroids, n_init=1, max_iter=1).fit(centroids)


def ours(encoder: unit_encoder.UnitEncoder, waves: list[np.ndarray]) -> list[np.ndarray]:
    return [units for batch in batches(waves, encoder.rows) for units in encoder.encode(batch)]


def build(count: int, dtypes: list[str]) -> tuple[dict[str, Callable[[], list]], dict]:
    """Every timed function by name and facts about the set-up (compile seconds, audio seconds, ...)."""
    torch.set_num_threads(os.cpu_count())
    model = reference_model()
    waves = clips(count)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(Path(folder) / "hf")
        converted = hubert_to_flax.convert(Path(folder) / "hf", Path(folder) / "flax")
        encoders = {dtype: tokenize.build_encoder(settings(converted, dtype)) for dtype in dtypes}
        faithful = tokenize.build_encoder(settings(converted, "float32", reference_padding=True))
    features, keep = reference_features(model, waves[-BATCH:])
    frames = np.concatenate([features[row, : keep[row]] for row in range(len(keep))])
    centroids = frames[np.random.default_rng(0).choice(len(frames), NUM_UNITS, replace=len(frames) < NUM_UNITS)]
    kmeans = sklearn_kmeans(centroids)
    fns = {"reference_torch_fp32_sklearn": lambda: reference_units(model, kmeans, waves)}
    compile_seconds = {}
    for dtype in dtypes:
        encoder = encoders[dtype]
        encoder.set_centroids(centroids)
        start = time.perf_counter()
        ours(encoder, waves)  # compiles every length bucket
        compile_seconds[f"slam_jax_{dtype}"] = time.perf_counter() - start
        fns[f"slam_jax_{dtype}"] = lambda encoder=encoder: ours(encoder, waves)
    faithful.set_centroids(centroids)
    defaults = tokenize_config.get_config().tokenize
    setup = {
        "reference_padding_units": ours(faithful, waves),
        "audio_seconds": sum(len(wave) for wave in waves) / SAMPLE_RATE,
        "clips": len(waves),
        "torch_threads": torch.get_num_threads(),
        "first_pass_seconds_incl_compile": compile_seconds,
        "devices": [str(device) for device in encoder.mesh.devices.flat],
        "slam_jax_micro_batch": micro_batch(0, jax.local_devices()),
        "slam_jax_conv_chunk_frames": conv_chunk_frames(defaults["conv_chunk_frames"], jax.local_devices()),
        "slam_jax_settings": {key: defaults[key] for key in ("buckets_per_octave", "scan_layers", "conv_chunk_frames")},
    }
    return fns, setup


def agreement(outputs: dict[str, list[np.ndarray]], reference: str) -> dict[str, float]:
    """Share of frames whose unit equals the reference's (over the frames both keep)."""
    result = {}
    for name, units in outputs.items():
        pairs = [
            (a[: min(len(a), len(b))], b[: min(len(a), len(b))]) for a, b in zip(units, outputs[reference], strict=True)
        ]
        result[name] = float(sum(np.sum(a == b) for a, b in pairs) / sum(len(a) for a, _ in pairs))
    return result


def summarise(times: dict[str, list[float]], outputs: dict[str, list], setup: dict, repeats: int) -> dict:
    reference = "reference_torch_fp32_sklearn"
    implementations = common.audio_rates(times, setup["audio_seconds"], reference)
    for name, share in agreement(outputs, reference).items():
        implementations[name]["frames_equal_to_reference"] = share
    faithful = {"check": setup.pop("reference_padding_units"), reference: outputs[reference]}
    return {
        "slam_jax_float32_reference_padding_frames_equal_to_reference": agreement(faithful, reference)["check"],
        "benchmark": "tokenize",
        "architecture": "mhubert-base-25hz (random weights)",
        "layer": LAYER,
        "num_units": NUM_UNITS,
        "batch": BATCH,
        "repeats": repeats,
        **setup,
        "implementations": implementations,
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    lines = [
        f"tokenise {result['audio_seconds']:.1f} s of audio ({result['clips']} clips), {result['architecture']}, "
        f"layer {result['layer']}, {result['num_units']} units, batch {result['batch']}, median of {result['repeats']}"
    ]
    for name, figures in result["implementations"].items():
        equal = figures["frames_equal_to_reference"]
        lines.append(f"{common.audio_rate_line(name, figures, 30)}  units equal to the reference's {equal:.1%}")
    lines.append(f"first pass incl. compilation: {result['first_pass_seconds_incl_compile']}")
    share = result["slam_jax_float32_reference_padding_frames_equal_to_reference"]
    lines.append(f"slam_jax float32 with reference_padding (untimed): units equal to the reference's {share:.2%}")
    machine = result["machine"]
    lines.append(f"machine: {machine['cpu_model']}, {machine['cores']} cores, load average {machine['load_average']}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tokenize", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (median reported)")
    parser.add_argument("--clips", type=int, default=16, help="clips of 2-16 s per round (16 = two full batches)")
    parser.add_argument("--dtypes", default="float32", help="slam_jax compute dtypes, comma-separated")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtypes = [dtype.strip() for dtype in args.dtypes.split(",") if dtype.strip()]
    if args.clips < 1 or not dtypes or not set(dtypes) <= set(hubert.COMPUTE_DTYPES):
        print(f"error: need --clips >= 1 and --dtypes from {hubert.COMPUTE_DTYPES}", file=sys.stderr)
        return 1
    fns, setup = build(args.clips, dtypes)
    times, outputs = common.alternate_keeping_outputs(fns, args.repeats)
    result = summarise(times, outputs, setup, args.repeats)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
