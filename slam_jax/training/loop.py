"""`mode: pretrain`: the training loop, top to bottom.

lock the workdir, check its run manifest -> set up (mesh, model, data, optimiser) -> restore the newest usable
checkpoint or initialise -> step until `train.max_steps` or `train.time_budget` -> evaluate, save, exit.
SIGTERM (preemption) or Ctrl-C saves and exits (code 75: re-run to resume). A state holding NaN or inf is never
saved: the run stops naming the last finite checkpoint, and a resume skips checkpoints it cannot read or that hold
non-finite values.
"""

import contextlib
import dataclasses
import functools
import math
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import parallel, paths, progress
from slam_jax.data import pipeline, stores
from slam_jax.data.stores import DataSettings
from slam_jax.data.unit_store import UnitStore
from slam_jax.errors import BucketError, TrainingError
from slam_jax.models import attention, qwen2, storage
from slam_jax.models import config as model_config
from slam_jax.models.config import ModelConfig
from slam_jax.paths import Path
from slam_jax.training import checkpoints, manifest, metrics, optimizer
from slam_jax.training.settings import ModelSettings, PretrainJob, TrainSettings
from slam_jax.training.step import TrainState, init_state, jit_eval_step, jit_train_step, train_state_shardings


def build_model_config(model: ModelSettings, context_length: int, num_units: int) -> ModelConfig:
    """The preset (or the `init_from` model's architecture) with the run's execution settings."""
    execution = dict(
        compute_dtype=model.compute_dtype,
        scan_layers=model.scan_layers,
        remat_policy=model.remat_policy,
        attention=model.attention,
    )
    if model.init_from:
        base = storage.load_config(storage.resolve_model_dir(model.init_from))
        return base.replace(**execution)
    overrides = dict(execution, max_position_embeddings=max(context_length, 1))
    if model.preset in model_config.SPEECH_PRESETS:
        overrides["num_units"] = num_units
    return model_config.from_preset(model.preset, **overrides)


@dataclasses.dataclass
class Schedule:
    """The learning-rate schedule; `total_steps` may be fixed late (time budget) and is checkpointed."""

    train: TrainSettings
    total_steps: int

    @property
    def name(self) -> str:
        return self.train.schedule

    def warmup(self) -> int:
        return optimizer.warmup_steps(self.total_steps, self.train.warmup_steps, self.train.warmup_fraction)

    def __call__(self, step: int) -> float:
        return optimizer.learning_rate(
            step,
            self.train.schedule,
            self.train.learning_rate,
            self.warmup(),
            self.total_steps,
            self.train.min_learning_rate,
        )


class Clock:
    """Training wall time, carried across restarts through the checkpoint metadata."""

    def __init__(self, elapsed_before: float):
        self.start = time.perf_counter() - elapsed_before
        self.last_save = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def since_save(self) -> float:
        return time.perf_counter() - self.last_save

    def saved(self) -> None:
        self.last_save = time.perf_counter()


class BudgetPlanner:
    """Turns a wall-clock budget into a step count from the speed of `calibration_steps` uninterrupted
    steps (after the first, which compiles); an evaluation or a save restarts the measurement."""

    def __init__(self, budget: float, calibration_steps: int):
        self.budget, self.calibration_steps = budget, max(1, calibration_steps)
        self.window: tuple[int, float] | None = None
        self.total_steps = 0
        self.seconds_per_step = 0.0

    def interrupted(self) -> None:
        self.window = None

    def plan(self, step: int, elapsed: float) -> bool:
        """True once the step count is known (then `total_steps` holds it); `elapsed` is the run's clock."""
        if step < 1:
            return False
        if self.window is None:
            self.window = (step, elapsed)
            return False
        first_step, started = self.window
        if step - first_step < self.calibration_steps:
            return False
        self.seconds_per_step = (elapsed - started) / (step - first_step)
        self.total_steps = step + max(1, int((self.budget - elapsed) / max(self.seconds_per_step, 1e-9)))
        return True


class Preemption:
    """Turns SIGTERM and a first Ctrl-C (SIGINT) into a flag the loop checks after every step: it then saves and
    stops, and `python -m slam_jax.main` exits 75. A second Ctrl-C stops at once, unsaved (older checkpoints stay).
    """

    def __init__(self):
        self.requested = False
        # A SIGINT the launcher ignores (a background job of a script) stays ignored.
        ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signals = (signal.SIGTERM,) if ignored else (signal.SIGTERM, signal.SIGINT)
        self._previous = {signum: signal.signal(signum, self._handle) for signum in signals}

    def _handle(self, signum, frame):
        self.requested = True
        if signum == signal.SIGINT:
            # The system's default action, not a Python handler, so that it ends even a long device step.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            progress.write(
                "Ctrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again: stop now, unsaved)"
            )

    def restore(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class Signals:
    """Decisions every process must take at the same step: stop (a signal reached any one process) and save now
    (any process's clock says a time-based save is due). One process decides at once; several processes combine
    their flags with `parallel.any_process` after each step and act on them one step later, when the values are
    fetched (with the step's metrics), so the device queue never waits and all processes save the same step."""

    def __init__(self, mesh):
        self.mesh = mesh
        self.several = jax.process_count() > 1
        self._previous = None

    def after_step(self, stop: bool, save: bool) -> tuple[bool, bool]:
        if not self.several:
            return stop, save
        agreed = parallel.any_process(self.mesh, [int(stop), int(save)])
        previous, self._previous = self._previous, agreed
        if previous is None:
            return False, False
        values = np.asarray(previous)
        return bool(values[0]), bool(values[1])


def layout(mesh) -> dict:
    """Where a run's state lives: processes, devices and mesh shape (recorded in each checkpoint's metadata)."""
    return {"processes": jax.process_count(), "devices": jax.device_count(), "mesh": dict(mesh.shape)}


def describe_layout(saved: dict) -> str:
    processes, devices = saved["processes"], saved["devices"]
    mesh = " x ".join(f"{axis} {size}" for axis, size in saved["mesh"].items())
    per_process = devices // max(processes, 1)
    return (
        f"{processes} process{'es' if processes != 1 else ''} x {per_process} device{'s' if per_process != 1 else ''}"
        f" (mesh {mesh})"
    )


def resolve_stores(job: PretrainJob, workdir: Path) -> stores.ResolvedStores:
    """Process 0 prepares raw inputs while the others wait; then every process opens the same stores."""
    if jax.process_index() == 0:
        stores.resolve(job.data, workdir, job.seed)
    parallel.barrier("slam_jax: unit stores prepared")
    return stores.resolve(job.data, workdir, job.seed)


def run(config, workdir: Path, trainer_class: type["Trainer"] | None = None) -> dict:
    """Train as configured (pre-training, or the task of `trainer_class`); returns the final metrics.

    `config` (a ConfigDict or mapping) becomes the trainer's typed settings here, before any device work."""
    trainer_class = trainer_class or Trainer
    job = trainer_class.settings_class.from_config(config, "config")
    parallel.maybe_initialize(host_timeout=job.train.host_timeout)
    workdir = Path(workdir)
    # One run per workdir; the processes of the other hosts are part of process 0's run.
    lock = manifest.workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        trainer = trainer_class(job, workdir)
        try:
            result = trainer.fit()
        except BaseException as error:
            if not (isinstance(error, BucketError) or paths.error_line(error)):
                trainer.close()  # a storage that stopped answering would hold this for the commit timeout
            raise
        trainer.close()
        return result


def validation_summary(data: DataSettings, valid_stores: list[str]) -> str:
    """The start-up line saying how many sequences validation holds and where they come from."""
    count = sum(len(UnitStore(store)) for store in valid_stores)
    if data.valid_path:
        return (
            f"validation: {count:,} sequences from data.valid_path ({', '.join(valid_stores)}); "
            "nothing of data.train_path is held out"
        )
    if valid_stores:
        return (
            f"validation: {count:,} sequences held out of data.train_path "
            f"(data.valid_fraction={data.valid_fraction}) in {', '.join(valid_stores)}"
        )
    return "validation: none (data.train_path holds no valid split; data.valid_path names one)"


PROGRESS_SKIPPED = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu", "tokens_seen")


def progress_figures(row: dict) -> dict[str, str]:
    """The figures of a metrics row for a plain progress line: loss, lr, gradient norm, tokens/s, MFU, then the
    job's own metrics (DPO: reward accuracy, rewards, margin)."""
    figures = {
        "loss": f"{row['loss']:.4f}",
        "lr": f"{row['learning_rate']:.1e}",
        "grad_norm": f"{row['grad_norm']:.3g}",
        "tokens/s": f"{row['tokens_per_second']:,.0f}",
        "mfu": f"{row['mfu']:.1%}",
    }
    return figures | {key: f"{value:.4g}" for key, value in row.items() if key not in PROGRESS_SKIPPED}


def first_step_line(started: float, step_metrics, cache_dir: str | None) -> str:
    """The line for a process's first step (begun at `perf_counter()` `started`), which compiles the step unless
    JAX's persistent compilation cache (`cache_dir`, from `JAX_COMPILATION_CACHE_DIR`) holds it from a start before."""
    jax.block_until_ready(step_metrics)
    seconds = time.perf_counter() - started
    where = f"compilation cache {cache_dir}" if cache_dir else "set JAX_COMPILATION_CACHE_DIR to keep the compiled step"
    return f"first step {seconds:.1f} s, its compilation included ({where})"


def one_line(error: BaseException, limit: int = 160) -> str:
    """An exception as one short line (a TensorStore error runs to dozens of lines)."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    # TensorStore follows its message with the store's whole spec, which says nothing about the damage.
    text = f"{type(error).__name__}: {lines[0].split(' See full TensorStore details')[0]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Trainer:
    """State and helpers of one pre-training run (see `fit`)."""

    job = "pretrain"  # the name progress messages carry
    settings_class = PretrainJob

    def __init__(self, settings: PretrainJob, workdir: Path):
        self.settings, self.workdir = settings, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.mesh = parallel.make_mesh(settings.mesh.data, settings.mesh.fsdp, settings.mesh.tensor)
        abstract_state = self.build_model()
        self.shardings = self.state_shardings(abstract_state)
        self.abstract_state = jax.tree.map(
            lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract_state, self.shardings
        )
        batch_devices = parallel.data_parallel_size(self.mesh)
        self.global_rows = settings.train.per_device_batch_size * batch_devices
        # The rows of each global micro-batch this process's devices hold: the only ones it reads.
        self.batch_rows = parallel.process_rows(self.mesh, self.global_rows)
        self.layout = layout(self.mesh)
        self.checkpointer = checkpoints.Checkpointer(
            workdir / "checkpoints",
            settings.checkpoint.every_steps,
            settings.checkpoint.every_minutes,
            settings.checkpoint.keep,
            settings.checkpoint.keep_period,
            settings.checkpoint.commit_timeout_minutes,
        )
        self.finite = jax.jit(checkpoints.all_finite, out_shardings=parallel.replicated(self.mesh))
        self._probe = None
        # Checked before the data is prepared: a refused resume must not rebuild the stores its checkpoints read.
        self.manifest = self.manifest_values(batch_devices)
        resuming = bool(self.checkpointer.all_steps())
        changes = manifest.check(workdir, self.manifest, settings.train.allowed_changes, resuming)
        self.setup_task()
        if jax.process_index() == 0:
            train = settings.train
            run_now = {"job": self.job, "max_steps": train.max_steps, "time_budget": train.time_budget}
            manifest.record(workdir, self.manifest, changes, self.layout, run_now)
        why = "train.allow_changed" if resuming else "no checkpoint to resume yet"
        for key, (old, new) in changes.items():
            self.say(f"{manifest.MANIFEST}: {key} changed from {old!r} to {new!r} ({why})")
        self.writer = metrics.MetricsWriter(
            workdir,
            enabled=jax.process_index() == 0,
            tensorboard=settings.log.tensorboard,
            wandb_project=settings.log.wandb_project,
        )
        self._validation: dict[int, float | None] = {}
        self._zero_gradient_steps, self._stall_reported = 0, False

    @functools.cached_property
    def peak_flops(self) -> float:
        """The devices' summed peak FLOP/s for MFU (measured once, when the first metrics row needs it)."""
        return metrics.peak_flops_per_device(self.settings.train.peak_flops_per_device) * jax.device_count()

    def build_model(self) -> TrainState:
        """The model's config, graph and optimiser (`model_config`, `graphdef`, `optimizer`); returns the train
        state's shapes (unplaced)."""
        settings = self.settings
        self.model_config = build_model_config(settings.model, settings.data.context_length, settings.data.num_units)
        self.optimizer = optimizer.build(settings.train)
        abstract_model = qwen2.abstract_model(self.model_config)
        self.graphdef = nnx.graphdef(abstract_model)
        abstract_params = nnx.state(abstract_model, nnx.Param).to_pure_dict()
        return jax.eval_shape(lambda p: init_state(p, self.optimizer), abstract_params)

    def state_shardings(self, abstract_state: TrainState) -> TrainState:
        """Where each leaf of the train state lives on the mesh (parameters by `parallel`'s rules)."""
        return train_state_shardings(abstract_state, self.mesh)

    def make_schedule(self, total_steps: int) -> "Schedule":
        """The learning-rate schedule over `total_steps` (0: not known yet, a time budget sets it)."""
        return Schedule(self.settings.train, total_steps)

    def describe_compute(self) -> str:
        """The start-up line saying how the step computes."""
        return (
            f"attention kernel: {attention.resolve(self.model_config.attention)} "
            f"(model.attention={self.model_config.attention!r}, {jax.default_backend()}), "
            f"compute dtype {self.model_config.compute_dtype}"
        )

    def describe_start(self) -> str:
        """The line of a run that starts from its initialisation."""
        return (
            f"{self.model_config.num_params():,} params on mesh {dict(self.mesh.shape)}; "
            f"{self.tokens_per_step:,} tokens per step"
        )

    def manifest_values(self, batch_devices: int) -> dict:
        """The settings a resume of this run must not change (`training/manifest.py`)."""
        return manifest.values(self.settings, self.model_config, batch_devices)

    def setup_task(self) -> None:
        """Pre-training: unit stores, the packed-row step and its token accounting."""
        resolved = resolve_stores(self.settings, self.workdir)
        self.train_stores, self.valid_stores, self.train_weights = resolved.train, resolved.valid, resolved.weights
        self.say(validation_summary(self.settings.data, self.valid_stores))
        self.context_length = self.settings.data.context_length
        self.tokens_per_step = self.global_rows * self.settings.train.grad_accum_steps * self.context_length
        self.flops_per_token = metrics.flops_per_token(self.model_config, self.context_length)
        self.train_step = jit_train_step(self.graphdef, self.optimizer, self.shardings, self.mesh)
        self.eval_step = jit_eval_step(self.graphdef, self.shardings.params, self.mesh)

    def close(self):
        self.checkpointer.close()
        self.writer.close()

    def data_iterator(self, position: int = 0):
        """This process's rows of the global batches from global data position `position` (`pipeline`)."""
        accumulation = self.settings.train.grad_accum_steps
        return pipeline.train_dataset(
            self.train_stores,
            self.train_weights,
            self.context_length,
            rows_per_batch=accumulation * self.global_rows,
            seed=self.settings.seed,
            packing=self.settings.data.packing,
            rows=pipeline.step_rows(self.global_rows, accumulation, self.batch_rows),
            start=position,
        )

    def replayed_position(self, steps: int) -> int:
        """The data position after `steps` steps, for a checkpoint that predates saved positions."""
        return pipeline.position_after(
            self.train_stores,
            self.train_weights,
            self.context_length,
            self.settings.train.grad_accum_steps * self.global_rows,
            self.settings.seed,
            self.settings.data.packing,
            steps,
        )

    def to_device(self, local: dict[str, np.ndarray], accumulation: bool = True) -> dict[str, jax.Array]:
        """This process's rows (`batch_rows` of every micro-batch, in order) -> global arrays sharded over data x
        fsdp (with a leading accumulation axis)."""
        leading = (self.settings.train.grad_accum_steps,) if accumulation else ()
        arrays = {}
        for key, value in local.items():
            rest = value.shape[1:]
            target = parallel.batch_sharding(self.mesh, leading_axes=len(leading), trailing_axes=len(rest))
            local_value = value.reshape(*leading, len(self.batch_rows), *rest)
            global_shape = (*leading, self.global_rows, *rest)
            arrays[key] = parallel.global_batch(local_value, self.batch_rows, target, global_shape, len(leading))
        return arrays

    def probe_batch(self) -> dict[str, jax.Array]:
        """The first micro-batch of the run's data: what a checkpoint's loss is checked on before it is trusted."""
        batches = self.data_iterator(0)
        try:
            first = next(batches)
        finally:
            batches.close()
        rows = len(self.batch_rows)
        return self.to_device({key: value[:rows] for key, value in first.items()}, accumulation=False)

    def probe_loss(self, params) -> float:
        """The model's token-mean loss on `probe_batch`: finite parameters can still give NaN (|w| ~ 1e30)."""
        if self._probe is None:
            self._probe = self.probe_batch()
        loss_sum, tokens = self.eval_step(params, self._probe)
        return float(loss_sum) / max(float(tokens), 1.0)

    def initial_state(self) -> TrainState:
        """Parameters from `model.init_from` or a seeded random init, placed with their shardings."""
        if self.settings.model.init_from:
            init_dir = storage.resolve_model_dir(self.settings.model.init_from)
            params = storage.load_params(init_dir, self.model_config, self.shardings.params)  # each its own shards
        else:
            params = qwen2.get_params(qwen2.init_model(self.model_config, seed=self.settings.seed))
            params = jax.device_put(params, self.shardings.params)
        return jax.jit(lambda p: init_state(p, self.optimizer), out_shardings=self.shardings)(params)

    def restore_newest(self) -> tuple[TrainState, dict] | None:
        """The state and metadata of the newest usable checkpoint (None: the workdir has none yet), restored onto
        this run's mesh and process count whatever layout saved it.

        A checkpoint that cannot be read (a missing or truncated file, garbled metadata), that holds NaN or inf, or
        whose model gives a non-finite loss on the run's first batch (`probe_loss`) is skipped for the next older
        one, and each skipped one is moved to WORKDIR/rejected_checkpoints/ with a one-line warning. When none is
        usable and some were unreadable, one TrainingError line lists them (the files may be repairable); when
        the only faults are non-finite states, they are set aside and the run starts from its initialisation.
        """
        rejected = []
        suspects = checkpoints.suspects(self.checkpointer.directory)
        for step in self.checkpointer.all_steps():
            if str(step) in suspects:
                rejected.append((step, f"is suspect ({suspects[str(step)]})"))
                continue
            try:
                state, meta = self.checkpointer.restore(step, self.abstract_state)
            except Exception as error:  # noqa: BLE001 - Orbax, TensorStore and json each raise their own type
                rejected.append((step, f"is unreadable ({one_line(error)})"))
                continue
            if not bool(self.finite(state)):
                rejected.append((step, "holds NaN or inf"))
                continue
            loss = self.probe_loss(state.params)
            if not math.isfinite(loss):
                rejected.append((step, f"gives a non-finite loss ({loss}) on the first batch"))
                continue
            self.set_aside(rejected, step)
            return state, meta
        if any("unreadable" in why for _, why in rejected):
            tried = "; ".join(f"step {step} {why}" for step, why in rejected)
            raise TrainingError(
                f"no usable checkpoint in {self.checkpointer.directory}: {tried}; move them away to start afresh, "
                "or use another --workdir"
            )
        self.set_aside(rejected, None)
        return None

    def set_aside(self, rejected: list[tuple[int, str]], resumed_step: int | None) -> None:
        """Move the skipped checkpoints out of the way (process 0; they are kept, not deleted) and say so."""
        if not rejected:
            return
        then = "starting from the initialisation" if resumed_step is None else f"resuming from step {resumed_step}"
        if jax.process_index() == 0:
            for step, why in rejected:
                target = self.checkpointer.set_aside(step, why)
                self.warn(f"checkpoint step {step} {why}: moved to {target}; {then}")
        parallel.barrier("slam_jax: unusable checkpoints set aside")
        self.checkpointer.reload()

    def check_finite(self, step: int, state: TrainState) -> None:
        """Stop before a state holding NaN or inf is evaluated or saved: an update can blow the parameters up
        while the loss it came from was finite, and a saved non-finite state would poison every resume."""
        if not bool(self.finite(state)):
            raise TrainingError(
                f"the parameters or optimiser state after step {step} hold NaN or inf; stopped without saving them; "
                f"{self.last_checkpoint()} (resume with a lower train.learning_rate)"
            )

    def last_checkpoint(self) -> str:
        latest = self.checkpointer.latest_step()
        return f"the last finite checkpoint is {'none' if latest is None else f'step {latest}'}"

    def mark_suspect(self, step: int, loss: float) -> str | None:
        """A non-finite loss at `step` is the loss of the state after step - 1 on that step's batch: when that state
        is a checkpoint, it is recorded as suspect (`checkpoints.mark_suspect`) and a resume sets it aside for the
        next older one. Returns the sentence saying so (None: the state was not saved)."""
        if self.checkpointer.latest_step() != step - 1:
            return None
        if jax.process_index() == 0:
            checkpoints.mark_suspect(self.checkpointer.directory, step - 1, f"loss {loss} at step {step}")
        older = [saved for saved in self.checkpointer.all_steps() if saved < step - 1]
        return (
            f"checkpoint step {step - 1} gave it and is marked suspect: a resume sets it aside and continues from "
            f"{f'step {older[0]}' if older else 'the initialisation'}"
        )

    def last_committed(self) -> str:
        """The newest checkpoint committed on disk (what the watchdog's line names, from its thread)."""
        return checkpoints.last_committed(self.checkpointer.directory)

    def save(self, step: int, state: TrainState, iterator, clock: "Clock", schedule: "Schedule") -> None:
        """Save `step` once its model gives a finite loss (a usable state, not only finite numbers)."""
        loss = self.probe_loss(state.params)
        if not math.isfinite(loss):
            raise TrainingError(
                f"the model after step {step} gives a non-finite loss ({loss}) on the first batch although its "
                f"parameters are finite; stopped without saving it; {self.last_checkpoint()} (resume with a lower "
                "train.learning_rate)"
            )
        meta = {**self.meta(step, clock, schedule), "data_position": int(iterator.position), "layout": self.layout}
        self.checkpointer.save(step, state, meta, self.model_config)
        self.writer.sync()  # a workdir in a bucket: its logs reach the bucket with each checkpoint
        clock.saved()

    def evaluate(self, params) -> float | None:
        """Token-mean validation loss over (up to `train.eval_batches` batches of) the held-out stores."""
        if not self.valid_stores:
            return None
        dataset = pipeline.eval_dataset(
            self.valid_stores, self.context_length, self.global_rows, self.settings.data.packing, self.batch_rows
        )
        total, count = 0.0, 0.0
        for index, batch in enumerate(dataset):
            if self.settings.train.eval_batches and index >= self.settings.train.eval_batches:
                break
            loss_sum, tokens = self.eval_step(params, self.to_device(batch, accumulation=False))
            total, count = total + float(loss_sum), count + float(tokens)
        return total / count if count else None

    def fit(self) -> dict:
        train = self.settings.train
        budget = train.budget_seconds
        self.say(self.describe_compute())
        restored = self.restore_newest()
        meta = {"step": 0, "tokens_seen": 0.0, "elapsed_seconds": 0.0, "total_steps": int(train.max_steps)}
        if restored is not None:
            state, meta = restored
            self.say(f"resumed from {self.checkpointer.directory / str(meta['step'])} (step {meta['step']})")
            self.say_layout_change(meta.get("layout"))
        else:
            state = self.initial_state()
            self.say(self.describe_start())
        iterator = self.data_iterator(self.resume_position(meta))
        schedule = self.make_schedule(int(train.max_steps) or meta["total_steps"])
        step = int(meta["step"])
        self._tokens_seen = float(meta["tokens_seen"])
        clock = Clock(float(meta["elapsed_seconds"]))
        self._window_start, self._window_tokens = time.perf_counter(), 0
        planner = BudgetPlanner(budget, train.calibration_steps)
        preemption = Preemption()
        signals = Signals(self.mesh)
        watchdog = parallel.HostWatchdog(train.host_timeout, self.last_committed, self.job)
        bar = progress.Progress(
            self.job,
            schedule.total_steps or None,
            unit="step",
            label="step",
            initial=step,
            enabled=jax.process_index() == 0,
            mode=self.settings.log.progress,
            every_seconds=None,  # a plain line per metrics row (`record`)
        )
        pending, final, reason, stepped = None, {}, "max_steps", False
        try:
            with watchdog:
                while True:
                    if train.max_steps and step >= train.max_steps:
                        break
                    if budget and clock.elapsed() >= budget:
                        reason = "time_budget"
                        break
                    if not schedule.total_steps and planner.plan(step, clock.elapsed()):
                        schedule.total_steps = bar.total = planner.total_steps
                        self.say(
                            f"time budget {train.time_budget}: {planner.seconds_per_step:.3f} s/step -> "
                            f"{schedule.name} over {schedule.total_steps} steps"
                        )
                    lr = schedule(step) if schedule.total_steps else self.warmup_only(step)
                    batch = self.to_device(next(iterator))
                    started = time.perf_counter()
                    state, step_metrics = self.train_step(state, batch, jnp.asarray(lr, jnp.float32))
                    if not stepped:  # this process's first step: it compiled the step
                        self.say(first_step_line(started, step_metrics, jax.config.jax_compilation_cache_dir))
                        stepped = True
                    step += 1
                    stop, save_by_time = signals.after_step(
                        preemption.requested, self.checkpointer.due_by_time(clock.since_save())
                    )
                    if pending is not None:
                        final = self.record(pending, bar)
                    pending = (step, lr, step_metrics)
                    due_eval = train.eval_every and step % train.eval_every == 0
                    due_save = self.checkpointer.due_by_steps(step) or save_by_time
                    if not (due_eval or due_save or stop):
                        continue
                    final, pending = self.record(pending, bar), None
                    self.check_finite(step, state)
                    if due_eval:
                        self.log_validation(step, state.params)
                    if due_save or stop:
                        self.save(step, state, iterator, clock, schedule)
                    planner.interrupted()
                    if stop:
                        reason = "preempted"
                        break
                if pending is not None:
                    final = self.record(pending, bar)
                self.check_finite(step, state)
                if reason != "preempted":
                    validation = self._validation.get(step) or self.log_validation(step, state.params)
                    if validation is not None:
                        final["validation_loss"] = validation
                if self.checkpointer.latest_step() != step:
                    self.save(step, state, iterator, clock, schedule)
                self.checkpointer.wait()
        finally:
            preemption.restore()
            bar.close()
            iterator.close()
        loss = f"loss {final['loss']:.4f}" if "loss" in final else "no step to train (resumed at the end)"
        self.say(f"stopped at step {step} ({reason}); {loss}; checkpoint {self.workdir / 'checkpoints' / str(step)}")
        return {"step": step, "stop_reason": reason, **final}

    def resume_position(self, meta: dict) -> int:
        """The global data position to continue from: the checkpoint's, or (a checkpoint older than saved positions)
        the position its step reaches under today's global order."""
        if "data_position" in meta:
            return int(meta["data_position"])
        if not meta["step"]:
            return 0
        self.warn(
            f"checkpoint step {meta['step']} predates global data positions: its data continues from where step "
            f"{meta['step']} ends under the global order, not exactly where that run was"
        )
        return self.replayed_position(int(meta["step"]))

    def say_layout_change(self, saved: dict | None) -> None:
        """One line when the checkpoint was saved on another number of processes, devices or mesh shape."""
        if saved and saved != self.layout:
            self.say(
                f"layout changed: saved on {describe_layout(saved)}, resumed on {describe_layout(self.layout)}; the "
                f"global batch is the same {self.global_rows} rows x {self.settings.train.grad_accum_steps} "
                "micro-batches, so the run continues as it would have"
            )

    def warmup_only(self, step: int) -> float:
        """lr while a time-budget run is still measuring its speed (always inside the warmup)."""
        return optimizer.learning_rate(
            step, "constant", self.settings.train.learning_rate, self.settings.train.warmup_steps, 0
        )

    def say(self, message: str) -> None:
        """A line on stdout, from process 0 only."""
        if jax.process_index() == 0:
            progress.write(f"[{self.job}] {message}")

    def warn(self, message: str) -> None:
        """A warning on stderr from every process, those other than 0 naming theirs (`[process N] `)."""
        progress.write(f"{progress.process_prefix()}[{self.job}] warning: {message}", file=sys.stderr)

    def meta(self, step: int, clock: "Clock", schedule: Schedule) -> dict:
        return {
            "step": step,
            "tokens_seen": self._tokens_seen,
            "elapsed_seconds": clock.elapsed(),
            "total_steps": int(schedule.total_steps),
            "seed": int(self.settings.seed),
        }

    def record(self, pending, bar: progress.Progress) -> dict:
        """Fetch a finished step's metrics, stop on NaN, warn of a stall, and log them (JSONL, TensorBoard,
        progress bar or, with each row, a plain progress line)."""
        step, lr, values = self.fetch(pending)
        now = time.perf_counter()
        self._tokens_seen += self.tokens_per_step
        self._window_tokens += self.tokens_per_step
        # Throughput over the steps since the last logged row (the first row's window includes compilation).
        tokens_per_second = self._window_tokens / max(now - self._window_start, 1e-9)
        row = {
            "loss": values["loss"],
            "learning_rate": lr,
            "grad_norm": values["grad_norm"],
            "tokens_per_second": tokens_per_second,
            "mfu": tokens_per_second * self.flops_per_token / self.peak_flops,
            "tokens_seen": self._tokens_seen,
            **{key: value for key, value in values.items() if key not in ("loss", "grad_norm", "tokens")},
        }
        bar.update(step - bar.n, loss=f"{row['loss']:.3f}", tok_s=f"{tokens_per_second:,.0f}", mfu=f"{row['mfu']:.1%}")
        if step % self.settings.log.every_steps == 0 or step == 1:
            self.writer.write(step, row)
            self._window_start, self._window_tokens = now, 0
            bar.emit(progress_figures(row))
        return row

    def fetch(self, pending) -> tuple[int, float, dict[str, float]]:
        """(step, lr, metrics as floats) of a finished step: a non-finite metric stops the run without saving (and
        marks the checkpoint that gave it suspect); a gradient stuck at exactly 0 warns (`watch_stall`)."""
        step, lr, step_metrics = pending
        values = {key: float(value) for key, value in jax.device_get(step_metrics).items()}
        if not all(math.isfinite(value) for value in values.values()):
            suspect = self.mark_suspect(step, values["loss"])
            raise TrainingError(
                f"{self.non_finite(values)} at step {step}; stopped without saving this state; "
                f"{suspect or self.last_checkpoint()} (resume with a lower train.learning_rate)"
            )
        self.watch_stall(step, values["grad_norm"])
        return step, lr, values

    def non_finite(self, values: dict[str, float]) -> str:
        """What went non-finite, for the line that stops the run."""
        return f"loss is {values['loss']} (grad norm {values['grad_norm']})"

    def watch_stall(self, step: int, grad_norm: float) -> None:
        """Warn once (stderr and metrics) when the gradient has been exactly zero for `train.stall_steps` steps in a
        row: the run would otherwise go on, and exit 0, without learning anything."""
        self._zero_gradient_steps = self._zero_gradient_steps + 1 if grad_norm == 0.0 else 0
        stall_steps = self.settings.train.stall_steps
        if not stall_steps or self._stall_reported or self._zero_gradient_steps < stall_steps:
            return
        self._stall_reported = True
        self.warn(
            f"the gradient norm has been exactly 0 for {stall_steps} steps in a row (steps {step - stall_steps + 1}"
            f"-{step}): the model is not learning; check train.learning_rate and the data"
        )
        self.writer.write(step, {"stalled_steps": stall_steps})

    def log_validation(self, step: int, params) -> float | None:
        validation = self.evaluate(params)
        self._validation[step] = validation
        if validation is not None and not math.isfinite(validation):
            raise TrainingError(
                f"validation loss is {validation} at step {step}; stopped without saving this state; "
                f"{self.last_checkpoint()}"
            )
        if validation is not None:
            self.writer.write(step, {"validation_loss": validation})
            self.say(f"step {step}: validation loss {validation:.4f}")
        return validation
