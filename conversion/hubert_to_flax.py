"""Convert an HF `HubertModel` checkpoint (safetensors + config.json) to a slam_jax encoder dir.

    python -m conversion.hubert_to_flax --model DIR --out DIR [--overwrite]

Reads safetensors with numpy (no torch), checks every tensor's shape against config.json, and writes
`encoder_config.json` + Orbax `params/` atomically. The positional conv's weight norm is kept as its two
factors, stored by `transformers` either as `weight_g`/`weight_v` (older checkpoints such as
hubert-base-ls960 and mhubert-base-25hz) or as `parametrizations.weight.original0/1`; both are read.
Checkpoints of a model with a head (`HubertForCTC`, ...) keep the encoder under `hubert.`; that prefix is
stripped. `--model` and `--out` may be bucket URLs (gs://; --model also s3://): a checkpoint in a bucket is read
from a local copy, the output is uploaded with encoder_config.json last.
"""

import sys
from typing import Any

import numpy as np

from conversion import command
from conversion.qwen2_hf import read_config_json
from conversion.safetensors_io import CheckpointError, CheckpointReader
from slam_jax import paths
from slam_jax.models import hubert
from slam_jax.paths import Path

HEAD_PREFIX = "hubert."
POS_CONV = "encoder.pos_conv_embed.conv."
WEIGHT_NORM_NAMES = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)

# (Flax path inside a layer, HF name with {i}, transposed?)
LAYER_TENSORS = (
    (("attention", "q_proj", "kernel"), "encoder.layers.{i}.attention.q_proj.weight", True),
    (("attention", "q_proj", "bias"), "encoder.layers.{i}.attention.q_proj.bias", False),
    (("attention", "k_proj", "kernel"), "encoder.layers.{i}.attention.k_proj.weight", True),
    (("attention", "k_proj", "bias"), "encoder.layers.{i}.attention.k_proj.bias", False),
    (("attention", "v_proj", "kernel"), "encoder.layers.{i}.attention.v_proj.weight", True),
    (("attention", "v_proj", "bias"), "encoder.layers.{i}.attention.v_proj.bias", False),
    (("attention", "out_proj", "kernel"), "encoder.layers.{i}.attention.out_proj.weight", True),
    (("attention", "out_proj", "bias"), "encoder.layers.{i}.attention.out_proj.bias", False),
    (("layer_norm", "scale"), "encoder.layers.{i}.layer_norm.weight", False),
    (("layer_norm", "bias"), "encoder.layers.{i}.layer_norm.bias", False),
    (
        ("feed_forward", "intermediate_dense", "kernel"),
        "encoder.layers.{i}.feed_forward.intermediate_dense.weight",
        True,
    ),
    (("feed_forward", "intermediate_dense", "bias"), "encoder.layers.{i}.feed_forward.intermediate_dense.bias", False),
    (("feed_forward", "output_dense", "kernel"), "encoder.layers.{i}.feed_forward.output_dense.weight", True),
    (("feed_forward", "output_dense", "bias"), "encoder.layers.{i}.feed_forward.output_dense.bias", False),
    (("final_layer_norm", "scale"), "encoder.layers.{i}.final_layer_norm.weight", False),
    (("final_layer_norm", "bias"), "encoder.layers.{i}.final_layer_norm.bias", False),
)


def config_from_hf(hf_config: dict, source: str) -> hubert.HubertConfig:
    """HubertConfig of a `transformers` Hubert config dict; rejects what the encoder does not implement."""
    if hf_config.get("model_type") != "hubert":
        raise CheckpointError(f"{source}: model_type {hf_config.get('model_type')!r} is not 'hubert'")
    for key in ("hidden_act", "feat_extract_activation"):
        if hf_config.get(key, "gelu") != "gelu":
            raise CheckpointError(f"{source}: {key} {hf_config[key]!r} is not 'gelu'")
    if hf_config.get("conv_pos_batch_norm") or hf_config.get("adapter_attn_dim"):
        raise CheckpointError(f"{source}: conv_pos_batch_norm / adapter_attn_dim are not supported")
    try:
        return hubert.HubertConfig(
            hidden_size=hf_config["hidden_size"],
            num_layers=hf_config["num_hidden_layers"],
            num_heads=hf_config["num_attention_heads"],
            intermediate_size=hf_config["intermediate_size"],
            conv_dim=hf_config["conv_dim"],
            conv_kernel=hf_config["conv_kernel"],
            conv_stride=hf_config["conv_stride"],
            conv_bias=bool(hf_config.get("conv_bias", False)),
            feat_extract_norm=hf_config.get("feat_extract_norm", "group"),
            feat_proj_layer_norm=bool(hf_config.get("feat_proj_layer_norm", True)),
            do_stable_layer_norm=bool(hf_config.get("do_stable_layer_norm", False)),
            num_conv_pos_embeddings=hf_config["num_conv_pos_embeddings"],
            num_conv_pos_embedding_groups=hf_config["num_conv_pos_embedding_groups"],
            layer_norm_eps=float(hf_config.get("layer_norm_eps", 1e-5)),
        )
    except KeyError as error:
        raise CheckpointError(f"{source}: missing key {error}") from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: {error}") from None


def _prefix(reader: CheckpointReader) -> str:
    """'' for a bare HubertModel, 'hubert.' when the encoder sits inside a model with a head."""
    return HEAD_PREFIX if f"{HEAD_PREFIX}feature_projection.projection.weight" in reader else ""


def _weight_norm_names(reader: CheckpointReader, prefix: str) -> tuple[str, str]:
    for g_name, v_name in WEIGHT_NORM_NAMES:
        if f"{prefix}{POS_CONV}{g_name}" in reader:
            return f"{prefix}{POS_CONV}{g_name}", f"{prefix}{POS_CONV}{v_name}"
    raise CheckpointError(f"{reader.folder}: no positional conv weight norm ({POS_CONV}weight_g or parametrizations)")


def params_from_hf(reader: CheckpointReader, config: hubert.HubertConfig) -> dict[str, Any]:
    """The float32 parameter tree of the encoder in `reader`, every tensor's shape checked."""
    prefix = _prefix(reader)

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.asarray(reader.get(prefix + name, shape), np.float32)

    d, groups, width = config.hidden_size, config.num_conv_pos_embedding_groups, config.num_conv_pos_embeddings
    g_name, v_name = _weight_norm_names(reader, prefix)
    params = {
        "conv_layers": _conv_params(get, config),
        "feature_projection": _projection_params(get, config),
        "pos_conv_embed": {
            "weight_g": np.asarray(reader.get(g_name, (1, 1, width)), np.float32).reshape(width),
            "weight_v": np.asarray(reader.get(v_name, (d, d // groups, width)), np.float32).transpose(2, 1, 0),
            "bias": get(POS_CONV + "bias", (d,)),
        },
        "layer_norm": {"scale": get("encoder.layer_norm.weight", (d,)), "bias": get("encoder.layer_norm.bias", (d,))},
        "layers": _layer_params(get, config),
    }
    hubert.check_shapes(config, params)
    return params


def _conv_params(get, config: hubert.HubertConfig) -> dict[int, dict]:
    layers = {}
    for index, (out_dim, width) in enumerate(zip(config.conv_dim, config.conv_kernel, strict=True)):
        in_dim = config.conv_dim[index - 1] if index else 1
        name = f"feature_extractor.conv_layers.{index}."
        layer = {"kernel": get(name + "conv.weight", (out_dim, in_dim, width)).transpose(2, 1, 0)}
        if config.conv_bias:
            layer["bias"] = get(name + "conv.bias", (out_dim,))
        if config.feat_extract_norm == "layer" or index == 0:
            layer["layer_norm"] = {
                "scale": get(name + "layer_norm.weight", (out_dim,)),
                "bias": get(name + "layer_norm.bias", (out_dim,)),
            }
        layers[index] = layer
    return layers


def _projection_params(get, config: hubert.HubertConfig) -> dict:
    conv_out, d = config.conv_dim[-1], config.hidden_size
    params = {
        "projection": {
            "kernel": get("feature_projection.projection.weight", (d, conv_out)).T,
            "bias": get("feature_projection.projection.bias", (d,)),
        }
    }
    if config.feat_proj_layer_norm:
        params["layer_norm"] = {
            "scale": get("feature_projection.layer_norm.weight", (conv_out,)),
            "bias": get("feature_projection.layer_norm.bias", (conv_out,)),
        }
    return params


def _layer_params(get, config: hubert.HubertConfig) -> dict:
    """Every layer tensor stacked on a leading layer axis, in the Flax [in, out] kernel layout."""
    shapes = hubert.param_shapes(config)["layers"]
    stacked: dict = {}
    for path, name, transposed in LAYER_TENSORS:
        shape = _lookup(shapes, path).shape[1:]
        hf_shape = shape[::-1] if transposed else shape
        tensors = [get(name.format(i=i), hf_shape) for i in range(config.num_layers)]
        node = stacked
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.stack([tensor.T if transposed else tensor for tensor in tensors])
    return stacked


def _lookup(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def convert(model: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Convert the HF Hubert checkpoint folder `model` into a slam_jax encoder dir at `out`."""
    paths.check_array_storage(out, "encoder weights")
    if not Path(model).is_dir():
        paths.check_bucket(model)
        raise CheckpointError(f"{model}: no such checkpoint folder")
    command.refuse_non_empty(out, overwrite, inputs=[model])
    folder = command.local_source(model)
    with command.named_as(folder, model):
        config = config_from_hf(read_config_json(folder), source=str(folder / "config.json"))
        params = params_from_hf(CheckpointReader(folder), config)
    return hubert.save_encoder(out, config, params, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    return command.run_model_converter(
        argv,
        prog="python -m conversion.hubert_to_flax",
        description="Convert an HF HubertModel checkpoint (safetensors + config.json) to a slam_jax encoder dir.",
        model_help="checkpoint folder (model.safetensors + config.json)",
        out_noun="encoder dir",
        convert=convert,
        summary=summary,
    )


def summary(out: Path) -> str:
    """What `wrote OUT` is followed by: the shape of the converted encoder."""
    config = hubert.HubertConfig.load(out / hubert.CONFIG_FILE)
    return (
        f": {config.num_layers} layers x {config.hidden_size}, {config.feat_extract_norm}-norm front end, "
        f"{config.frame_samples} samples per frame"
    )


if __name__ == "__main__":
    sys.exit(main())
