"""Convert an HF Whisper checkpoint (e.g. openai/whisper-large-v3-turbo) to a slam_jax Whisper model folder.

    python -m conversion.whisper_to_flax --model DIR_OR_HUB_ID --out DIR [--overwrite]

Reads safetensors with numpy (no torch), builds the config from config.json (refusing other model types and
what the JAX model does not implement), checks every tensor's shape, and writes, atomically,
`whisper_config.json` + Orbax `params/` + `provenance.json` + the source's tokenizer files,
`generation_config.json` and `preprocessor_config.json` (what `slam_jax.speech.asr.load_asr` reads). Tensors
are those of `WhisperForConditionalGeneration` (under `model.`) or of a bare `WhisperModel`; the output head is
the token embedding (a stored `proj_out.weight` must equal it), and any other tensor is an error. `--model` and
`--out` may be bucket URLs (gs://; --model also s3://): see `hf_to_flax`.
"""

import shutil
import sys
from typing import Any

import numpy as np

from conversion import command, hf_to_flax
from conversion.qwen2_hf import read_config_json
from conversion.safetensors_io import CheckpointError, CheckpointReader
from slam_jax import paths
from slam_jax.files import atomic_dir, refuse_overlap
from slam_jax.models import weights, whisper
from slam_jax.paths import Path
from slam_jax.speech import asr

MODEL_TYPE = "whisper"
HEAD = "proj_out.weight"
PREFIX = "model."
REQUIRED_FILES = (asr.GENERATION_CONFIG, asr.PREPROCESSOR_CONFIG)
COPIED_FILES = REQUIRED_FILES + asr.TOKENIZER_FILES
# transformers' WhisperConfig defaults: its config.json leaves out the values equal to them.
HF_DEFAULTS = {
    "vocab_size": 51865,
    "num_mel_bins": 80,
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_layers": 4,
    "decoder_attention_heads": 6,
    "decoder_ffn_dim": 1536,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "scale_embedding": False,
}

ATTENTION = (  # (Flax path inside the attention, HF name inside it, transposed?)
    (("q_proj", "kernel"), "q_proj.weight", True),
    (("q_proj", "bias"), "q_proj.bias", False),
    (("k_proj", "kernel"), "k_proj.weight", True),
    (("v_proj", "kernel"), "v_proj.weight", True),
    (("v_proj", "bias"), "v_proj.bias", False),
    (("out_proj", "kernel"), "out_proj.weight", True),
    (("out_proj", "bias"), "out_proj.bias", False),
)
NORM = ((("scale",), "weight", False), (("bias",), "bias", False))
MLP = (
    (("mlp", "fc1", "kernel"), "fc1.weight", True),
    (("mlp", "fc1", "bias"), "fc1.bias", False),
    (("mlp", "fc2", "kernel"), "fc2.weight", True),
    (("mlp", "fc2", "bias"), "fc2.bias", False),
)


def _inside(module: str, table) -> tuple:
    return tuple(((module, *path), f"{module}.{name}", transposed) for path, name, transposed in table)


ENCODER_LAYER = (
    _inside("self_attn", ATTENTION) + _inside("self_attn_layer_norm", NORM) + MLP + _inside("final_layer_norm", NORM)
)
DECODER_LAYER = ENCODER_LAYER + _inside("encoder_attn", ATTENTION) + _inside("encoder_attn_layer_norm", NORM)


def config_from_hf(hf_config: dict, source: str) -> whisper.WhisperConfig:
    """The WhisperConfig of a transformers Whisper config dict; refuses what the JAX model does not implement."""
    if hf_config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{source}: model_type {hf_config.get('model_type')!r} is not {MODEL_TYPE!r}")
    if hf_config.get("activation_function", "gelu") != "gelu":
        raise CheckpointError(f"{source}: activation_function {hf_config['activation_function']!r} is not 'gelu'")
    if not hf_config.get("tie_word_embeddings", True):
        raise CheckpointError(f"{source}: tie_word_embeddings=false: the output head must be the token embedding")
    values = {key: hf_config.get(key, default) for key, default in HF_DEFAULTS.items()}
    try:
        return whisper.WhisperConfig.from_dict(values, source)
    except ValueError as error:
        raise CheckpointError(str(error)) from None


class Tensors:
    """The checkpoint's tensors by HF name (prefix included): float32 reads with shapes checked, and the names
    never read."""

    def __init__(self, reader: CheckpointReader, prefix: str):
        self.reader, self.prefix, self.used = reader, prefix, set()

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        full = self.prefix + name
        self.used.add(full)
        return np.asarray(self.reader.get(full, shape), np.float32)

    def unused(self) -> list[str]:
        return sorted(set(self.reader.keys()) - self.used)


def _stacked(tensors: Tensors, stack: str, table, count: int, shapes: dict) -> dict:
    """Every layer tensor of `stack` ("encoder" or "decoder") stacked on a leading layer axis, kernels [in, out]."""
    stacked: dict = {}
    for path, name, transposed in table:
        shape = _lookup(shapes, path).shape[1:]
        hf_shape = shape[::-1] if transposed else shape
        layers = [tensors.get(f"{stack}.layers.{i}.{name}", hf_shape) for i in range(count)]
        node = stacked
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.stack([tensor.T if transposed else tensor for tensor in layers])
    return stacked


def _lookup(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _norm(tensors: Tensors, name: str, width: int) -> dict:
    return {"scale": tensors.get(f"{name}.weight", (width,)), "bias": tensors.get(f"{name}.bias", (width,))}


def _conv(tensors: Tensors, name: str, in_features: int, out_features: int) -> dict:
    """A Conv1d [out, in, width] as {kernel [width, in, out], bias}."""
    weight = tensors.get(f"{name}.weight", (out_features, in_features, whisper.CONV_WIDTH))
    return {"kernel": weight.transpose(2, 1, 0), "bias": tensors.get(f"{name}.bias", (out_features,))}


def params_from_hf(reader: CheckpointReader, config: whisper.WhisperConfig) -> dict[str, Any]:
    """The float32 parameter tree of the Whisper in `reader`, every tensor's shape checked, none left over."""
    tensors = Tensors(reader, PREFIX if f"{PREFIX}encoder.conv1.weight" in reader else "")
    shapes = whisper.param_shapes(config)
    width = config.d_model
    embedding = tensors.get("decoder.embed_tokens.weight", (config.vocab_size, width))
    params = {
        "encoder": {
            "conv1": _conv(tensors, "encoder.conv1", config.num_mel_bins, width),
            "conv2": _conv(tensors, "encoder.conv2", width, width),
            "embed_positions": tensors.get("encoder.embed_positions.weight", (config.max_source_positions, width)),
            "layers": _stacked(tensors, "encoder", ENCODER_LAYER, config.encoder_layers, shapes["encoder"]["layers"]),
            "layer_norm": _norm(tensors, "encoder.layer_norm", width),
        },
        "decoder": {
            "embed_tokens": embedding,
            "embed_positions": tensors.get("decoder.embed_positions.weight", (config.max_target_positions, width)),
            "layers": _stacked(tensors, "decoder", DECODER_LAYER, config.decoder_layers, shapes["decoder"]["layers"]),
            "layer_norm": _norm(tensors, "decoder.layer_norm", width),
        },
    }
    if HEAD in reader:
        head = np.asarray(reader.get(HEAD, (config.vocab_size, width)), np.float32)
        if not np.array_equal(head, embedding):
            raise CheckpointError(f"{reader.file_of(HEAD)}: {HEAD} differs from the token embedding (untied head)")
        tensors.used.add(HEAD)
    unused = tensors.unused()
    if unused:
        raise CheckpointError(f"{reader.folder}: {len(unused)} tensors config.json does not describe: {unused[:3]}")
    whisper.check_shapes(config, params)
    return params


def resolve(model: str) -> Path:
    """The checkpoint folder of `model`: a local folder, or a hub id downloaded with the files the ASR needs."""
    return hf_to_flax.resolve_source(model, patterns=("config.json", "*.safetensors", "*.index.json", *COPIED_FILES))


def check_side_files(folder: Path, config: whisper.WhisperConfig) -> list[Path]:
    """The source's files to copy, after checking that the ASR can use them (one-line errors naming them)."""
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        raise CheckpointError(f"{folder}: missing {missing} (the transcriber needs them)")
    try:
        asr.read_prompting(folder / asr.GENERATION_CONFIG)
        asr.check_front_end(folder / asr.PREPROCESSOR_CONFIG, config.num_mel_bins)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    return [folder / name for name in COPIED_FILES if (folder / name).is_file()]


def convert(model: str, out: str | Path, overwrite: bool = False) -> Path:
    """Convert `model` (a checkpoint folder, bucket folder or hub id) into a slam_jax Whisper model folder at `out`."""
    paths.check_array_storage(out, "Whisper weights")
    command.refuse_non_empty(out, overwrite, inputs=[model])
    folder = resolve(str(model))
    refuse_overlap(out, [folder])  # a hub id's download folder, known only now
    with command.named_as(folder, model):
        hf_config = read_config_json(folder)
        config = config_from_hf(hf_config, source=str(folder / "config.json"))
        side_files = check_side_files(folder, config)
        params = weights.move_to_device(params_from_hf(CheckpointReader(folder), config))
    provenance = {"source": str(model), "source_format": "hf", "architectures": hf_config.get("architectures")}
    with atomic_dir(out, overwrite) as staging:
        # The model folder's own atomic write replaces the (empty) staging folder; the side files join it.
        whisper.save_whisper(staging, config, params, extra_files={"provenance.json": provenance}, overwrite=True)
        for path in side_files:
            shutil.copyfile(path, staging / path.name)  # both local: the source or its copy, the staging folder
    return paths.absolute(out)


def main(argv: list[str] | None = None) -> int:
    return command.run_model_converter(
        argv,
        prog="python -m conversion.whisper_to_flax",
        description="Convert an HF Whisper checkpoint to a slam_jax Whisper model folder (for speech recognition).",
        model_help="checkpoint folder (safetensors + config.json + tokenizer) or hub id",
        out_noun="model folder",
        convert=convert,
        summary=summary,
    )


def summary(out: Path) -> str:
    """What `wrote OUT` is followed by: the converted model's shape."""
    config = whisper.WhisperConfig.load(out / whisper.CONFIG_FILE)
    return (
        f": {config.encoder_layers} encoder + {config.decoder_layers} decoder layers x {config.d_model}, "
        f"{config.num_mel_bins} mel bins, vocabulary {config.vocab_size}"
    )


if __name__ == "__main__":
    sys.exit(main())
