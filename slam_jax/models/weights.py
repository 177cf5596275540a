"""Model weights, for every model family: a model class + its config <-> param trees <-> a model folder on disk.

A `Family` describes one kind of model (Qwen2, HuBERT; later a vocoder, Whisper, Llama): its Flax NNX class, its
`Settings` config class and the name of the config file in its folder. The functions here take the family, so
a new model gets random init, shape-only models, pure-dict parameters, shape checks and atomic save / load by
declaring a `Family` and nothing else.

A model folder is `<config_file>` (the config as JSON) + Orbax `params/` (the pure-dict parameter tree) + any
extra JSON files (e.g. provenance). It is written atomically: everything goes to a temporary sibling folder
that is renamed into place only when complete (in a gs:// bucket: a local folder uploaded with the config last),
so an interrupted or failed write never leaves a half-written model behind. A folder in a gs:// bucket is read
in place (Orbax reads the arrays from the bucket); s3:// is refused for weights (`paths.check_array_storage`).
"""

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from slam_jax import parallel, paths
from slam_jax.files import atomic_dir
from slam_jax.paths import Path
from slam_jax.settings import Settings

PARAMS_DIR = "params"


@dataclasses.dataclass(frozen=True)
class Family:
    """One kind of model: how to build it from a config, and where its folder keeps that config."""

    module: type  # an nnx.Module subclass, built as `module(config, rngs=nnx.Rngs(...))`
    settings: type[Settings]
    config_file: str
    noun: str = "model"  # names the family in errors: "the encoder config", "not a converted encoder"
    config_item: str | None = None  # a training checkpoint step keeps its config as this Orbax JSON item


def init_model(family: Family, config: Settings, seed: int = 0) -> nnx.Module:
    """A randomly initialised model: each family's own initialisers, drawn from `seed`."""
    return family.module(config, rngs=nnx.Rngs(params=seed))


def abstract_model(family: Family, config: Settings) -> nnx.Module:
    """The model with shape-only parameters: nothing allocated."""
    return nnx.eval_shape(lambda: init_model(family, config))


def param_shapes(family: Family, config: Settings) -> dict[str, Any]:
    """Pure-dict tree of `jax.ShapeDtypeStruct`s of the parameters."""
    return get_params(abstract_model(family, config))


def count_params(family: Family, config: Settings) -> int:
    """Parameter count from abstract shapes (no weights allocated)."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(param_shapes(family, config)))


def stacked_layers(layer: type, config: Settings, count: int, rngs: nnx.Rngs) -> nnx.Module:
    """`count` layers `layer(config, rngs=...)` whose weights share one leading layer axis (for `lax.scan`)."""

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(layer_rngs: nnx.Rngs) -> nnx.Module:
        return layer(config, rngs=layer_rngs)

    return create(rngs)


def get_params(model: nnx.Module) -> dict[str, Any]:
    """The parameters as a nested dict of arrays (the layout of conversion, checkpoints and model folders)."""
    return nnx.state(model, nnx.Param).to_pure_dict()


def model_from_params(family: Family, config: Settings, params: dict[str, Any]) -> nnx.Module:
    """A model holding `params` (a pure dict as `get_params` returns), built without random init."""
    model = abstract_model(family, config)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def check_shapes(family: Family, config: Settings, params: dict[str, Any]) -> None:
    """Raise a one-line `ValueError` naming the parameters that do not fit `config` (missing, extra, reshaped)."""
    expected, actual = param_shapes(family, config), params
    what = f"the {family.noun} config"
    if jax.tree.structure(expected) != jax.tree.structure(actual):
        raise ValueError(f"parameter tree does not match {what}: {_tree_difference(expected, actual)}")
    wanted, got = _shapes_by_path(expected), _shapes_by_path(actual)
    mismatched = [f"{path}: {got[path]} != {shape}" for path, shape in wanted.items() if got[path] != shape]
    if mismatched:
        raise ValueError(f"parameter shapes do not match {what}: {mismatched[:3]}")


def _shapes_by_path(tree: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """`['layers']['mlp']['up_proj']['kernel']` -> shape, for every leaf of `tree`."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in leaves}


def _tree_difference(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    """The parameters one tree has and the other lacks, or (same names, other containers) the tree itself."""
    wanted, got = _shapes_by_path(expected), _shapes_by_path(actual)
    missing, unexpected = sorted(wanted.keys() - got.keys()), sorted(got.keys() - wanted.keys())
    if not missing and not unexpected:
        return str(jax.tree.structure(actual))
    return f"missing {missing[:3]}, unexpected {unexpected[:3]}"


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


def config_path(family: Family, directory: str | Path) -> Path:
    """The config of the model folder (or training checkpoint step) `directory`."""
    directory = Path(directory)
    if family.config_item:
        item = directory / family.config_item / "metadata"
        if item.is_file():
            return item
    return directory / family.config_file


def is_model_dir(family: Family, directory: str | Path) -> bool:
    """A folder holding a config and `params/` of `family` (a model folder or a training checkpoint step)."""
    return config_path(family, directory).is_file() and (Path(directory) / PARAMS_DIR).is_dir()


def save_model_dir(
    family: Family,
    directory: str | Path,
    config: Settings,
    params: dict[str, Any],
    extra_files: Mapping[str, dict] | None = None,
    overwrite: bool = False,
    this_process_only: bool = False,
) -> Path:
    """Write `config`, `params` and `extra_files` (name -> JSON object) to `directory` atomically, after checking
    the shapes; refuses a non-empty `directory` unless `overwrite`. Returns the absolute path.

    `this_process_only`: one process of a multi-process job writes host-local (numpy) `params` alone; Orbax would
    otherwise wait at barriers for the others."""
    paths.check_array_storage(directory, f"{family.noun} weights")
    check_shapes(family, config, params)
    with atomic_dir(directory, overwrite) as staging:
        config.save(staging / family.config_file)
        for name, content in (extra_files or {}).items():
            (staging / name).write_text(json.dumps(content, indent=2) + "\n")
        alone = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()}
        )
        options = {"multiprocessing_options": alone} if this_process_only else {}
        with ocp.StandardCheckpointer(**options) as checkpointer:
            checkpointer.save(staging / PARAMS_DIR, params)
            checkpointer.wait_until_finished()
    return paths.absolute(directory)


def load_config(family: Family, directory: str | Path) -> Settings:
    """The config saved in the model folder (or training checkpoint step) `directory`."""
    return family.settings.load(config_path(family, directory))


def load_params(family: Family, directory: str | Path, config: Settings | None = None, sharding=None) -> dict[str, Any]:
    """The parameter tree saved in `directory`, shaped by `config` (default: the saved one) and placed with
    `sharding`: one sharding for every leaf (default: this process's first device) or a tree of them (a training
    mesh's: every process restores only its shards, on any number of processes); a missing folder or a mismatch is
    a one-line error."""
    directory = _require_model_dir(family, directory)
    config = config or load_config(family, directory)
    shapes = param_shapes(family, config)
    if sharding is None or isinstance(sharding, jax.sharding.Sharding):
        one = sharding or parallel.first_device()
        sharding = jax.tree.map(lambda leaf: one, shapes)
    target = jax.tree.map(
        lambda leaf, placed: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=placed), shapes, sharding
    )
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            return checkpointer.restore(directory / PARAMS_DIR, target)
        except ValueError as error:  # Orbax's multi-line shape report becomes one line naming the folder
            message = " ".join(str(error).split())
            raise ValueError(
                f"{directory / PARAMS_DIR}: parameters do not match {family.config_file}: {message}"
            ) from None


def load_model(family: Family, directory: str | Path, **config_overrides) -> nnx.Module:
    """The model saved in `directory`, its config changed by `config_overrides` (e.g. the compute dtype)."""
    directory = _require_model_dir(family, directory)
    config = load_config(family, directory).replace(**config_overrides)
    return model_from_params(family, config, load_params(family, directory, config))


@contextlib.contextmanager
def local_side_files(directory: str | Path) -> Iterator[Path]:
    """A local folder holding the top-level files of the model folder `directory` (its tokenizer and generation
    config: what libraries such as transformers read by file name): `directory` itself when local; for a bucket,
    a temporary folder, removed after the block, of links to their copies in the local cache (`paths.local_copy`),
    without `params/` (Orbax reads that from the bucket)."""
    directory = Path(directory)
    if not paths.is_remote(directory):
        yield directory
        return
    scheme = str(directory).split("://", 1)[0]
    entries = paths.filesystem(directory).ls(paths.object_key(directory), detail=True)
    with tempfile.TemporaryDirectory(prefix="slam-jax-model-files-") as folder:
        for entry in entries:
            if entry.get("type") == "file":
                name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
                os.symlink(paths.local_copy(f"{scheme}://{entry['name']}"), os.path.join(folder, name))
        yield Path(folder)


def _require_model_dir(family: Family, directory: str | Path) -> Path:
    paths.check_array_storage(directory, f"{family.noun} weights")
    directory = paths.absolute(directory)
    if not is_model_dir(family, directory):
        paths.check_bucket(directory)
        needs = f"{family.config_file} and {PARAMS_DIR}/"
        raise FileNotFoundError(f"{directory}: not a converted {family.noun} (needs {needs})")
    return directory
