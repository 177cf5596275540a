"""The on-disk layout of a converted model: `model_config.json` + Orbax `params/` (+ optional provenance).

Written atomically: everything goes to a temporary sibling folder that is renamed into place only when
complete, so an interrupted or failed write never leaves a half-written model behind.
"""

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from slam_jax import parallel
from slam_jax.files import atomic_dir
from slam_jax.models import qwen2
from slam_jax.models.config import ModelConfig

CONFIG_FILE = "model_config.json"
CONFIG_ITEM = "model_config"  # the same JSON as an Orbax checkpoint item (training checkpoints)
PARAMS_DIR = "params"
PROVENANCE_FILE = "provenance.json"


def _config_path(path: Path) -> Path:
    item = path / CONFIG_ITEM / "metadata"
    return item if item.is_file() else path / CONFIG_FILE


def is_model_dir(path: str | Path) -> bool:
    """A converted model (`model_config.json` + `params/`) or a training checkpoint step (Orbax items)."""
    path = Path(path)
    return _config_path(path).is_file() and (path / PARAMS_DIR).is_dir()


def save_model(
    directory: str | Path,
    config: ModelConfig,
    params: dict[str, Any],
    provenance: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a converted model to `directory` atomically; refuses a non-empty one unless `overwrite`."""
    _check_shapes(config, params)
    with atomic_dir(directory, overwrite) as staging:
        config.save(staging / CONFIG_FILE)
        if provenance:
            (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / PARAMS_DIR, params)
            checkpointer.wait_until_finished()
    return Path(directory).absolute()


def move_to_device(tree: dict[str, Any]) -> dict[str, Any]:
    """Replace every host array leaf of a nested dict by a device array, in place, one leaf at a time.

    Each host copy is released as soon as its device copy exists, so memory holds one copy of the parameters
    (plus one leaf) rather than two; Orbax then saves the device arrays without the extra host copies it makes
    of numpy arrays (a Qwen2.5-0.5B conversion peaks at 4.5 GB instead of 7.1 GB, see benchmarks/RESULTS.md).
    """
    for key, value in tree.items():
        tree[key] = move_to_device(value) if isinstance(value, dict) else jax.device_put(np.ascontiguousarray(value))
        del value
    return tree


def _check_shapes(config: ModelConfig, params: dict[str, Any]) -> None:
    expected = jax.tree.map(lambda leaf: tuple(leaf.shape), qwen2.param_shapes(config))
    actual = jax.tree.map(lambda leaf: tuple(np.shape(leaf)), params)
    if jax.tree.structure(expected) != jax.tree.structure(actual):
        raise ValueError(f"parameter tree does not match the model config: {jax.tree.structure(actual)}")
    mismatched = [
        f"{jax.tree_util.keystr(path)}: {got} != {want}"
        for (path, got), want in zip(
            jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True
        )
        if got != want
    ]
    if mismatched:
        raise ValueError(f"parameter shapes do not match the model config: {mismatched[:3]}")


def load_config(directory: str | Path) -> ModelConfig:
    return ModelConfig.load(_config_path(Path(directory)))


def load_params(directory: str | Path, config: ModelConfig | None = None, sharding=None) -> dict[str, Any]:
    """The float32 parameter tree of a saved model, placed with `sharding` (default: the first device)."""
    directory = Path(directory).absolute()
    if not is_model_dir(directory):
        raise FileNotFoundError(f"{directory}: not a converted model (needs {CONFIG_FILE} and {PARAMS_DIR}/)")
    config = config or load_config(directory)
    sharding = sharding or parallel.first_device()
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), qwen2.param_shapes(config)
    )
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            return checkpointer.restore(directory / PARAMS_DIR, target)
        except ValueError as error:
            raise ValueError(f"{directory / PARAMS_DIR}: parameters do not match {CONFIG_FILE}: {error}") from None


def resolve_model_dir(path: str | Path) -> Path:
    """The model dir behind `path`: a model dir itself, or the newest numbered step inside a training
    workdir (`path/checkpoints/<step>/` or `path/<step>/`) that holds a model config and params."""
    path = Path(path)
    if is_model_dir(path):
        return path
    for folder in (path / "checkpoints", path):
        steps = sorted(
            (int(child.name), child) for child in _subdirs(folder) if child.name.isdigit() and is_model_dir(child)
        )
        if steps:
            return steps[-1][1]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model dir, workdir or checkpoint")
    raise FileNotFoundError(f"{path}: holds no {CONFIG_FILE} + {PARAMS_DIR}/ (not a model dir, workdir or checkpoint)")


def _subdirs(folder: Path) -> list[Path]:
    return [child for child in folder.iterdir() if child.is_dir()] if folder.is_dir() else []


def load_provenance(directory: str | Path) -> dict:
    path = Path(directory) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
