"""Devices, meshes, THE table of sharding rules, and multi-host start-up: every job's parallelism in one place.

`make_mesh` builds every mesh (training, scoring, generation, the unit encoder); `local_mesh` is the
data-parallel mesh over this process's devices that inference jobs use.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters and optimiser state
sharded, ZeRO-3 style) and `tensor` (Megatron-style splits of heads and MLP columns). Batches are split
over `data` x `fsdp`. A rule names a mesh axis per parameter dimension; an axis that does not divide the
dimension is dropped (replicated) rather than failing, so odd sizes such as the 502-row vocab still run.
"""

import functools
import os
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # rows of every batch
TENSOR_AXIS = "tensor"  # attention heads, MLP columns

# (regex on the "/"-joined parameter path, mesh axis per dimension); the first match wins.
# Stacked layer weights have a leading layer axis, never sharded.
RULES = (
    (r"^embed_tokens$", ("tensor", "fsdp")),
    (r"^lm_head/kernel$", ("fsdp", "tensor")),
    (r"self_attn/(q|k|v)_proj/kernel$", (None, "fsdp", "tensor")),
    (r"self_attn/(q|k|v)_proj/bias$", (None, "tensor")),
    (r"self_attn/o_proj/kernel$", (None, "tensor", "fsdp")),
    (r"mlp/(gate|up)_proj/kernel$", (None, "fsdp", "tensor")),
    (r"mlp/down_proj/kernel$", (None, "tensor", "fsdp")),
    (r"(layernorm|norm)/scale$", ()),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one axis may be -1 (the rest of the devices)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    known = int(np.prod([size for size in sizes if size != -1]))
    if -1 in sizes:
        sizes[sizes.index(-1)] = devices.size // known
    if int(np.prod(sizes)) != devices.size:
        raise ValueError(f"mesh: data*fsdp*tensor = {sizes} does not use the {devices.size} devices")
    return Mesh(devices.reshape(sizes), MESH_AXES)


def local_mesh() -> Mesh:
    """Pure data parallelism over this process's devices (inference: scoring, generation, tokenising)."""
    return make_mesh(devices=jax.local_devices())


def data_parallel_size(mesh: Mesh) -> int:
    """How many shards a batch's rows are split into (data x fsdp)."""
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))


def path_name(path) -> str:
    """'layers/self_attn/q_proj/kernel' from a pytree key path (dict keys and attribute names only)."""
    names = [getattr(key, "key", getattr(key, "name", None)) for key in path]
    return "/".join(str(name) for name in names if name is not None)


def spec_for(name: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """PartitionSpec of the parameter `name` from RULES, dropping axes that do not divide the dimension."""
    for pattern, axes in RULES:
        if re.search(pattern, name):
            if len(axes) > len(shape):
                break
            axes = tuple(axes) + (None,) * (len(shape) - len(axes))
            return P(
                *(axis if axis and dim % mesh.shape[axis] == 0 else None for axis, dim in zip(axes, shape, strict=True))
            )
    raise ValueError(f"no sharding rule for parameter {name} {shape}")


def param_shardings(params, mesh: Mesh):
    """NamedSharding for every parameter of a (pure-dict) parameter tree or its abstract shapes."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, spec_for(path_name(path), tuple(leaf.shape), mesh)), params
    )


def param_like_shardings(tree, params, mesh: Mesh):
    """Shardings of a tree that embeds parameter-shaped subtrees (optimiser moments): a leaf whose path
    ends with a parameter's path and has its shape gets that parameter's sharding; others are replicated."""
    by_name = {
        path_name(path): (tuple(leaf.shape), spec_for(path_name(path), tuple(leaf.shape), mesh))
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }

    def choose(path, leaf):
        name = path_name(path)
        for param_name, (shape, spec) in by_name.items():
            if (name == param_name or name.endswith("/" + param_name)) and tuple(leaf.shape) == shape:
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(choose, tree)


def batch_sharding(mesh: Mesh, leading_axes: int = 0, trailing_axes: int = 1) -> NamedSharding:
    """Rows split over data x fsdp; unsplit axes before (accumulation) and after (length, ...) the rows."""
    return NamedSharding(mesh, P(*([None] * leading_axes), BATCH_AXES, *([None] * trailing_axes)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def first_device() -> jax.sharding.SingleDeviceSharding:
    """Where a model loaded outside any mesh is placed."""
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def traced_under(mesh: Mesh, fn):
    """`fn` traced with `mesh` as the context mesh, so that kernels XLA cannot partition (a Pallas or cuDNN
    attention) run per shard under `shard_map` (models/attention.py)."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced


# Multi-host start-up: `jax.distributed.initialize()` when the launcher's environment asks for it.
_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def wants_distributed(environ=os.environ) -> bool:
    """True under an explicit coordinator (JAX_COORDINATOR_ADDRESS), a multi-task SLURM job or a TPU pod."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return len(environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def maybe_initialize(environ=os.environ) -> None:
    """Join the job's processes (once, before any computation); a no-op for a single process."""
    if not wants_distributed(environ) or jax.distributed.is_initialized():
        return
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [name for name in _EXPLICIT if not environ.get(name)]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not")
        if environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(environ["JAX_NUM_PROCESSES"]),
            process_id=int(environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()


def barrier(name: str) -> None:
    """Wait until every process reaches this point (a no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# Small host-side results (reports, scores, generated units) shared by every process.


def gather_json(value) -> list:
    """Every process's JSON-serialisable `value`, in process order, on every process (`[value]` for one process).

    A collective: every process calls it, in the same order. Exact for floats (JSON keeps every digit of a float);
    dict keys come back as strings, tuples as lists. The bytes travel padded to a power of two, so few shapes compile.
    """
    if jax.process_count() == 1:
        return [value]
    import json

    from jax.experimental import multihost_utils

    payload = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(payload.size))).reshape(-1)
    padded = np.zeros(1 << max(int(lengths.max()) - 1, 0).bit_length(), np.uint8)
    padded[: payload.size] = payload
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(row[:length].tobytes()) for row, length in zip(rows, lengths, strict=True)]
