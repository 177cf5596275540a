"""`mode: train_vocoder`: train the unit vocoder (CodeHiFiGAN) on a tokeniser's units and their audio.

    python -m slam_jax.main --config configs/vocoder.py --config.data.train_path=UNITS_DIR --workdir W

The same loop as pre-training (training/loop.py: the workdir lock and run manifest, the jit-sharded step over the
one mesh, Orbax checkpoints with exact resume after a kill, a time budget, SIGTERM saves, progress lines, metrics
and TensorBoard), with HiFi-GAN's step (training/vocoder_step.py) and data (speech/segments.py). Validation
generates each held-out clip whole from its units and reports the L1 distance of its log-mel to the real one's
(`validation_mel_l1`, HiFi-GAN's "Mel-Spec. Error"); TensorBoard also gets both mels as images and the audio.

When the run ends, WORKDIR/vocoder holds the trained vocoder of its last checkpoint (`slam_jax.load_vocoder` reads
it: weight norm folded); `python -m conversion.vocoder_to_textless --vocoder WORKDIR/vocoder --out DIR` writes it
in the reference's layout (`generator.pt` + `config.json`, which textlesslib's CodeHiFiGANVocoder loads).
"""

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import parallel, progress
from slam_jax.errors import TrainingError
from slam_jax.models import discriminators, weights
from slam_jax.models import vocoder as generator_model
from slam_jax.paths import Path
from slam_jax.settings import Settings, setting
from slam_jax.speech import mel as mel_frontend
from slam_jax.speech import segments
from slam_jax.training import loop, vocoder_step
from slam_jax.training.settings import CheckpointSettings, LogSettings, MeshSettings, RunLimits
from slam_jax.training.step import TrainState

VOCODER_DIR = "vocoder"
MEDIA_CLIPS = 2  # held-out clips whose mels and audio go to TensorBoard at each validation


@dataclasses.dataclass(frozen=True)
class VocoderDataSettings(Settings):
    """`data`: the units (a tokeniser's output: features.jsonl) and their audio."""

    train_path: str = ""  # tokeniser output folders or features.jsonl files, comma-separated
    valid_path: str = ""  # held-out clips ('' = `valid_clips` of train_path)
    valid_clips: int = setting(4, minimum=0)
    audio_root: str = ""  # resolves relative file_name entries ('' = as written)
    num_units: int = setting(500, above=0)
    segment_frames: int = setting(14, above=0)  # CodeHiFiGAN: 8960 samples = 14 frames of 640
    read_threads: int = setting(8, above=0)


@dataclasses.dataclass(frozen=True)
class VocoderModelSettings(Settings):
    """`model`: the generator (models/vocoder.py) and the discriminators; or `init_from` a vocoder folder."""

    init_from: str = setting("", exists=True)  # a vocoder folder (converted or trained) to fine-tune
    embedding_dim: int = setting(128, above=0)
    upsample_rates: tuple[int, ...] = (5, 4, 4, 4, 2)
    upsample_kernel_sizes: tuple[int, ...] = (11, 8, 8, 8, 4)
    upsample_initial_channel: int = setting(512, above=0)
    resblock: str = setting("1", choices=generator_model.RESBLOCK_TYPES)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    duration_predictor_dim: int = setting(128, minimum=0)  # 0: no duration predictor
    duration_dropout: float = setting(0.5, minimum=0.0, maximum=0.99)
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)  # the multi-period discriminator's
    discriminator_divisor: int = setting(1, choices=discriminators.DIVISORS)  # both discriminators' channels / this
    # how the MSD's grouped convolutions run: "xla" (one grouped conv) or "per_group" (docs/vocoder.md)
    grouped_convolutions: str = setting("xla", choices=discriminators.GROUPINGS)


@dataclasses.dataclass(frozen=True)
class MelSettings(Settings):
    """`mel`: the mel front end of the L1 loss (HiFi-GAN's `mel_spectrogram`)."""

    n_fft: int = setting(1024, above=0)
    num_mels: int = setting(80, above=0)
    hop_size: int = setting(256, above=0)
    win_size: int = setting(1024, above=0)
    fmin: float = setting(0.0, minimum=0.0)
    fmax_for_loss: float = setting(0.0, minimum=0.0)  # 0: the Nyquist frequency (HiFi-GAN's None)

    def validate(self) -> None:
        if self.win_size > self.n_fft:
            raise ValueError(f"{self._source}.win_size={self.win_size}: must be <= n_fft ({self.n_fft})")


@dataclasses.dataclass(frozen=True)
class VocoderTrainSettings(RunLimits, Settings):
    """`train`: batch, AdamW (HiFi-GAN: 2e-4, betas 0.8 / 0.99, torch's weight decay 0.01), the per-epoch decay."""

    per_device_batch_size: int = setting(16, above=0)
    max_steps: int = setting(0, minimum=0)
    time_budget: str = "24h"
    calibration_steps: int = setting(10, above=0)
    learning_rate: float = setting(2e-4, minimum=0.0)
    lr_decay: float = setting(0.999, above=0.0, maximum=1.0)  # per epoch, as torch's ExponentialLR
    adam_b1: float = setting(0.8, minimum=0.0, maximum=1.0)
    adam_b2: float = setting(0.99, minimum=0.0, maximum=1.0)
    adam_eps: float = setting(1e-8, minimum=0.0)
    weight_decay: float = setting(0.01, minimum=0.0)
    mel_weight: float = setting(45.0, minimum=0.0)
    duration_weight: float = setting(1.0, minimum=0.0)
    eval_every: int = setting(1000, minimum=0)
    stall_steps: int = setting(20, minimum=0)
    host_timeout: float = setting(60.0, minimum=0.0)
    allow_changed: str = ""

    grad_accum_steps = 1  # one batch per step (what the shared loop reads)


@dataclasses.dataclass(frozen=True)
class VocoderJob(Settings):
    """A whole `train_vocoder` config (configs/vocoder.py)."""

    mode: str = "train_vocoder"
    seed: int = 1234  # HiFi-GAN's
    data: VocoderDataSettings = VocoderDataSettings()
    model: VocoderModelSettings = VocoderModelSettings()
    mel: MelSettings = MelSettings()
    mesh: MeshSettings = MeshSettings()
    train: VocoderTrainSettings = VocoderTrainSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    log: LogSettings = LogSettings()

    def validate(self) -> None:
        if not self.data.train_path:
            raise ValueError("config.data.train_path: empty (name a tokeniser's output folder or its features.jsonl)")


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What the compiled step needs of the job (static: hashed into the compiled function)."""

    seed: int
    duration_dropout: float
    mel_weight: float
    duration_weight: float
    mel_n_fft: int
    mel_num_mels: int
    mel_sampling_rate: int
    mel_hop_size: int
    mel_win_size: int
    mel_fmin: float
    mel_fmax: float | None

    @property
    def mel_loss_arguments(self) -> dict:
        return {
            "n_fft": self.mel_n_fft,
            "num_mels": self.mel_num_mels,
            "sampling_rate": self.mel_sampling_rate,
            "hop_size": self.mel_hop_size,
            "win_size": self.mel_win_size,
            "fmin": self.mel_fmin,
            "fmax": self.mel_fmax,
        }


def generator_config(job: VocoderJob) -> generator_model.VocoderConfig:
    """The generator's architecture: the `init_from` vocoder's, or the `model` section's."""
    if job.model.init_from:
        config = weights.load_config(generator_model.FAMILY, Path(job.model.init_from))
        if config.num_embeddings != job.data.num_units:
            raise ValueError(
                f"config.model.init_from={job.model.init_from!r}: a vocoder of {config.num_embeddings} units, "
                f"data.num_units={job.data.num_units}"
            )
    else:
        model = job.model
        config = generator_model.VocoderConfig.from_dict(
            {
                "num_embeddings": job.data.num_units,
                "embedding_dim": model.embedding_dim,
                "upsample_rates": model.upsample_rates,
                "upsample_kernel_sizes": model.upsample_kernel_sizes,
                "upsample_initial_channel": model.upsample_initial_channel,
                "resblock_kernel_sizes": model.resblock_kernel_sizes,
                "resblock_dilation_sizes": model.resblock_dilation_sizes,
                "resblock": model.resblock,
                "duration_predictor_dim": model.duration_predictor_dim,
            },
            "config.model",
        )
    if config.num_samples(job.data.segment_frames) != job.data.segment_frames * config.hop_length:
        raise ValueError(
            "config.model: every upsample_kernel_sizes[i] - upsample_rates[i] must be even, so that n frames make "
            f"n x {config.hop_length} samples, as the segments' audio"
        )
    if num_speakers := config.num_speakers or config.num_styles:
        raise ValueError(f"config.model.init_from: a vocoder with {num_speakers} speakers/styles (one voice only)")
    return config


def torch_like_init(tree, key: jax.Array, path: tuple[str, ...] = ()):
    """PyTorch's default initialisation, which is what the reference's weight-normed layers start from (its
    `init_weights` writes the computed weight, which weight norm recomputes from g and v: a no-op): kernels and
    biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in as torch counts it (a ConvTranspose1d's: out x width);
    embeddings N(0, 1); layer norms ones and zeros."""
    if not isinstance(tree, dict):
        return jax.random.normal(key, tree.shape, tree.dtype) if path[-1].endswith("embedding") else tree
    if "kernel" in tree:
        kernel = tree["kernel"]
        if kernel.ndim == 2:  # a linear layer [in, out]
            fan_in = kernel.shape[0]
        else:  # [width, in, out]
            fan_in = kernel.shape[0] * (kernel.shape[2] if "upsample" in path else kernel.shape[1])
        bound = 1.0 / math.sqrt(fan_in)
        keys = jax.random.split(key, len(tree))
        return {
            name: jax.random.uniform(subkey, value.shape, value.dtype, -bound, bound)
            for (name, value), subkey in zip(tree.items(), keys, strict=True)
        }
    keys = jax.random.split(key, max(len(tree), 1))
    return {
        name: torch_like_init(value, subkey, (*path, str(name)))
        for (name, value), subkey in zip(tree.items(), keys, strict=True)
    }


def fresh_params(config: generator_model.VocoderConfig, periods: tuple[int, ...], divisor: int, seed: int):
    """(training parameters {"generator", "mpd", "msd"}, spectral vectors) of a new run."""
    rngs = nnx.Rngs(seed)
    generator = generator_model.CodeHiFiGAN(config, rngs=rngs)
    generator_params = torch_like_init(nnx.state(generator, nnx.Param).to_pure_dict(), jax.random.key(seed + 1))
    mpd = discriminators.MultiPeriodDiscriminator(periods, divisor=divisor, rngs=rngs)
    msd = discriminators.MultiScaleDiscriminator(divisor=divisor, rngs=rngs)
    params = {
        "generator": vocoder_step.split_weight_norm(generator_params),
        "mpd": nnx.state(mpd, nnx.Param).to_pure_dict(),
        "msd": nnx.state(msd, nnx.Param).to_pure_dict(),
    }
    return params, nnx.state(msd, discriminators.SpectralVector).to_pure_dict()


def step_settings(job: VocoderJob, sampling_rate: int) -> StepSettings:
    """The compiled step's settings of a job whose generator makes `sampling_rate` Hz audio."""
    return StepSettings(
        seed=job.seed,
        duration_dropout=job.model.duration_dropout,
        mel_weight=job.train.mel_weight,
        duration_weight=job.train.duration_weight,
        mel_n_fft=job.mel.n_fft,
        mel_num_mels=job.mel.num_mels,
        mel_sampling_rate=sampling_rate,
        mel_hop_size=job.mel.hop_size,
        mel_win_size=job.mel.win_size,
        mel_fmin=job.mel.fmin,
        mel_fmax=job.mel.fmax_for_loss or None,
    )


@dataclasses.dataclass
class Schedule:
    """HiFi-GAN's learning rate: `learning_rate` x `lr_decay` ** epoch (torch's ExponentialLR stepped per epoch)."""

    learning_rate: float
    lr_decay: float
    steps_per_epoch: int
    total_steps: int
    name: str = "exponential decay per epoch"

    def __call__(self, step: int) -> float:
        return self.learning_rate * self.lr_decay ** (step // self.steps_per_epoch)


class VocoderTrainer(loop.Trainer):
    """The training loop with the vocoder's model, data, step and validation."""

    job = "train_vocoder"
    settings_class = VocoderJob

    # -- model --------------------------------------------------------------------------------------------------
    def build_model(self) -> TrainState:
        job = self.settings
        self.model_config = generator_config(job)
        train = job.train
        optimizer = vocoder_step.adamw(train.adam_b1, train.adam_b2, train.adam_eps, train.weight_decay)
        self.optimizers = {"generator": optimizer, "discriminator": optimizer}
        self.optimizer = None
        divisor = job.model.discriminator_divisor
        self.grouping = job.model.grouped_convolutions
        self.graphs = {
            "generator": nnx.graphdef(
                nnx.eval_shape(lambda: generator_model.CodeHiFiGAN(self.model_config, rngs=nnx.Rngs(0)))
            ),
            "mpd": nnx.graphdef(
                nnx.eval_shape(
                    lambda: discriminators.MultiPeriodDiscriminator(
                        job.model.periods, divisor=divisor, rngs=nnx.Rngs(0)
                    )
                )
            ),
            "msd": nnx.split(
                nnx.eval_shape(
                    lambda: discriminators.MultiScaleDiscriminator(divisor, self.grouping, rngs=nnx.Rngs(0))
                ),
                nnx.Param,
                discriminators.SpectralVector,
            )[0],
        }
        self.graphdef = self.graphs["generator"]
        return jax.eval_shape(
            lambda: self.state_from(
                *fresh_params(self.model_config, job.model.periods, job.model.discriminator_divisor, 0)
            )
        )

    def state_from(self, params: dict, spectral: dict) -> TrainState:
        discriminator = {"mpd": params["mpd"], "msd": params["msd"]}
        opt_state = {
            "generator": self.optimizers["generator"].init(params["generator"]),
            "discriminator": self.optimizers["discriminator"].init(discriminator),
            "spectral": spectral,
        }
        return TrainState(params, opt_state, jnp.zeros((), jnp.int32))

    def state_shardings(self, abstract_state: TrainState) -> TrainState:
        """Replicated: the vocoder and its discriminators (~85M parameters at the paper's size) fit every device;
        the rows of each batch are split over the mesh."""
        return jax.tree.map(lambda _: parallel.replicated(self.mesh), abstract_state)

    def initial_state(self) -> TrainState:
        """A new run's state, initialised in one compiled program (eagerly, each of the ~200 initialisers would
        compile its own), placed with its shardings; `model.init_from` replaces the generator's parameters."""
        model = self.settings.model

        def fresh() -> TrainState:
            params, spectral = fresh_params(
                self.model_config, model.periods, model.discriminator_divisor, self.settings.seed
            )
            return self.state_from(params, spectral)

        state = jax.jit(fresh, out_shardings=self.shardings)()
        if model.init_from:
            loaded = weights.load_model(generator_model.FAMILY, Path(model.init_from))
            generator = vocoder_step.split_weight_norm(generator_model.get_params(loaded))
            generator = jax.device_put(generator, self.shardings.params["generator"])
            state = state._replace(params={**state.params, "generator": generator})
        return state

    def describe_compute(self) -> str:
        return (
            f"vocoder training on {jax.default_backend()}: float32, convolutions at HIGHEST precision, the MSD's "
            f"grouped convolutions {self.grouping.replace('_', ' ')}"
        )

    def describe_start(self) -> str:
        def count(tree):
            return sum(leaf.size for leaf in jax.tree.leaves(tree))

        params = self.abstract_state.params
        frames = self.settings.data.segment_frames
        seconds = frames * self.model_config.hop_length / self.model_config.sampling_rate
        return (
            f"{count(params['generator']):,} generator and {count([params['mpd'], params['msd']]):,} discriminator "
            f"params on mesh {dict(self.mesh.shape)}; {self.global_rows} segments of {frames} frames ({seconds:.2f} s) "
            f"per step, {self.segments.steps_per_epoch} steps per epoch"
        )

    def manifest_values(self, batch_devices: int) -> dict:
        job = self.settings
        self._entries()
        return {
            "model.init_from": manifest_architecture(self.model_config) if job.model.init_from else "",
            "model": manifest_architecture(self.model_config),
            "model.periods": list(job.model.periods),
            "data.train_path": segments.describe(self.train_entries),
            "data.valid_path": segments.describe(self.valid_entries),
            "data.segment_frames": job.data.segment_frames,
            "data.num_units": job.data.num_units,
            "mel": job.mel.to_dict(),
            "train.global_batch_rows": job.train.per_device_batch_size * batch_devices,
            "seed": job.seed,
        }

    # -- data ---------------------------------------------------------------------------------------------------
    def _entries(self) -> None:
        """The clips' entries (units and audio names, not yet audio), split into training and held-out ones."""
        if hasattr(self, "train_entries"):
            return
        data = self.settings.data
        read = [
            entry
            for path in segments.feature_files(data.train_path)
            for entry in segments.read_entries(path, data.num_units, data.audio_root)
        ]
        if data.valid_path:
            self.train_entries = read
            self.valid_entries = [
                entry
                for path in segments.feature_files(data.valid_path)
                for entry in segments.read_entries(path, data.num_units, data.audio_root)
            ]
        else:
            self.train_entries, self.valid_entries = segments.split(read, data.valid_clips, self.settings.seed)

    def setup_task(self) -> None:
        data, job = self.settings.data, self.settings
        started = time.perf_counter()
        self.train_clips = segments.load_clips(self.train_entries, data.read_threads)
        self.valid_clips = segments.load_clips(self.valid_entries, data.read_threads)
        seconds = sum(len(clip.samples) for clip in self.train_clips) / self.model_config.sampling_rate
        self.say(
            f"data: {len(self.train_clips)} training clips ({seconds / 3600:.2f} h of audio), "
            f"{len(self.valid_clips)} held out; read in {time.perf_counter() - started:.1f} s"
        )
        self.segments = segments.Segments(
            self.train_clips, data.segment_frames, self.model_config.hop_length, self.global_rows, job.seed
        )
        self.step_settings = step_settings(job, self.model_config.sampling_rate)
        self.batch_shardings = self.shardings_of_batches()
        self.real_media_logged = False  # the held-out clips' real mels and audio go to TensorBoard once
        self.train_step = vocoder_step.jit_vocoder_step(
            self.graphs, self.optimizers, self.step_settings, self.shardings, self.mesh, self.batch_shardings
        )
        self.samples_per_step = self.global_rows * data.segment_frames * self.model_config.hop_length
        self.valid_stores = []
        self._mel = jax.jit(lambda y: mel_frontend.mel_spectrogram(y, **self.step_settings.mel_loss_arguments))
        self._probe_mel = jax.jit(self._probe_mel_error)

    def shardings_of_batches(self) -> dict:
        example = self.segments.build(self.segments.rows(0)[:1])
        return {key: parallel.batch_sharding(self.mesh, trailing_axes=value.ndim - 1) for key, value in example.items()}

    def data_iterator(self, position: int = 0):
        return segments.batches(self.segments, self.batch_rows, position)

    def replayed_position(self, steps: int) -> int:
        return steps

    def to_device(self, local: dict[str, np.ndarray], accumulation: bool = True) -> dict[str, jax.Array]:
        """This process's rows -> global arrays, rows split over data x fsdp."""
        shardings = self.batch_shardings
        return {
            key: parallel.global_batch(value, self.batch_rows, shardings[key], (self.global_rows, *value.shape[1:]), 0)
            for key, value in local.items()
        }

    def make_schedule(self, total_steps: int) -> Schedule:
        train = self.settings.train
        return Schedule(train.learning_rate, train.lr_decay, self.segments.steps_per_epoch, total_steps)

    def warmup_only(self, step: int) -> float:
        return self.make_schedule(0)(step)

    # -- checks, validation, logging ----------------------------------------------------------------------------
    def _probe_mel_error(self, params, batch):
        y_hat, _ = vocoder_step.generator_outputs(
            params["generator"], batch, jax.random.key(0), self.graphs["generator"], 0.0
        )
        return jnp.mean(jnp.abs(self._mel(batch["audio"]) - self._mel(y_hat)))

    def probe_loss(self, params) -> float:
        """The generator's mel L1 on the run's first batch: a checkpoint must give a finite one."""
        if self._probe is None:
            self._probe = self.probe_batch()
        return float(self._probe_mel(params, self._probe))

    def vocoder_of(self, params) -> generator_model.Vocoder:
        model = nnx.merge(self.graphs["generator"], jax.device_get(vocoder_step.fold(params["generator"])))
        return generator_model.Vocoder(model, batch_size=4)

    def evaluate(self, params) -> float | None:
        """Mean L1 between the log-mels of each held-out clip and of its units' waveform, generated whole."""
        if not self.valid_clips:
            return None
        return self.mel_error(self.generate_valid(params))

    def mel_error(self, waves: list[np.ndarray]) -> float:
        """Mean over the held-out clips of the L1 between their log-mels and those of `waves` (their units')."""
        errors = []
        for clip, wave in zip(self.valid_clips, waves, strict=True):
            length = min(len(wave), len(clip.samples))
            real, fake = self._mel(clip.samples[None, :length]), self._mel(wave[None, :length])
            errors.append(float(jnp.mean(jnp.abs(real - fake))))
        return float(np.mean(errors))

    def generate_valid(self, params) -> list[np.ndarray]:
        vocoder = self.vocoder_of(params)
        return vocoder.vocode_batch([clip.frame_units for clip in self.valid_clips])

    def log_validation(self, step: int, params) -> float | None:
        waves = self.generate_valid(params) if self.valid_clips else []
        validation = self.mel_error(waves) if waves else None
        self._validation[step] = validation
        if validation is None:
            return None
        if not math.isfinite(validation):
            raise TrainingError(
                f"validation mel L1 is {validation} at step {step}; stopped without saving this state; "
                f"{self.last_checkpoint()}"
            )
        self.writer.write(step, {"validation_mel_l1": validation})
        self.say(f"step {step}: validation mel L1 {validation:.4f} ({len(self.valid_clips)} held-out clips)")
        self.log_media(step, waves)
        return validation

    def log_media(self, step: int, waves: list[np.ndarray]) -> None:
        """TensorBoard: the generated log-mels (images) and audio of the first held-out clips, and once the real."""
        if not self.writer.enabled:
            return
        rate = self.model_config.sampling_rate
        for index, (clip, wave) in enumerate(zip(self.valid_clips[:MEDIA_CLIPS], waves, strict=False)):
            mel = np.asarray(self._mel(wave[None]))[0]
            self.writer.media(step, f"valid_{index}/generated", mel.T, wave, rate)
            if not self.real_media_logged:
                real = np.asarray(self._mel(clip.samples[None]))[0]
                self.writer.media(0, f"valid_{index}/real", real.T, clip.samples, rate)
        self.real_media_logged = True

    def non_finite(self, values: dict[str, float]) -> str:
        return f"generator loss is {values['loss']} (discriminator loss {values['discriminator_loss']})"

    def record(self, pending, bar: progress.Progress) -> dict:
        """Fetch a finished step's losses (`fetch`: NaN stops, stalls warn) and log them."""
        step, lr, values = self.fetch(pending)
        now = time.perf_counter()
        self._window_tokens += self.samples_per_step
        rate = self._window_tokens / max(now - self._window_start, 1e-9) / self.model_config.sampling_rate
        row = {
            "learning_rate": lr,
            "audio_seconds_per_second": rate,
            "epoch": step // self.segments.steps_per_epoch,
            **values,
        }
        bar.update(step - bar.n, loss=f"{values['loss']:.3f}", mel=f"{values['mel_l1']:.3f}")
        if step % self.settings.log.every_steps == 0 or step == 1:
            self.writer.write(step, row)
            self._window_start, self._window_tokens = now, 0
            bar.emit(progress_figures(row))
        return row

    def meta(self, step: int, clock: loop.Clock, schedule) -> dict:
        """The checkpoint's metadata, with the audio the steps have trained on (`status` shows it)."""
        seen = step * self.samples_per_step / self.model_config.sampling_rate
        return {**super().meta(step, clock, schedule), "audio_seconds_seen": seen}

    def fit(self) -> dict:
        result = super().fit()
        self.export(result["step"])
        return result

    def export(self, step: int) -> None:
        """WORKDIR/vocoder from the checkpoint of `step`, weight norm folded: every process reads the checkpoint (a
        collective restore), process 0 alone writes the folder."""
        state, _ = self.checkpointer.restore(step, self.abstract_state)
        params = jax.device_get(vocoder_step.fold(state.params["generator"]))
        out = self.workdir / VOCODER_DIR
        if jax.process_index() == 0:
            generator_model.save_vocoder(out, self.model_config, params, overwrite=True, this_process_only=True)
        parallel.barrier("slam_jax: vocoder written")
        self.say(
            f"vocoder of step {step}: {out} (slam_jax.load_vocoder; textless layout: python -m "
            f"conversion.vocoder_to_textless --vocoder {out} --out DIR)"
        )


def manifest_architecture(config: generator_model.VocoderConfig) -> str:
    """The generator's shape in one line."""
    return (
        f"{config.num_embeddings} units x {config.embedding_dim}, upsample {list(config.upsample_rates)} "
        f"(kernels {list(config.upsample_kernel_sizes)}) from {config.upsample_initial_channel} channels, "
        f"resblock {config.resblock} {list(config.resblock_kernel_sizes)}, duration predictor "
        f"{config.duration_predictor_dim or 'none'}"
    )


def progress_figures(row: dict) -> dict[str, str]:
    """A plain progress line's figures: the generator's total and mel L1, the discriminator's loss, lr, speed."""
    return {
        "loss": f"{row['loss']:.4f}",
        "mel_l1": f"{row['mel_l1']:.4f}",
        "disc": f"{row['discriminator_loss']:.4f}",
        "dur": f"{row['duration_mse']:.4f}",
        "lr": f"{row['learning_rate']:.2e}",
        "audio_s/s": f"{row['audio_seconds_per_second']:.1f}",
    }


def run(config, workdir: Path) -> dict:
    """`mode: train_vocoder` (module docstring)."""
    return loop.run(config, workdir, VocoderTrainer)
