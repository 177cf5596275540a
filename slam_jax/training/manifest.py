"""A training workdir knows what it holds and who is using it: the run manifest and the workdir lock.

    WORKDIR/run_manifest.json   the settings a resume must not change, recorded on the first start
    WORKDIR/.lock               pid and host of the run using the workdir (an `fcntl.flock`, so a killed run
                                releases it; in a bucket, a lease object: see `workdir_lock`)

The manifest holds what decides the model's shape and the batches a resumed run sees: a different value on
resume is refused in one line naming the key, unless `train.allow_changed` lists it (then the change is recorded
in the manifest). What may change on resume (steps, budget, learning rate, logging, checkpoint cadence) is not
in it. Before the first checkpoint there is nothing to resume, so a changed setting is recorded, not refused.
"""

import contextlib
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator

from slam_jax import files, paths
from slam_jax.data import stores
from slam_jax.errors import TrainingError
from slam_jax.models.config import ModelConfig
from slam_jax.paths import Path
from slam_jax.training.settings import PretrainJob

MANIFEST = "run_manifest.json"
LOCK = ".lock"
FORMAT = "slam_jax.run_manifest"


LEASE_VARIABLE = "SLAM_JAX_LOCK_LEASE"  # seconds a bucket lock lasts without renewal (default 120)


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold WORKDIR/.lock for the block; a workdir another live process holds is one TrainingError line.

    On a local disk the lock is an `fcntl.flock` (released by the system when the holder dies). In a bucket it is
    a lease object, created only if absent (GCS `ifGenerationMatch=0`, S3 `If-None-Match: *`) and renewed by a
    background thread; a lease not renewed for `SLAM_JAX_LOCK_LEASE` seconds (default 120), or one held by a
    process of this host that no longer exists, is taken over."""
    if paths.is_remote(workdir):
        with paths.naming(Path(workdir) / LOCK):
            lock = _bucket_lock(Path(workdir))
            lock.__enter__()
        try:
            yield
        finally:
            lock.__exit__(None, None, None)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK
    # Opened for appending, not truncated: the holder's line must survive a failed attempt to take the lock.
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise TrainingError(
            f"{workdir} is in use by {holder} ({path}); wait for that run to end or use another --workdir"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_VARIABLE) or 120)


def read_lease(workdir: Path) -> dict | None:
    """The lease object of a bucket workdir (`paths.read_lease` of WORKDIR/.lock)."""
    return paths.read_lease(Path(workdir) / LOCK)


@contextlib.contextmanager
def _bucket_lock(workdir: Path) -> Iterator[None]:
    path = workdir / LOCK
    fs, key = paths.filesystem(path), paths.object_key(path)
    token = secrets.token_hex(8)
    lease = {
        "holder": f"pid {os.getpid()} on {socket.gethostname()}",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": token,
        "lease": lease_seconds(),
    }

    def body() -> bytes:
        return json.dumps({**lease, "renewed": time.time()}).encode()

    for attempt in range(2):
        try:
            fs.pipe_file(key, body(), mode="create")
            break
        except FileExistsError:
            current = read_lease(workdir)
            holder = paths.lease_holder(current)
            if holder is not None or attempt:
                raise TrainingError(
                    f"{workdir} is in use by {holder or 'another process'} ({path}, a lease renewed every "
                    f"{lease_seconds() / 4:g} s); wait for that run to end or use another --workdir"
                ) from None
            fs.rm(key)  # stale: expired, or its process is gone; take it over
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_seconds() / 4):
            try:
                if (read_lease(workdir) or {}).get("token") != token:
                    return  # taken over (this run stalled for a whole lease): never overwrite the new holder
                fs.pipe_file(key, body())
            except Exception:  # noqa: BLE001 - a failed renewal is retried at the next period
                continue

    renewer = threading.Thread(target=renew, name="workdir-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()

        def release() -> None:
            with contextlib.suppress(Exception):
                if (read_lease(workdir) or {}).get("token") == token:
                    fs.rm(key)

        # Best effort, bounded: a bucket that stopped answering must not hold the exit for the client's retries
        # (the lease then expires by itself).
        releaser = threading.Thread(target=release, name="workdir-lease-release", daemon=True)
        releaser.start()
        releaser.join(timeout=15)


def architecture(config: ModelConfig) -> str:
    """The shape of a model in one line (what its parameters' shapes follow from)."""
    return (
        f"vocab {config.vocab_size}, {config.num_layers} layers, hidden {config.hidden_size}, "
        f"mlp {config.intermediate_size}, heads {config.num_heads}/{config.num_kv_heads} x {config.head_dim}, "
        f"rope {config.rope_theta:g}, {'tied' if config.tie_word_embeddings else 'untied'} head"
    )


def values(job: PretrainJob, model_config: ModelConfig, batch_devices: int) -> dict:
    """The settings a resume must not change, keyed as the config spells them.

    `model.init_from` holds the architecture of that model (the path may move); `train.global_batch_rows` is the
    rows of each micro-batch (`train.per_device_batch_size` x the data x fsdp devices): the layout (processes,
    devices, mesh shape) may change on resume as long as it does not change; `data.train_path` / `data.valid_path`
    hold what their entries contain (`stores.describe_sources`), so changed data is seen under an unchanged path."""
    data = job.data
    return {
        "model.preset": "" if job.model.init_from else job.model.preset,
        "model.init_from": architecture(model_config) if job.model.init_from else "",
        "data.num_units": data.num_units,
        "data.train_path": stores.describe_sources(data.train_path, data),
        "data.valid_path": stores.describe_sources(data.valid_path, data),
        "data.valid_fraction": 0.0 if data.valid_path else data.valid_fraction,
        "data.weights": data.weights,
        "data.context_length": data.context_length,
        "data.packing": data.packing,
        "train.global_batch_rows": job.train.per_device_batch_size * batch_devices,
        "train.grad_accum_steps": job.train.grad_accum_steps,
        "seed": job.seed,
    }


def read(workdir: Path) -> dict | None:
    """The recorded manifest (None before the first start); a damaged file is one line naming it."""
    path = workdir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); restore it or use a new --workdir") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file; restore it or use a new --workdir")
    return manifest


def changed(recorded: dict, current: dict) -> dict[str, tuple]:
    """{key: (recorded, current)} of every recorded key whose value differs (keys a newer version added and an
    older manifest lacks are not changes)."""
    settings = recorded["settings"]
    return {key: (settings[key], value) for key, value in current.items() if key in settings and settings[key] != value}


def check(workdir: Path, current: dict, allowed: tuple[str, ...], resuming: bool) -> dict[str, tuple]:
    """The changes from the recorded manifest that this start may make; a refused one is one ValueError line.

    `resuming`: the workdir holds checkpoints (else nothing is resumed and every change is accepted)."""
    unknown = sorted(set(allowed) - set(current))
    if unknown:
        raise ValueError(f"train.allow_changed names {unknown}, which are not run-manifest keys {sorted(current)}")
    recorded = read(workdir)
    if recorded is None:
        return {}
    changes = changed(recorded, current)
    refused = {key: values for key, values in changes.items() if key not in allowed}
    if refused and resuming:
        what = "; ".join(f"{key} was {old!r}, now {new!r}" for key, (old, new) in refused.items())
        raise ValueError(
            f"{workdir / MANIFEST}: the run in this workdir started with other settings: {what}; resume with the "
            f"recorded values, use a new --workdir, or allow it with --config.train.allow_changed={','.join(refused)}"
        )
    return changes


def record(
    workdir: Path, current: dict, changes: dict[str, tuple], layout: dict | None = None, run: dict | None = None
) -> None:
    """Write the manifest atomically: on the first start, and again with the accepted `changes` appended, when
    the run's `layout` (processes, devices, mesh shape: free to change between starts) differs from the recorded
    one, which is kept in `layouts` with the time of each change, or when `run` (what this start was asked to do:
    the job, `train.max_steps`, `train.time_budget`; free to change) differs from the recorded one."""
    recorded = read(workdir)
    layouts = recorded.get("layouts", []) if recorded else []
    new_layout = layout is not None and (not layouts or layouts[-1]["layout"] != layout)
    new_run = run is not None and (recorded or {}).get("run") != run
    unchanged = not (changes or new_layout or new_run)
    if recorded is not None and unchanged and set(current) <= set(recorded["settings"]):
        return
    history = recorded.get("changes", []) if recorded else []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    history += [{"key": key, "old": old, "new": new, "at": stamp} for key, (old, new) in changes.items()]
    if new_layout:
        layouts = [*layouts, {"layout": layout, "from": stamp}]
    manifest = {
        "format": FORMAT,
        "version": 1,
        "created": recorded["created"] if recorded else stamp,
        "settings": current,
        "changes": history,
        "layouts": layouts,
        "run": run if run is not None else (recorded or {}).get("run"),
    }
    files.write_text(workdir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
