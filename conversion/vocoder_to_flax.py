"""Convert a unit HiFi-GAN (textlesslib's / fairseq's CodeHiFiGAN) to a slam_jax vocoder dir.

    python -m conversion.vocoder_to_flax --checkpoint FILE.pt --config FILE.json --out DIR [--overwrite]

The checkpoint is the reference's PyTorch file `{"generator": state_dict}` (e.g. textlesslib's
`hifigan_lj_mhubert_base_25hz.pt`, slamkit's `vocoder_hubert_25`) and the config its JSON
(`hifigan_lj_mhubert_base_25hz_config.json`). The file is read with `torch.load(weights_only=True)` only:
tensors, numbers and containers; a file that needs full unpickling (which runs code from the file) is refused.
torch is imported here only; loading the converted vocoder (`slam_jax.load_vocoder`) needs none.

Weight norm is folded: w = g * v / ||v||, the norm over every axis but the first of the stored tensor, as
torch.nn.utils.weight_norm(dim=0) computes it (the output channels of a Conv1d, the input channels of a
ConvTranspose1d); both storage forms are read (`weight_g`/`weight_v` and
`parametrizations.weight.original0/1`). Every tensor's shape is checked against the config, and a key the
config does not describe is an error, as the reference's strict `load_state_dict` makes it. Each path may be a
bucket URL (the inputs gs:// or s3://, read from a local copy; `--out` gs://, uploaded with its config last).
"""

import argparse
import json
import pickle
import re
import sys
from typing import Any

import numpy as np

from conversion import command
from conversion.safetensors_io import CheckpointError
from slam_jax import paths
from slam_jax.models import vocoder
from slam_jax.paths import Path

# The reference's defaults for keys a config may leave out (textlesslib's CodeGenerator and CodeHiFiGANVocoder).
DEFAULT_MODEL_IN_DIM = 80
DEFAULT_NUM_SPEAKERS = 200
DEFAULT_NUM_STYLES = 100
REQUIRED_KEYS = (
    "num_embeddings",
    "embedding_dim",
    "upsample_rates",
    "upsample_kernel_sizes",
    "upsample_initial_channel",
    "resblock_kernel_sizes",
    "resblock_dilation_sizes",
)
WEIGHT_NORM_NAMES = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def read_config(path: str | Path) -> dict:
    """The reference's JSON config as a dict, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        paths.check_bucket(path)
        raise FileNotFoundError(f"{path}: file not found")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return values


def config_from_textless(values: dict, source: str) -> vocoder.VocoderConfig:
    """The VocoderConfig of a reference config; refuses what the vocoder does not implement."""
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise CheckpointError(f"{source}: missing keys {missing} (the generator needs them)")
    for key, what in (("f0", "F0-conditioned vocoders"), ("embedder_params", "speaker embedders (external vectors)")):
        if values.get(key):
            raise CheckpointError(f"{source}: {key}={values[key]!r}: {what} are not supported")
    durations = values.get("dur_predictor_params") or {}
    if durations:
        _check_duration_params(durations, values["embedding_dim"], source)
    try:
        config = vocoder.VocoderConfig.from_dict(
            {
                **{key: values[key] for key in REQUIRED_KEYS},
                "resblock": str(values.get("resblock", "1")),
                "duration_predictor_dim": durations.get("var_pred_hidden_dim", 0),
                "num_speakers": values.get("num_speakers", DEFAULT_NUM_SPEAKERS) if values.get("multispkr") else 0,
                "num_styles": values.get("num_styles", DEFAULT_NUM_STYLES) if values.get("multistyle") else 0,
                "sampling_rate": values.get("sampling_rate", 16_000),
            },
            source,
        )
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    model_in_dim = values.get("model_in_dim", DEFAULT_MODEL_IN_DIM)
    if model_in_dim != config.input_dim:
        raise CheckpointError(
            f"{source}: model_in_dim={model_in_dim}: the generator's input is embedding_dim={config.embedding_dim} "
            f"per embedding (units, speakers, styles): {config.input_dim}"
        )
    return config


def _check_duration_params(durations: dict, embedding_dim: int, source: str) -> None:
    """The duration predictor reads the unit embedding, with the width-3 convs the reference's padding allows."""
    key = "dur_predictor_params"
    if "var_pred_hidden_dim" not in durations:
        raise CheckpointError(f"{source}: {key} has no var_pred_hidden_dim")
    if durations.get("encoder_embed_dim", embedding_dim) != embedding_dim:
        raise CheckpointError(
            f"{source}: {key}.encoder_embed_dim={durations['encoder_embed_dim']}: "
            f"must equal embedding_dim={embedding_dim}"
        )
    if durations.get("var_pred_kernel_size", vocoder.DURATION_WIDTH) != vocoder.DURATION_WIDTH:
        raise CheckpointError(
            f"{source}: {key}.var_pred_kernel_size={durations['var_pred_kernel_size']}: only "
            f"{vocoder.DURATION_WIDTH} keeps the length (the reference pads its second conv by 1)"
        )


def read_generator(path: str | Path) -> dict[str, np.ndarray]:
    """The float32 tensors of `path`'s `generator` state dict, read with `torch.load(weights_only=True)`."""
    path = Path(path)
    if not path.is_file():
        paths.check_bucket(path)
        raise FileNotFoundError(f"{path}: file not found")
    import torch  # the converter alone reads PyTorch files

    try:
        checkpoint = torch.load(paths.local_copy(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _UNSAFE_GLOBAL.search(str(error))
        if found:
            raise CheckpointError(
                f"{path}: refused: it holds {found.group(1)}, which needs full unpickling, and unpickling runs code "
                "from the file (only tensors, numbers and containers are read: torch.load(weights_only=True))"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_unpickler_reason(error)})") from None
    except Exception as error:  # noqa: BLE001 - any other failure to read becomes one line naming the file
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(error).__name__}: {error})") from None
    generator = checkpoint.get("generator") if isinstance(checkpoint, dict) else None
    if not isinstance(generator, dict):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: no 'generator' state dict (found {found})")
    return {
        name: tensor.detach().float().numpy() for name, tensor in generator.items() if isinstance(tensor, torch.Tensor)
    }


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The one line of torch's long weights-only error that says what it could not read."""
    _, _, reason = str(error).partition("WeightsUnpickler error:")
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    return lines[0] if lines else str(error).splitlines()[0]


class StateDict:
    """The generator's tensors by name: shape-checked reads that name the file, and the names never read."""

    def __init__(self, tensors: dict[str, np.ndarray], source: str):
        self.tensors, self.source, self.used = tensors, source, set()

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            raise CheckpointError(f"{self.source}: generator has no {name!r} (the config needs it)")
        tensor = self.tensors[name]
        if tensor.shape != shape:
            raise CheckpointError(f"{self.source}: {name!r} has shape {tensor.shape}, the config needs {shape}")
        self.used.add(name)
        return tensor

    def weight_normed(self, prefix: str, shape: tuple[int, ...]) -> np.ndarray:
        """The weight of the weight-normed layer `prefix`, folded, in torch's layout `shape`."""
        for g_name, v_name in WEIGHT_NORM_NAMES:
            if f"{prefix}.{v_name}" in self.tensors:
                magnitude = self.get(f"{prefix}.{g_name}", (shape[0],) + (1,) * (len(shape) - 1))
                return fold_weight_norm(magnitude, self.get(f"{prefix}.{v_name}", shape))
        return self.get(f"{prefix}.weight_v", shape)  # names the first storage form in its error

    def unused(self) -> list[str]:
        return sorted(set(self.tensors) - self.used)


def fold_weight_norm(magnitude: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """g * v / ||v||, the norm over every axis of v but the first (torch.nn.utils.weight_norm, dim=0)."""
    v = direction.astype(np.float64)
    norm = np.sqrt(np.sum(np.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))
    return (magnitude.astype(np.float64) * v / norm).astype(np.float32)


def _conv(state: StateDict, prefix: str, in_features: int, out_features: int, width: int) -> dict:
    """A weight-normed Conv1d [out, in, width] as {kernel [width, in, out], bias}."""
    weight = state.weight_normed(prefix, (out_features, in_features, width))
    return {"kernel": weight.transpose(2, 1, 0), "bias": state.get(f"{prefix}.bias", (out_features,))}


def _upsample(state: StateDict, prefix: str, in_features: int, out_features: int, width: int) -> dict:
    """A weight-normed ConvTranspose1d [in, out, width] as {kernel [width, in, out] flipped in time, bias}."""
    weight = state.weight_normed(prefix, (in_features, out_features, width))
    return {"kernel": weight[:, :, ::-1].transpose(2, 0, 1), "bias": state.get(f"{prefix}.bias", (out_features,))}


def _stage(state: StateDict, config: vocoder.VocoderConfig, index: int, first_block: int) -> dict:
    channels = config.stage_channels(index)
    params = {
        "upsample": _upsample(
            state,
            f"ups.{index}",
            config.upsample_initial_channel >> index,
            channels,
            config.upsample_kernel_sizes[index],
        ),
        "resblocks": {},
    }
    for offset, (width, dilations) in enumerate(
        zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)
    ):
        prefix = f"resblocks.{first_block + offset}"
        groups = ("convs1", "convs2") if config.resblock == "1" else ("convs",)
        params["resblocks"][offset] = {
            group: {
                step: _conv(state, f"{prefix}.{group}.{step}", channels, channels, width)
                for step in range(len(dilations))
            }
            for group in groups
        }
    return params


def _duration_predictor(state: StateDict, config: vocoder.VocoderConfig) -> dict:
    """The reference's VariancePredictor: convs as `conv{i}.0` (inside nn.Sequential), norms `ln{i}`, `proj`."""
    dim, hidden, width = config.embedding_dim, config.duration_predictor_dim, vocoder.DURATION_WIDTH
    params = {}
    for index, in_features in ((1, dim), (2, hidden)):
        prefix = f"dur_predictor.conv{index}.0"
        params[f"conv{index}"] = {
            "kernel": state.get(f"{prefix}.weight", (hidden, in_features, width)).transpose(2, 1, 0),
            "bias": state.get(f"{prefix}.bias", (hidden,)),
        }
        params[f"layer_norm{index}"] = {
            "scale": state.get(f"dur_predictor.ln{index}.weight", (hidden,)),
            "bias": state.get(f"dur_predictor.ln{index}.bias", (hidden,)),
        }
    params["proj"] = {
        "kernel": state.get("dur_predictor.proj.weight", (1, hidden)).T,
        "bias": state.get("dur_predictor.proj.bias", (1,)),
    }
    return params


def params_from_textless(tensors: dict[str, np.ndarray], config: vocoder.VocoderConfig, source: str) -> dict[str, Any]:
    """The vocoder's float32 parameter tree from the reference's generator state dict, every tensor checked."""
    state = StateDict(tensors, source)
    dim, blocks = config.embedding_dim, len(config.resblock_kernel_sizes)
    last = len(config.upsample_rates) - 1
    params = {
        "unit_embedding": state.get("dict.weight", (config.num_embeddings, dim)),
        "conv_pre": _conv(state, "conv_pre", config.input_dim, config.upsample_initial_channel, vocoder.EDGE_WIDTH),
        "stages": {index: _stage(state, config, index, index * blocks) for index in range(last + 1)},
        "conv_post": _conv(state, "conv_post", config.stage_channels(last), 1, vocoder.EDGE_WIDTH),
    }
    if config.num_speakers:
        params["speaker_embedding"] = state.get("spkr.weight", (config.num_speakers, dim))
    if config.num_styles:
        params["style_embedding"] = state.get("style.weight", (config.num_styles, dim))
    if config.duration_predictor_dim:
        params["duration_predictor"] = _duration_predictor(state, config)
    unused = state.unused()
    if unused:
        raise CheckpointError(f"{source}: {len(unused)} tensors the config does not describe: {unused[:3]}")
    vocoder.check_shapes(config, params)
    return params


def convert(checkpoint: str | Path, config: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Convert the reference's `checkpoint` (.pt) with its JSON `config` into a slam_jax vocoder dir at `out`."""
    paths.check_array_storage(out, "vocoder weights")
    command.refuse_non_empty(out, overwrite, inputs=[checkpoint, config])
    vocoder_config = config_from_textless(read_config(config), source=str(config))
    params = params_from_textless(read_generator(checkpoint), vocoder_config, source=str(checkpoint))
    return vocoder.save_vocoder(out, vocoder_config, params, overwrite=overwrite)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m conversion.vocoder_to_flax",
        description="Convert a unit HiFi-GAN (CodeHiFiGAN .pt + JSON config) to a slam_jax vocoder dir.",
    )
    parser.add_argument("--checkpoint", required=True, help='the PyTorch file {"generator": state_dict}')
    parser.add_argument("--config", required=True, help="its JSON config")
    parser.add_argument("--out", required=True, help="output vocoder dir (must be empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return command.finish(lambda: convert(args.checkpoint, args.config, args.out, overwrite=args.overwrite), summary)


def summary(out: Path) -> str:
    """What `wrote OUT` is followed by: the converted vocoder's shape."""
    config = vocoder.VocoderConfig.load(out / vocoder.CONFIG_FILE)
    durations = "a duration predictor" if config.duration_predictor_dim else "no duration predictor"
    return (
        f": {config.num_embeddings} units, {len(config.upsample_rates)} stages, {config.hop_length} samples per "
        f"frame at {config.sampling_rate} Hz, {durations}"
    )


if __name__ == "__main__":
    sys.exit(main())
