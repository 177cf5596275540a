"""The typed config sections of the training jobs (`pretrain`, `dpo`), checked once when a job starts.

Defaults are the paper's values (configs/slam.py and configs/slam_dpo.py spell them out with their units);
`PretrainJob.from_config(config, "config")` turns a whole config into these dataclasses, so a mistyped key or an
out-of-range value is one line naming `config.<section>.<key>` before any device work starts.
"""

import dataclasses

from slam_jax import progress
from slam_jax.data.stores import DataSettings
from slam_jax.models import config as model_config
from slam_jax.settings import Settings, parse_duration, setting

SCHEDULES = ("cosine", "constant", "inverse_sqrt")
MU_DTYPES = ("float32", "bfloat16")
REFERENCES = ("precomputed", "frozen")
LOSS_TYPES = ("sigmoid", "ipo")
BAD_ROWS = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class ModelSettings(Settings):
    """`model`: which network to train and how it executes (models/config.py holds the architectures)."""

    preset: str = setting("slam", choices=tuple(model_config.PRESETS))
    init_from: str = setting("", exists=True)
    compute_dtype: str = setting("bfloat16", choices=model_config.COMPUTE_DTYPES)
    scan_layers: bool = False
    remat_policy: str = setting("none", choices=model_config.REMAT_POLICIES)
    attention: str = setting("auto", choices=model_config.ATTENTION_BACKENDS)


@dataclasses.dataclass(frozen=True)
class MeshSettings(Settings):
    """`mesh`: devices per axis (parallel.make_mesh); one axis may be -1 (the rest of the devices)."""

    data: int = setting(-1, minimum=-1)
    fsdp: int = setting(1, minimum=-1)
    tensor: int = setting(1, minimum=-1)

    def validate(self) -> None:
        sizes = (self.data, self.fsdp, self.tensor)
        if 0 in sizes or sizes.count(-1) > 1:
            raise ValueError(f"{self._source}: sizes {sizes} must be >= 1, with at most one -1")


class RunLimits:
    """What every training job's `train` section shares (its fields `max_steps`, `time_budget`, `allow_changed`):
    a run ends by steps and/or a wall-clock budget, and a resume may change the manifest keys it allows."""

    def validate(self) -> None:
        if not self.max_steps and not self.budget_seconds:
            raise ValueError(f"{self._source}: set max_steps and/or time_budget")

    @property
    def allowed_changes(self) -> tuple[str, ...]:
        return tuple(key.strip() for key in self.allow_changed.split(",") if key.strip())

    @property
    def budget_seconds(self) -> float:
        return parse_duration(self.time_budget, f"{self._source}.time_budget")


@dataclasses.dataclass(frozen=True)
class TrainSettings(RunLimits, Settings):
    """`train`: batch layout, optimiser, schedule, budget and evaluation cadence."""

    per_device_batch_size: int = setting(8, above=0)
    grad_accum_steps: int = setting(16, above=0)
    max_steps: int = setting(0, minimum=0)
    time_budget: str = "23h30m"
    calibration_steps: int = setting(10, above=0)
    learning_rate: float = setting(1e-3, minimum=0.0)
    min_learning_rate: float = setting(5e-5, minimum=0.0)
    schedule: str = setting("cosine", choices=SCHEDULES)
    warmup_steps: int = setting(100, minimum=0)
    warmup_fraction: float = setting(0.01, minimum=0.0, maximum=1.0)
    grad_clip: float = setting(0.5, above=0.0)
    adam_b1: float = setting(0.9, minimum=0.0, maximum=1.0)
    adam_b2: float = setting(0.999, minimum=0.0, maximum=1.0)
    adam_eps: float = setting(1e-8, minimum=0.0)
    weight_decay: float = setting(0.0, minimum=0.0)
    mu_dtype: str = setting("float32", choices=MU_DTYPES)
    eval_every: int = setting(1000, minimum=0)
    eval_batches: int = setting(100, minimum=0)
    peak_flops_per_device: float = setting(0.0, minimum=0.0)
    stall_steps: int = setting(20, minimum=0)  # warn after this many steps in a row with a zero gradient; 0: off
    # Several hosts: a process unheard for this many seconds is lost and every process stops (exit 69); 0: off.
    host_timeout: float = setting(60.0, minimum=0.0)
    allow_changed: str = ""  # run-manifest keys a resume may change (training/manifest.py), comma-separated


@dataclasses.dataclass(frozen=True)
class CheckpointSettings(Settings):
    """`checkpoint`: when to save and what to keep."""

    every_steps: int = setting(1000, minimum=0)  # 0: by time only
    every_minutes: float = setting(30.0, minimum=0.0)
    keep: int = setting(3, above=0)
    keep_period: int = setting(0, minimum=0)
    commit_timeout_minutes: float = setting(30.0, above=0.0)


@dataclasses.dataclass(frozen=True)
class LogSettings(Settings):
    """`log`: metrics.jsonl / TensorBoard / wandb, and the progress on stderr (`slam_jax/progress.py`)."""

    every_steps: int = setting(10, above=0)
    tensorboard: bool = True
    wandb_project: str = ""
    progress: str = setting("auto", choices=progress.MODES)


@dataclasses.dataclass(frozen=True)
class DpoSettings(Settings):
    """`dpo`: the preference pairs and the objective (TRL's DPO / IPO, optional RPO term)."""

    train_path: str = ""
    beta: float = setting(0.1, above=0.0)
    label_smoothing: float = setting(0.0, minimum=0.0, maximum=0.5)
    loss_type: str = setting("sigmoid", choices=LOSS_TYPES)
    rpo_alpha: float = setting(0.0, minimum=0.0)
    reference: str = setting("precomputed", choices=REFERENCES)
    max_prompt_length: int = setting(256, above=0)
    max_completion_length: int = setting(256, above=0)
    truncate: bool = True
    bad_rows: str = setting("error", choices=BAD_ROWS)
    auto_bleu_threshold: float = setting(0.3, minimum=0.0)
    units_cache: str = ""


@dataclasses.dataclass(frozen=True)
class PretrainJob(Settings):
    """A whole `pretrain` config."""

    mode: str = "pretrain"
    seed: int = 42
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    mesh: MeshSettings = MeshSettings()
    train: TrainSettings = TrainSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    log: LogSettings = LogSettings()
