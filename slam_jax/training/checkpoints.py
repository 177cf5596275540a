"""Training checkpoints: Orbax `CheckpointManager` with params, optimiser state, data iterator and metadata.

    WORKDIR/checkpoints/<step>/params        float32 master params (also what `load_model` reads)
    WORKDIR/checkpoints/<step>/opt_state     optimiser state, sharded like the params
    WORKDIR/checkpoints/<step>/meta          step, tokens seen, schedule length, elapsed time, seed, the global data
                                             position and the layout (processes, devices, mesh) that saved it
    WORKDIR/checkpoints/<step>/model_config  the model config (so a step dir is a loadable model)

Saves are asynchronous and atomic (Orbax finalises a step only when every item is written), so a kill
at any moment leaves the previous checkpoint restorable. Nothing in a checkpoint depends on the number of processes:
arrays are restored onto the target shardings the resuming run gives (any process count and mesh shape), and the
data position is one global integer. (Checkpoints of earlier versions also hold `data/`, a Grain iterator state per
process; it is not read.) The loop saves only states that `all_finite` passes;
a step folder that cannot be resumed (damaged, or non-finite from an older run) is moved by `set_aside` to
WORKDIR/rejected_checkpoints/, so nothing is deleted and the older checkpoints beside it serve the resume.
"""

import json
import re
import shutil
import threading

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from slam_jax import files, paths
from slam_jax.errors import BucketError
from slam_jax.models.config import ModelConfig
from slam_jax.models.storage import CONFIG_ITEM, PARAMS_DIR
from slam_jax.paths import Path
from slam_jax.training.step import TrainState

_ITEMS = (PARAMS_DIR, "opt_state", "meta", CONFIG_ITEM)
COMMITTED = "commit_success.txt"  # Orbax's commit marker of a step folder in a bucket
REJECTED_DIR = "rejected_checkpoints"
WHY = "WHY"  # in a set-aside step folder: why it was set aside (one line)
SUSPECTS = "suspect_checkpoints.json"  # WORKDIR/: {step: why}, steps whose next training step gave a non-finite loss


def all_finite(tree) -> jax.Array:
    """True when no floating-point leaf of `tree` holds a NaN or an infinity (one reduction; jit it)."""
    checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


class Checkpointer:
    """Saves every `every_steps` steps and every `every_minutes` minutes; keeps the last `keep` plus
    every `keep_period`-th step."""

    def __init__(
        self,
        directory: Path,
        every_steps: int,
        every_minutes: float,
        keep: int,
        keep_period: int = 0,
        commit_timeout_minutes: float = 30.0,
    ):
        self.every_steps = every_steps
        self.commit_timeout = commit_timeout_minutes * 60
        self.every_seconds = every_minutes * 60
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_period or None,
            enable_async_checkpointing=True,
            create=True,
        )
        handlers = {
            PARAMS_DIR: ocp.StandardCheckpointHandler(),
            "opt_state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
            CONFIG_ITEM: ocp.JsonCheckpointHandler(),
        }
        paths.check_array_storage(directory, "checkpoints")
        self.directory = paths.absolute(directory)
        self._saving: int | None = None
        self.manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)
        self._committed: int | None = self.manager.latest_step()  # known committed (the listing may be unreachable)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The saved steps, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def set_aside(self, step: int, why: str = "") -> Path:
        """Move step `step`'s folder to WORKDIR/rejected_checkpoints/ (a free name), with `why` in its WHY file;
        returns where. Every process then calls `reload`."""
        rejected = self.directory.parent / REJECTED_DIR
        rejected.mkdir(parents=True, exist_ok=True)
        target, copy = rejected / f"step-{step}", 1
        while target.exists():
            copy += 1
            target = rejected / f"step-{step}-{copy}"
        _move(self.directory / str(step), target)
        if why:
            files.write_text(target / WHY, f"step {step} {why}\n")
        marked = suspects(self.directory)
        if marked.pop(str(step), None) is not None:  # a later checkpoint of this step is not suspect
            _write_suspects(self.directory, marked)
        return target

    def reload(self) -> None:
        """Forget steps moved away since the manager listed them."""
        self.manager.reload()

    def due_by_steps(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def due_by_time(self, seconds_since_save: float) -> bool:
        return self.every_seconds > 0 and seconds_since_save >= self.every_seconds

    def save(self, step: int, state: TrainState, meta: dict, model_config: ModelConfig) -> None:
        args = ocp.args.Composite(
            **{
                PARAMS_DIR: ocp.args.StandardSave(state.params),
                "opt_state": ocp.args.StandardSave(state.opt_state),
                "meta": ocp.args.JsonSave(meta),
                CONFIG_ITEM: ocp.args.JsonSave(model_config.to_dict()),
            }
        )
        self.wait()  # the previous save, bounded (Orbax would wait for it without a limit)
        self.manager.save(step, args=args, force=True)
        self._saving = step

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        """The state (placed with the shardings of `abstract_state`'s leaves, whatever layout saved it) and the
        metadata of `step`."""
        args = ocp.args.Composite(
            **{
                PARAMS_DIR: ocp.args.StandardRestore(abstract_state.params),
                "opt_state": ocp.args.StandardRestore(abstract_state.opt_state),
                "meta": ocp.args.JsonRestore(),
            }
        )
        restored = self.manager.restore(step, args=args)
        meta = restored["meta"]
        step_value = jax.device_put(jax.numpy.asarray(meta["step"], jax.numpy.int32), abstract_state.step.sharding)
        return TrainState(restored[PARAMS_DIR], restored["opt_state"], step_value), meta

    def wait(self) -> None:
        """Wait for the save in flight to commit, at most `commit_timeout_minutes`; past that a `BucketError` (the
        storage stopped answering: TensorStore would go on retrying for many minutes) names the step that did not
        commit and the last one that did."""
        waiter = threading.Thread(target=self.manager.wait_until_finished, name="checkpoint-commit", daemon=True)
        waiter.start()
        waiter.join(self.commit_timeout)
        if waiter.is_alive():
            raise BucketError(
                f"{self.directory / str(self._saving)}: the save did not commit within {self.commit_timeout:g} s "
                f"(checkpoint.commit_timeout_minutes): is the storage answering? "
                f"{committed_sentence(self._committed, self.directory)}"
            )
        if self._saving is not None:
            self._committed = self._saving

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _move(source: Path, target: Path) -> None:
    """Move a step folder; in a bucket (copy and delete, not atomic) its commit marker goes first, so that a move
    cut short never leaves a folder that looks committed."""
    if not paths.is_remote(source):
        shutil.move(source, target)
        return
    fs = paths.filesystem(source)
    marker = f"{paths.object_key(source)}/{COMMITTED}"
    committed = fs.exists(marker)
    if committed:
        fs.rm(marker)
    fs.mv(paths.object_key(source), paths.object_key(target), recursive=True)
    if committed:
        fs.pipe_file(f"{paths.object_key(target)}/{COMMITTED}", b"moved aside\n")


def is_committed(step_dir: Path) -> bool:
    """Whether a step folder is a committed checkpoint: on a local disk its name (Orbax renames a finished save
    into place), in a bucket its commit marker (Orbax writes it last: a bucket cannot rename)."""
    step_dir = Path(step_dir)
    return not paths.is_remote(step_dir) or (step_dir / COMMITTED).exists()


def last_committed(directory: Path) -> str:
    """The sentence naming the newest committed checkpoint of `directory` (read from its listing alone: safe from
    any thread, and without a manager)."""
    steps = committed_steps(directory)
    return committed_sentence(steps[-1] if steps else None, directory)


def committed_sentence(step: int | None, directory: Path) -> str:
    """'the last committed checkpoint is step N in DIRECTORY', or that none is yet (`step` None)."""
    return (
        f"the last committed checkpoint is step {step} in {directory}"
        if step is not None
        else "no checkpoint committed yet"
    )


def committed_steps(directory: Path) -> list[int]:
    """The steps committed in `directory`, oldest first, from its listing alone (locally an unfinished save is a
    temporary folder Orbax renames only when every item is written; in a bucket it lacks the commit marker)."""
    try:
        found = [path for path in Path(directory).iterdir() if re.fullmatch(r"\d+", path.name) and path.is_dir()]
    except OSError:
        return []
    return sorted(int(path.name) for path in found if is_committed(path))


def suspects(directory: Path) -> dict[str, str]:
    """{step: why} of the checkpoints of `directory` marked suspect (WORKDIR/suspect_checkpoints.json)."""
    path = Path(directory).parent / SUSPECTS
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def mark_suspect(directory: Path, step: int, why: str) -> None:
    """Record that checkpoint `step` gave a non-finite loss at the next step (set aside by the next resume)."""
    _write_suspects(directory, {**suspects(directory), str(step): why})


def _write_suspects(directory: Path, marked: dict[str, str]) -> None:
    path = Path(directory).parent / SUSPECTS
    if marked:
        files.write_text(path, json.dumps(marked, indent=2) + "\n")
    else:
        path.unlink(missing_ok=True)
