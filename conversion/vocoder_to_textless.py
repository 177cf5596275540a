"""Export a slam_jax vocoder dir to the unit HiFi-GAN layout of textlesslib / fairseq (CodeHiFiGAN).

    python -m conversion.vocoder_to_textless --vocoder DIR --out DIR [--overwrite]

The inverse of `conversion/vocoder_to_flax.py`. `--out` gets two files: `generator.pt`, the PyTorch file
`{"generator": state_dict}` (float32 tensors named as the reference's CodeGenerator names them), and
`config.json`, its JSON config (the keys `vocoder_to_flax` reads, plus `dur_predictor_params` for a duration
predictor). textlesslib's `CodeHiFiGANVocoder(checkpoint, config)` loads them, given the two paths, as does
`python -m conversion.vocoder_to_flax` (back to the same parameters). textlesslib and fairseq build residual
blocks of type 1 only; the generator of a type-2 vocoder loads into the original HiFi-GAN `Generator` (`resblock`
"2", its first conv reading `model_in_dim` channels).

The generator's convolutions are weight-normed in the reference, which loads the state dict into weight-normed
modules and then calls `remove_weight_norm`: each is written as `weight_v`, the weight itself in torch's layout
(Conv1d [out, in, width]; ConvTranspose1d [in, out, width], our upsampling kernels un-flipped in time), and
`weight_g` [dim0, 1, 1], its norm over every axis but the first, so that g * v / ||v|| is the weight again.
`textless_from_params` is the mapping alone, on numpy arrays: a training job may export without torch until the
final `torch.save` (`write_textless`, the one place that imports torch). The vocoder may be on gs:// (Orbax reads
it there), `--out` on gs:// or s3:// (staged locally, uploaded with config.json last).
"""

import argparse
import json
import sys
from typing import Any

import numpy as np

from conversion import command
from slam_jax import paths
from slam_jax.files import atomic_dir
from slam_jax.models import vocoder, weights
from slam_jax.paths import Path

CHECKPOINT_FILE = "generator.pt"
CONFIG_FILE = "config.json"
DURATION_DROPOUT = 0.5  # the reference's var_pred_dropout (training only; inference ignores it)
DURATION_WEIGHT = 1.0  # the reference's dur_prediction_weight (a training key of its configs)


def _array(value) -> np.ndarray:
    """A float32, C-ordered, writable copy (arrays read from jax are read-only, which torch warns about)."""
    return np.array(value, np.float32, order="C")


def weight_norm_pair(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weight_g, weight_v) of a torch-layout weight: g [dim0, 1, ...] its norm over every axis but the first, v
    the weight itself; a row of zeros gets v = 1 (g = 0 still makes it zero, where v = 0 would make 0 / 0)."""
    weight = _array(weight)
    norm = np.sqrt(np.sum(np.square(weight.astype(np.float64)), axis=tuple(range(1, weight.ndim)), keepdims=True))
    return norm.astype(np.float32), _array(np.where(norm > 0, weight, 1.0))


def _weight_normed(prefix: str, weight: np.ndarray, bias) -> dict[str, np.ndarray]:
    magnitude, direction = weight_norm_pair(weight)
    return {f"{prefix}.weight_g": magnitude, f"{prefix}.weight_v": direction, f"{prefix}.bias": _array(bias)}


def conv_tensors(prefix: str, params: dict) -> dict[str, np.ndarray]:
    """A Conv {kernel [width, in, out], bias} as the reference's weight-normed Conv1d (weight [out, in, width])."""
    return _weight_normed(prefix, np.asarray(params["kernel"]).transpose(2, 1, 0), params["bias"])


def upsample_tensors(prefix: str, params: dict) -> dict[str, np.ndarray]:
    """An Upsample {kernel [width, in, out] flipped in time, bias} as the reference's weight-normed
    ConvTranspose1d (weight [in, out, width], in time order)."""
    return _weight_normed(prefix, np.asarray(params["kernel"])[::-1].transpose(1, 2, 0), params["bias"])


def stage_tensors(params: dict, config: vocoder.VocoderConfig, index: int) -> dict[str, np.ndarray]:
    """Stage `index`: `ups.{index}` and its residual blocks, numbered `resblocks.{index * blocks + j}`."""
    tensors = upsample_tensors(f"ups.{index}", params["upsample"])
    blocks = len(config.resblock_kernel_sizes)
    for offset, block in params["resblocks"].items():
        for group, convs in block.items():
            for step, conv in convs.items():
                tensors.update(conv_tensors(f"resblocks.{index * blocks + int(offset)}.{group}.{step}", conv))
    return tensors


def duration_tensors(params: dict) -> dict[str, np.ndarray]:
    """The reference's VariancePredictor: convs `conv{i}.0` (inside nn.Sequential, no weight norm), norms
    `ln{i}`, the linear head `proj` (weight [1, hidden])."""
    tensors = {}
    for index in (1, 2):
        conv, norm = params[f"conv{index}"], params[f"layer_norm{index}"]
        tensors[f"dur_predictor.conv{index}.0.weight"] = _array(np.asarray(conv["kernel"]).transpose(2, 1, 0))
        tensors[f"dur_predictor.conv{index}.0.bias"] = _array(conv["bias"])
        tensors[f"dur_predictor.ln{index}.weight"] = _array(norm["scale"])
        tensors[f"dur_predictor.ln{index}.bias"] = _array(norm["bias"])
    tensors["dur_predictor.proj.weight"] = _array(np.asarray(params["proj"]["kernel"]).T)
    tensors["dur_predictor.proj.bias"] = _array(params["proj"]["bias"])
    return tensors


def textless_config(config: vocoder.VocoderConfig) -> dict[str, Any]:
    """The reference's JSON config of `config` (the keys `vocoder_to_flax.config_from_textless` reads)."""
    values: dict[str, Any] = {
        "resblock": config.resblock,
        "num_embeddings": config.num_embeddings,
        "embedding_dim": config.embedding_dim,
        "model_in_dim": config.input_dim,
        "upsample_rates": list(config.upsample_rates),
        "upsample_kernel_sizes": list(config.upsample_kernel_sizes),
        "upsample_initial_channel": config.upsample_initial_channel,
        "resblock_kernel_sizes": list(config.resblock_kernel_sizes),
        "resblock_dilation_sizes": [list(dilations) for dilations in config.resblock_dilation_sizes],
        "sampling_rate": config.sampling_rate,
    }
    if config.num_speakers:
        values.update(multispkr=True, num_speakers=config.num_speakers)
    if config.num_styles:
        values.update(multistyle=True, num_styles=config.num_styles)
    if config.duration_predictor_dim:
        values["dur_predictor_params"] = {
            "encoder_embed_dim": config.embedding_dim,
            "var_pred_hidden_dim": config.duration_predictor_dim,
            "var_pred_kernel_size": vocoder.DURATION_WIDTH,
            "var_pred_dropout": DURATION_DROPOUT,
        }
        values["dur_prediction_weight"] = DURATION_WEIGHT
    return values


def textless_from_params(
    params: dict[str, Any], config: vocoder.VocoderConfig
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The reference's generator state dict (float32 numpy tensors by name) and JSON config of the vocoder
    parameter tree `params` (as `vocoder.get_params` gives it) with `config`; a tree that does not fit `config`
    is a one-line ValueError."""
    vocoder.check_shapes(config, params)
    last = len(config.upsample_rates) - 1
    tensors = conv_tensors("conv_pre", params["conv_pre"])
    for index in range(last + 1):
        tensors.update(stage_tensors(params["stages"][index], config, index))
    tensors.update(conv_tensors("conv_post", params["conv_post"]))
    tensors["dict.weight"] = _array(params["unit_embedding"])
    if config.num_speakers:
        tensors["spkr.weight"] = _array(params["speaker_embedding"])
    if config.num_styles:
        tensors["style.weight"] = _array(params["style_embedding"])
    if config.duration_predictor_dim:
        tensors.update(duration_tensors(params["duration_predictor"]))
    return tensors, textless_config(config)


def write_textless(folder: Path, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
    """`folder/generator.pt` = torch.save({"generator": tensors}), then `folder/config.json`."""
    import torch  # the export's last step alone writes PyTorch files

    state = {name: torch.from_numpy(np.array(tensor, np.float32, order="C")) for name, tensor in tensors.items()}
    torch.save({"generator": state}, folder / CHECKPOINT_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def export(vocoder_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the slam_jax vocoder at `vocoder_dir` to `out` as the reference's generator.pt + config.json."""
    command.refuse_non_empty(out, overwrite, inputs=[vocoder_dir])
    model = weights.load_model(vocoder.FAMILY, vocoder_dir)
    if model.config.resblock != "1":
        command.note(
            f"{vocoder_dir}: resblock type {model.config.resblock}: textlesslib's and fairseq's CodeHiFiGAN build "
            "type 1 only; the original HiFi-GAN Generator loads this one"
        )
    tensors, config = textless_from_params(vocoder.get_params(model), model.config)
    with atomic_dir(out, overwrite, [vocoder_dir]) as staging:
        write_textless(staging, tensors, config)  # local: uploaded with config.json last
    return paths.absolute(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m conversion.vocoder_to_textless",
        description="Export a slam_jax vocoder dir to a unit HiFi-GAN (CodeHiFiGAN generator.pt + config.json).",
    )
    parser.add_argument("--vocoder", required=True, help="the slam_jax vocoder dir (vocoder_config.json + params/)")
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return command.finish(lambda: export(args.vocoder, args.out, overwrite=args.overwrite), summary)


def summary(out: Path) -> str:
    """What `wrote OUT` is followed by: the exported files and the vocoder's shape."""
    config = json.loads((Path(out) / CONFIG_FILE).read_text())
    durations = "a duration predictor" if config.get("dur_predictor_params") else "no duration predictor"
    return (
        f" ({CHECKPOINT_FILE} + {CONFIG_FILE}): {config['num_embeddings']} units, resblock type {config['resblock']}, "
        f"{durations}"
    )


if __name__ == "__main__":
    sys.exit(main())
