"""The Qwen2 model folder: `model_config.json` + Orbax `params/` (+ optional provenance), or a training step.

The folder itself (atomic writes, shape checks, loading onto a device) is `weights.py`'s, shared by every
model family; this module names the Qwen2 files and finds the model inside a training workdir. Any of them may be
in a gs:// bucket (Orbax reads and writes its arrays there; s3:// is refused: `paths.check_array_storage`).
"""

import json
from typing import Any

from slam_jax import paths
from slam_jax.models import qwen2, weights
from slam_jax.models.config import ModelConfig
from slam_jax.paths import Path

CONFIG_FILE = qwen2.FAMILY.config_file
CONFIG_ITEM = qwen2.FAMILY.config_item  # the same JSON as an Orbax checkpoint item (training checkpoints)
PARAMS_DIR = weights.PARAMS_DIR
PROVENANCE_FILE = "provenance.json"

move_to_device = weights.move_to_device


def is_model_dir(path: str | Path) -> bool:
    """A converted model (`model_config.json` + `params/`) or a training checkpoint step (Orbax items)."""
    return weights.is_model_dir(qwen2.FAMILY, path)


def save_model(
    directory: str | Path,
    config: ModelConfig,
    params: dict[str, Any],
    provenance: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a converted model to `directory` atomically; refuses a non-empty one unless `overwrite`."""
    extra_files = {PROVENANCE_FILE: provenance} if provenance else None
    return weights.save_model_dir(qwen2.FAMILY, directory, config, params, extra_files, overwrite)


def load_config(directory: str | Path) -> ModelConfig:
    """The model config of a model dir or a training checkpoint step."""
    return weights.load_config(qwen2.FAMILY, directory)


def load_params(directory: str | Path, config: ModelConfig | None = None, sharding=None) -> dict[str, Any]:
    """The float32 parameter tree of a saved model, placed with `sharding` (default: this process's first device;
    or a tree of shardings, as a training mesh's)."""
    return weights.load_params(qwen2.FAMILY, directory, config, sharding)


def resolve_model_dir(path: str | Path) -> Path:
    """The model dir behind `path`: a model dir itself, or the newest numbered step inside a training
    workdir (`path/checkpoints/<step>/` or `path/<step>/`) that holds a model config and params."""
    paths.check_array_storage(path, "model weights")
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
        paths.check_bucket(path)
        raise FileNotFoundError(f"{path}: no such model dir, workdir or checkpoint")
    raise FileNotFoundError(f"{path}: holds no {CONFIG_FILE} + {PARAMS_DIR}/ (not a model dir, workdir or checkpoint)")


def _subdirs(folder: Path) -> list[Path]:
    return [child for child in folder.iterdir() if child.is_dir()] if folder.is_dir() else []


def load_provenance(directory: str | Path) -> dict:
    """The provenance a conversion wrote beside the model ({} if none)."""
    path = Path(directory) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
