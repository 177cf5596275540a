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
import sys
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
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


def process_rows(mesh: Mesh, rows: int) -> list[int]:
    """The indices of the rows (of a batch of `rows` rows split over data x fsdp) that this process's devices hold,
    in order: which rows of the global batch this process builds."""
    sharding = NamedSharding(mesh, P(BATCH_AXES))
    held = set()
    for index in sharding.addressable_devices_indices_map((rows,)).values():
        held.update(range(*index[0].indices(rows)))
    return sorted(held)


def global_batch(local: np.ndarray, rows: list[int], sharding: NamedSharding, global_shape, row_axis: int) -> jax.Array:
    """A global array from this process's `rows` (`local` holds them in order along `row_axis`): each local device
    gets the rows its shard of `sharding` covers. Exact for any mesh and any process count."""
    where = {row: position for position, row in enumerate(rows)}
    pieces = []
    for device, index in sharding.addressable_devices_indices_map(tuple(global_shape)).items():
        wanted = range(*index[row_axis].indices(global_shape[row_axis]))
        taken = np.take(local, [where[row] for row in wanted], axis=row_axis)
        rest = tuple(slice(None) if axis == row_axis else part for axis, part in enumerate(index))
        pieces.append(jax.device_put(taken[rest], device))
    return jax.make_array_from_single_device_arrays(tuple(global_shape), sharding, pieces)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def first_device() -> jax.sharding.SingleDeviceSharding:
    """Where a model loaded outside any mesh is placed: this process's first device (under jax.distributed,
    `jax.devices()[0]` belongs to process 0)."""
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


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
    """True under an explicit coordinator (JAX_COORDINATOR_ADDRESS), a multi-task SLURM job, a TPU pod that
    lists its workers (TPU_WORKER_HOSTNAMES), or SLAM_JAX_DISTRIBUTED=1 (JAX then detects the cluster itself, e.g. a
    TPU slice from its VM metadata when the ssh session has no TPU_WORKER_HOSTNAMES)."""
    if environ.get("JAX_COORDINATOR_ADDRESS") or environ.get("SLAM_JAX_DISTRIBUTED", "0") not in ("", "0"):
        return True
    if int(environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return len(environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def maybe_initialize(environ=os.environ, host_timeout: float = 0.0) -> None:
    """Join the job's processes (once, before any computation); a no-op for a single process.

    `host_timeout`: the training loop's own `HostWatchdog` bound; JAX's coordination service, which aborts every
    process with a C++ trace when a heartbeat is missed, is given a longer one so that the watchdog speaks first."""
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
            **_heartbeat(host_timeout),
        )
    else:
        jax.distributed.initialize(**_heartbeat(host_timeout))


def _heartbeat(host_timeout: float) -> dict:
    return {"heartbeat_timeout_seconds": int(max(100, 2 * host_timeout + 30))} if host_timeout else {}


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


@functools.lru_cache(maxsize=8)
def _max_over_processes(mesh: Mesh):
    return jax.jit(lambda flags: jnp.max(flags, axis=0), out_shardings=replicated(mesh))


def any_process(mesh: Mesh, flags) -> jax.Array:
    """The element-wise maximum of every process's `flags` (small ints), as a replicated array: a decision all
    processes take at the same step (a signal one host got, a time-based save one host's clock asks for). It is
    dispatched like a step and read later, so it never stalls the device queue."""
    flags = np.asarray(flags, np.int32)
    sharding = NamedSharding(mesh, P(MESH_AXES))
    shape = (mesh.size, len(flags))
    pieces = [jax.device_put(flags[None], device) for device in sharding.addressable_devices_indices_map(shape)]
    return _max_over_processes(mesh)(jax.make_array_from_single_device_arrays(shape, sharding, pieces))


EXIT_HOST_LOST = 69  # EX_UNAVAILABLE: a peer process died or stopped answering; re-run the same command to resume


class HostWatchdog:
    """Several hosts: a process that dies or hangs must not leave the others waiting in a collective for ever.

    Every process publishes a heartbeat in the coordination service's key-value store a few times per `timeout`
    and reads its peers'. A peer whose heartbeat has not moved for `timeout` seconds (a killed process, a lost
    host), or a coordination service that stops answering (process 0 is gone), makes this process print one line
    naming the lost process and `describe()` (the last committed checkpoint) and exit `EXIT_HOST_LOST` at once,
    whatever its main thread is blocked in. A no-op for one process or `timeout` 0."""

    PREFIX = "slam_jax/heartbeat/"

    def __init__(self, timeout: float, describe: Callable[[], str], job: str = "slam_jax"):
        self.timeout, self.describe, self.job = timeout, describe, job
        self.active = timeout > 0 and jax.process_count() > 1
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="slam_jax-host-watchdog", daemon=True)

    def __enter__(self):
        if self.active:
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, traceback):
        if exc_type is not None and issubclass(exc_type, Exception):
            # A peer that died makes this process's next collective fail: let the watchdog name it and exit.
            self.verdict()
        self._stop.set()

    def _watch(self) -> None:
        from jax._src import distributed

        client, me, count = distributed.global_state.client, jax.process_index(), jax.process_count()
        interval = max(0.2, min(5.0, self.timeout / 6))
        seen = {peer: (None, time.monotonic()) for peer in range(count) if peer != me}
        beat = 0
        while not self._stop.wait(interval):
            beat += 1
            asked = time.monotonic()
            try:
                client.key_value_set(f"{self.PREFIX}{me}", str(beat), allow_overwrite=True)
            except Exception:  # noqa: BLE001 - the service is gone (its host, process 0, is lost)
                if not self._stop.is_set():
                    self.lose(0, time.monotonic() - asked, "the coordination service stopped answering")
                return
            now = time.monotonic()
            for peer, (last, since) in seen.items():
                try:
                    value = client.key_value_try_get(f"{self.PREFIX}{peer}")
                except Exception:  # noqa: BLE001 - not published yet
                    value = None
                if value != last:
                    seen[peer] = (value, now)
                elif now - since >= self.timeout and not self._stop.is_set():
                    self.lose(peer, now - since, "no heartbeat")
                    return

    def lose(self, peer: int, silent: float, why: str) -> None:
        """Print the line naming the lost process `peer` and the last committed checkpoint; exit EXIT_HOST_LOST."""
        self._lost.set()
        try:
            where = self.describe()
        except Exception:  # noqa: BLE001 - the line must come out whatever the checkpoint folder holds
            where = "the last committed checkpoint is unknown"
        print(  # on a line of its own, after whatever progress bar this process drew
            f"\n[{self.job}] error: lost process {peer} of {jax.process_count()} ({why} for {silent:.0f} s; this is "
            f"process {jax.process_index()}); {where}; re-run the same command on every host to resume",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_HOST_LOST)

    def verdict(self) -> None:
        """After a collective failed in the main thread: wait (up to the timeout and a margin) for the watchdog to
        name the lost peer and end the process; returns if every peer is still heard (then the error is real)."""
        if self.active and self._thread.is_alive() and self._lost.wait(self.timeout + 15):
            # The watchdog has found the lost peer and is printing its line before it ends the process: returning
            # now would print this thread's traceback over that line (it did, on a loaded machine).
            threading.Event().wait(60)
