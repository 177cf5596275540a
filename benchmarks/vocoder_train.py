"""One vocoder training step: slam_jax's compiled HiFi-GAN step against the original PyTorch step, same batch, same run.

    python -m benchmarks.vocoder_train [--batch 2] [--frames 14] [--steps 3] [--size paper|small|tiny] [--json]
    python -m benchmarks.vocoder_train --quick   # tiny sizes, 2 x 40 frames of 64 samples, 1 timed step (the test)

Both sides train the same CodeHiFiGAN (`configs/vocoder.py`; `--size small` and `tiny` narrow the generator and
divide the discriminators' channels, `model.discriminator_divisor`) on the same batch of random units and a
speech-loud synthetic waveform, from the same initial weights: the PyTorch modules are built with their own init
(torch's default conv init, weight norm's g = ||v||, spectral norm's random u) and every tensor is copied into
slam_jax's training state.

- slam_jax: `training/vocoder_step.py`'s `jit_vocoder_step` (the graphs, optimisers and state of
  `VocoderTrainer.build_model` / `state_from`, the step settings as `setup_task` makes them), on a 1-device mesh,
  the state donated; compiled first (reported apart), then timed.
- reference: the pip `hifi-gan`'s `hifi_gan/train.py` loop body, in its order: the generator forward, the mel of
  y_hat, the discriminator step (MPD + MSD on y and the detached y_hat, `discriminator_loss`, AdamW), the generator
  step (mel L1 x 45, `feature_loss` and `generator_loss` of both discriminators, AdamW); two torch.optim.AdamW
  (lr 2e-4, betas (0.8, 0.99), torch's weight decay 0.01), `torch.backends.cudnn.benchmark = True` as train.py
  sets it. The generator is textlesslib's CodeGenerator without its extras: `hifi_gan.models.Generator` whose first
  conv reads the unit embedding (`nn.Embedding`, trained) as benchmarks/vocoder.py builds it. The mel of the real
  y (HiFi-GAN's data loader computes it) is computed in the step on both sides. For `--size small|tiny` the
  reference discriminators' convs are rebuilt with the divided channels (same norms, same layer shapes otherwise).
- The duration predictor (CodeHiFiGAN's) is left out of both sides (`model.duration_predictor_dim=0`): pip
  hifi-gan has none, so the two steps stay the same computation.

Each implementation's first call (step 1) is a warm-up; then they alternate, one step each per round, `--steps`
rounds, median reported as seconds per step and audio seconds per second (rows x frames x 640 samples at 16 kHz
per step). Every call's losses are kept: step 1 starts from the same weights on both sides, so its losses must
agree (`first_step_max_relative_difference`); later steps drift apart slowly (float32 rounding through Adam's
first updates). On a machine with a GPU both run on it (PyTorch keeps its defaults: cuDNN convolutions may use
TF32; slam_jax's convolutions run at HIGHEST precision).
"""

import argparse
import contextlib
import os
import sys
import time
from types import SimpleNamespace
from unittest import mock

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import torch
import torch.nn.functional as F
from hifi_gan import meldataset
from hifi_gan import models as reference
from torch.nn.utils import spectral_norm, weight_norm

from benchmarks import common
from configs import vocoder as vocoder_config
from conversion import vocoder_to_flax
from slam_jax import parallel
from slam_jax.models import discriminators
from slam_jax.speech import segments
from slam_jax.training import vocoder as training
from slam_jax.training import vocoder_step

SIZES = {  # config overrides of each size (configs/vocoder.py is the paper's)
    "paper": {},
    "small": {"model.upsample_initial_channel": 128, "model.discriminator_divisor": 4},
    # a generator of 2 stages (64 samples per frame) with one residual block each: its compilation is most of the
    # quick run's; the discriminators keep every sub-discriminator, with an eighth of the channels
    "tiny": {
        "data.num_units": 50,
        "model.embedding_dim": 16,
        "model.upsample_initial_channel": 32,
        "model.upsample_rates": (8, 8),
        "model.upsample_kernel_sizes": (16, 16),
        "model.resblock_kernel_sizes": (3,),
        "model.resblock_dilation_sizes": ((1, 3, 5),),
        "model.discriminator_divisor": 8,
    },
}
QUICK = {"size": "tiny", "batch": 2, "frames": 40, "steps": 1}  # 2 x 2560 samples
# loss name (slam_jax's step metrics) -> what the reference's loop body computes
LOSSES = ("loss", "discriminator_loss", "discriminator_mpd", "discriminator_msd", "mel_l1", "feature_matching")
LOSSES += ("adversarial",)
# torch name suffix -> slam_jax's variable name (tests/test_vocoder_gan.py's mapping)
NAMES = {"weight_g": "g", "weight_v": "v", "weight_orig": "kernel", "bias": "bias", "weight_u": "u"}
REFERENCE = "reference_torch_fp32"
OURS = "slam_jax_vocoder_step"


# ---- the job ----------------------------------------------------------------------------------------------------


def job_of(size: str, batch: int, frames: int, grouping: str = "xla") -> training.VocoderJob:
    """configs/vocoder.py at `size`, `batch` rows of `frames` frames, no duration predictor, the MSD's grouped
    convolutions run as `grouping` (`model.grouped_convolutions`)."""
    config = vocoder_config.get_config()
    config.model.grouped_convolutions = grouping
    for key, value in SIZES[size].items():
        section, _, leaf = key.partition(".")
        config[section][leaf] = value
    config.model.duration_predictor_dim = 0
    config.data.segment_frames = frames
    config.data.train_path = "(benchmark: one synthetic batch)"
    config.train.per_device_batch_size = batch
    return training.VocoderJob.from_config(config, "config")


def build_model(job: training.VocoderJob, mesh) -> tuple[training.VocoderTrainer, object]:
    """The trainer's own model building (graphs, optimisers, the abstract state) for `mesh`'s platform, without its
    workdir and data."""
    trainer = training.VocoderTrainer.__new__(training.VocoderTrainer)
    trainer.settings, trainer.mesh = job, mesh
    return trainer, trainer.build_model()


def jit_step(trainer: training.VocoderTrainer, abstract_state, job: training.VocoderJob, mesh, batch_keys):
    """`jit_vocoder_step` with the trainer's graphs and optimisers, the state replicated over `mesh`, rows split."""
    trainer.mesh = mesh
    shardings = trainer.state_shardings(abstract_state)
    batch_shardings = {key: parallel.batch_sharding(mesh, trailing_axes=dims - 1) for key, dims in batch_keys.items()}
    settings = training.step_settings(job, trainer.model_config.sampling_rate)
    return vocoder_step.jit_vocoder_step(trainer.graphs, trainer.optimizers, settings, shardings, mesh, batch_shardings)


BATCH_DIMS = {"units": 2, "audio": 2, "run_units": 2, "run_frames": 2, "num_runs": 1}  # speech/segments.py's batch


def synthetic_batch(
    rows: int, frames: int, hop: int, num_units: int, rate: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A batch as `segments.Segments.build` makes one: frame units in runs of 1-4 frames, and a waveform of a few
    harmonics with noise, peak-normalised to 0.95 (HiFi-GAN's datasets)."""
    rng = np.random.default_rng(seed)
    batch = {
        "units": np.zeros((rows, frames), np.int32),
        "audio": np.zeros((rows, frames * hop), np.float32),
        "run_units": np.zeros((rows, frames), np.int32),
        "run_frames": np.zeros((rows, frames), np.int32),
        "num_runs": np.zeros((rows,), np.int32),
    }
    time_axis = np.arange(frames * hop) / rate
    for row in range(rows):
        units = np.repeat(rng.integers(0, num_units, frames), rng.integers(1, 5, frames))[:frames]
        run_units, run_frames = segments.runs(units)
        batch["units"][row] = units
        batch["run_units"][row, : len(run_units)] = run_units
        batch["run_frames"][row, : len(run_units)] = run_frames
        batch["num_runs"][row] = len(run_units)
        pitch = rng.uniform(100, 250)
        wave = sum(np.sin(2 * np.pi * pitch * k * time_axis + rng.uniform(0, 6)) / k for k in range(1, 6))
        wave = wave * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * time_axis)) + rng.normal(0, 0.05, len(time_axis))
        batch["audio"][row] = 0.95 * wave / np.max(np.abs(wave))
    return batch


# ---- the reference ----------------------------------------------------------------------------------------------


class UnitGenerator(reference.Generator):
    """textlesslib's CodeGenerator without duration predictor, f0 or speakers: the unit embedding `dict`, then
    HiFi-GAN's generator, its first conv reading the embedding (state dict names as textlesslib's)."""

    def __init__(self, h):
        super().__init__(h)
        self.conv_pre = weight_norm(torch.nn.Conv1d(h.model_in_dim, h.upsample_initial_channel, 7, 1, padding=3))
        self.dict = torch.nn.Embedding(h.num_embeddings, h.embedding_dim)

    def forward(self, code):
        return super().forward(self.dict(code).transpose(1, 2))


def textless_config(config) -> dict:
    """The generator's architecture as a textlesslib JSON config (what conversion.vocoder_to_flax reads)."""
    return {
        "resblock": config.resblock,
        "upsample_rates": list(config.upsample_rates),
        "upsample_kernel_sizes": list(config.upsample_kernel_sizes),
        "upsample_initial_channel": config.upsample_initial_channel,
        "resblock_kernel_sizes": list(config.resblock_kernel_sizes),
        "resblock_dilation_sizes": [list(rates) for rates in config.resblock_dilation_sizes],
        "num_embeddings": config.num_embeddings,
        "embedding_dim": config.embedding_dim,
        "model_in_dim": config.embedding_dim,
        "sampling_rate": config.sampling_rate,
    }


def narrowed(mpd: torch.nn.Module, msd: torch.nn.Module, divisor: int) -> None:
    """The reference discriminators' convs rebuilt with their channels divided by `divisor` (as
    `slam_jax.models.discriminators` divides them), each with the reference's norm and otherwise the same shape."""

    def channels(count: int) -> int:
        return count if count == 1 else count // divisor

    for module in mpd.discriminators:
        module.convs = torch.nn.ModuleList(
            [
                weight_norm(torch.nn.Conv2d(channels(cin), cout // divisor, (5, 1), (stride, 1), padding=(2, 0)))
                for cin, cout, stride in discriminators.PERIOD_CONVS
            ]
        )
        module.conv_post = weight_norm(torch.nn.Conv2d(1024 // divisor, 1, (3, 1), 1, padding=(1, 0)))
    for index, module in enumerate(msd.discriminators):
        norm = spectral_norm if index == 0 else weight_norm
        module.convs = torch.nn.ModuleList(
            [
                norm(torch.nn.Conv1d(channels(cin), cout // divisor, width, stride, groups=groups, padding=side))
                for cin, cout, width, stride, groups, side in discriminators.SCALE_CONVS
            ]
        )
        module.conv_post = norm(torch.nn.Conv1d(1024 // divisor, 1, 3, 1, padding=1))


def reference_modules(job: training.VocoderJob, config, seed: int = 0) -> dict[str, torch.nn.Module]:
    """The generator, MPD and MSD with PyTorch's init, in training mode."""
    if tuple(job.model.periods) != discriminators.PERIODS:
        raise SystemExit(f"model.periods={job.model.periods}: the reference's MPD has {discriminators.PERIODS}")
    torch.manual_seed(seed)
    generator = UnitGenerator(SimpleNamespace(**textless_config(config)))
    mpd, msd = reference.MultiPeriodDiscriminator(), reference.MultiScaleDiscriminator()
    if job.model.discriminator_divisor > 1:
        narrowed(mpd, msd, job.model.discriminator_divisor)
    return {"generator": generator.train(), "mpd": mpd.train(), "msd": msd.train()}


@contextlib.contextmanager
def reference_mel():
    """Let `hifi_gan.meldataset.mel_spectrogram` run on today's librosa and torch, unchanged otherwise (here and in
    tests/test_vocoder_gan.py's mel parity test): it calls librosa's mel filter with positional arguments,
    which librosa >= 0.10 takes as keywords only, and torch.stft without return_complex, reading the old real
    [..., 2] result that torch 2 refuses; its `torch` is swapped for one whose stft returns that view of the complex
    result. (Its basis cache is keyed so that it never hits: every call rebuilds the basis, as in the reference.)"""

    class TorchWithRealStft:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def stft(*args, **kwargs):
            return torch.view_as_real(torch.stft(*args, **kwargs, return_complex=True))

    def mel_filter(sr, n_fft, n_mels, fmin, fmax):
        return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(meldataset, "librosa_mel_fn", mel_filter))
        stack.enter_context(mock.patch.object(meldataset, "torch", TorchWithRealStft()))
        stack.enter_context(mock.patch.object(meldataset, "mel_basis", {}))
        stack.enter_context(mock.patch.object(meldataset, "hann_window", {}))
        yield


def reference_step(modules: dict, job: training.VocoderJob, batch: dict, sampling_rate: int, device: str):
    """`step() -> losses` (tensors on `device`): one iteration of hifi_gan/train.py's loop body on `batch`."""
    generator, mpd, msd = (modules[name].to(device) for name in ("generator", "mpd", "msd"))
    train, mel = job.train, job.mel
    optim_g = torch.optim.AdamW(generator.parameters(), train.learning_rate, betas=[train.adam_b1, train.adam_b2])
    optim_d = torch.optim.AdamW(
        [*msd.parameters(), *mpd.parameters()], train.learning_rate, betas=[train.adam_b1, train.adam_b2]
    )
    mel_arguments = (mel.n_fft, mel.num_mels, sampling_rate, mel.hop_size, mel.win_size, mel.fmin)
    mel_arguments += (mel.fmax_for_loss or None,)
    x = torch.from_numpy(batch["units"]).long().to(device)
    y = torch.from_numpy(batch["audio"]).to(device)

    def step() -> dict[str, torch.Tensor]:
        y_mel = meldataset.mel_spectrogram(y, *mel_arguments)  # the reference's data loader's, here in the step
        y_1 = y.unsqueeze(1)
        y_g_hat = generator(x)
        y_g_hat_mel = meldataset.mel_spectrogram(y_g_hat.squeeze(1), *mel_arguments)

        optim_d.zero_grad()
        y_df_hat_r, y_df_hat_g, _, _ = mpd(y_1, y_g_hat.detach())
        loss_disc_f, _, _ = reference.discriminator_loss(y_df_hat_r, y_df_hat_g)
        y_ds_hat_r, y_ds_hat_g, _, _ = msd(y_1, y_g_hat.detach())
        loss_disc_s, _, _ = reference.discriminator_loss(y_ds_hat_r, y_ds_hat_g)
        loss_disc_all = loss_disc_s + loss_disc_f
        loss_disc_all.backward()
        optim_d.step()

        optim_g.zero_grad()
        mel_error = F.l1_loss(y_mel, y_g_hat_mel)
        loss_mel = mel_error * train.mel_weight
        y_df_hat_r, y_df_hat_g, fmap_f_r, fmap_f_g = mpd(y_1, y_g_hat)
        y_ds_hat_r, y_ds_hat_g, fmap_s_r, fmap_s_g = msd(y_1, y_g_hat)
        loss_fm_f = reference.feature_loss(fmap_f_r, fmap_f_g)
        loss_fm_s = reference.feature_loss(fmap_s_r, fmap_s_g)
        loss_gen_f, _ = reference.generator_loss(y_df_hat_g)
        loss_gen_s, _ = reference.generator_loss(y_ds_hat_g)
        loss_gen_all = loss_gen_s + loss_gen_f + loss_fm_s + loss_fm_f + loss_mel
        loss_gen_all.backward()
        optim_g.step()
        common.torch_sync(device)
        losses = (loss_gen_all, loss_disc_all, loss_disc_f, loss_disc_s, mel_error, loss_fm_f + loss_fm_s)
        return dict(zip(LOSSES, (*losses, loss_gen_f + loss_gen_s), strict=True))

    return step


# ---- the reference's weights in slam_jax's training state -------------------------------------------------------


def _layout(name: str, array: np.ndarray) -> np.ndarray:
    """A discriminator tensor in slam_jax's layout: weight_g [out, 1, ...] -> [out]; a kernel [out, in / groups,
    *widths] -> [*widths, in / groups, out]."""
    last = name.rpartition(".")[2]
    if last == "weight_g":
        return array.reshape(-1)
    if last in ("weight_v", "weight_orig"):
        return np.transpose(array, (*range(2, array.ndim), 1, 0))
    return array


def discriminator_tree(module: torch.nn.Module, template: dict, buffers: bool) -> dict:
    """The module's parameters (or, `buffers`, its spectral-norm u's) as slam_jax's pure dict shaped as `template`:
    every leaf of the template filled once, with its shape."""
    if buffers:
        tensors = {name: tensor for name, tensor in module.named_buffers() if name.endswith("weight_u")}
    else:
        tensors = dict(module.named_parameters())
    filled: dict = {}
    for name, tensor in tensors.items():
        *parents, last = name.split(".")
        keys = [int(part) if part.isdigit() else part for part in parents] + [NAMES[last]]
        node, target = template, filled
        for key in keys[:-1]:
            node, target = node[key], target.setdefault(key, {})
        array = _layout(name, tensor.detach().cpu().numpy())
        if array.shape != node[keys[-1]].shape:
            raise ValueError(f"{name}: shape {array.shape}, slam_jax's {node[keys[-1]].shape}")
        target[keys[-1]] = jnp.asarray(array)
    if jax.tree.structure(filled) != jax.tree.structure(template):
        raise ValueError("the reference's discriminator tensors do not fill slam_jax's parameter tree")
    return filled


def equal_state(modules: dict, trainer: training.VocoderTrainer, abstract_state):
    """slam_jax's training state with every reference tensor: the generator through the converter
    (`params_from_textless`, weight norm folded) and `split_weight_norm` (the training form), the discriminators
    by name (g, v, the spectral-normed kernel and u), the optimisers' state fresh."""
    state = {name: tensor.detach().cpu().float().numpy() for name, tensor in modules["generator"].state_dict().items()}
    params = vocoder_to_flax.params_from_textless(state, trainer.model_config, "the reference generator")
    template = abstract_state.params
    generator = vocoder_step.split_weight_norm(jax.tree.map(jnp.asarray, params))
    if jax.tree.structure(generator) != jax.tree.structure(template["generator"]):
        raise ValueError("the converted generator does not match slam_jax's training parameters")
    params = {
        "generator": generator,
        "mpd": discriminator_tree(modules["mpd"], template["mpd"], buffers=False),
        "msd": discriminator_tree(modules["msd"], template["msd"], buffers=False),
    }
    spectral = discriminator_tree(modules["msd"], abstract_state.opt_state["spectral"], buffers=True)
    return trainer.state_from(params, spectral)


# ---- the run ----------------------------------------------------------------------------------------------------


def build(size: str, rows: int, frames: int, grouping: str = "xla") -> tuple[dict, dict, dict]:
    """(timed functions by name, the losses each call appends to, facts about the set-up)."""
    torch.set_num_threads(os.cpu_count())
    torch.backends.cudnn.benchmark = True  # as hifi_gan/train.py sets it
    device = common.torch_device()
    job = job_of(size, rows, frames, grouping)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    trainer, abstract_state = build_model(job, mesh)
    config = trainer.model_config
    modules = reference_modules(job, config)
    batch = synthetic_batch(rows, frames, config.hop_length, config.num_embeddings, config.sampling_rate)

    start = time.perf_counter()
    step = jit_step(trainer, abstract_state, job, mesh, BATCH_DIMS)
    shardings = trainer.state_shardings(abstract_state)
    state = {"current": jax.device_put(equal_state(modules, trainer, abstract_state), shardings)}
    device_batch = {
        key: jax.device_put(value, parallel.batch_sharding(mesh, trailing_axes=value.ndim - 1))
        for key, value in batch.items()
    }
    learning_rate = jnp.float32(job.train.learning_rate)
    setup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    compiled = step.lower(state["current"], device_batch, learning_rate).compile()
    compile_seconds = time.perf_counter() - start

    losses: dict[str, list[dict]] = {REFERENCE: [], OURS: []}
    torch_step = reference_step(modules, job, batch, config.sampling_rate, device)

    def ours():
        state["current"], metrics = compiled(state["current"], device_batch, learning_rate)
        jax.block_until_ready((state["current"], metrics))
        losses[OURS].append(metrics)

    def theirs():
        losses[REFERENCE].append(torch_step())

    setup = {
        "size": size,
        "rows": rows,
        "frames": frames,
        "samples_per_row": frames * config.hop_length,
        "audio_seconds": rows * frames * config.hop_length / config.sampling_rate,
        "architecture": training.manifest_architecture(config),
        "discriminator_divisor": job.model.discriminator_divisor,
        "grouped_convolutions": trainer.grouping,
        "generator_params": _count(abstract_state.params["generator"]),
        "discriminator_params": _count([abstract_state.params["mpd"], abstract_state.params["msd"]]),
        "duration_predictor": "left out of both sides (model.duration_predictor_dim=0; pip hifi-gan has none)",
        "same_initial_weights": "PyTorch's init, every tensor copied into slam_jax's state",
        "torch_device": device,
        "torch_threads": torch.get_num_threads(),
        "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "slam_jax_setup_seconds": setup_seconds,
        "slam_jax_compile_seconds": compile_seconds,
    }
    return {REFERENCE: theirs, OURS: ours}, losses, setup


def _count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def loss_figures(losses: dict[str, list[dict]]) -> dict:
    """Each step's losses on both sides (floats) and, per step, the largest relative difference of ours from the
    reference's."""
    steps = {
        name: [{key: float(value) for key, value in jax.device_get(row).items() if key in LOSSES} for row in rows]
        for name, rows in (
            (REFERENCE, [{key: value.item() for key, value in row.items()} for row in losses[REFERENCE]]),
            (OURS, losses[OURS]),
        )
    }
    differences = [
        max(abs(ours[key] - theirs[key]) / max(abs(theirs[key]), 1e-12) for key in LOSSES)
        for ours, theirs in zip(steps[OURS], steps[REFERENCE], strict=True)
    ]
    return {"losses_by_step": steps, "max_relative_difference_by_step": differences}


def measure(size: str, rows: int, frames: int, repeats: int, grouping: str = "xla") -> dict:
    """Build both steps, time them alternating, and summarise (the gpu suite's part calls this)."""
    with reference_mel():
        fns, losses, setup = build(size, rows, frames, grouping)
        times = common.alternate(fns, repeats)
    implementations = common.audio_rates(times, setup["audio_seconds"], REFERENCE)
    for figures in implementations.values():
        figures["seconds_per_step"] = figures["seconds"]
    agreement = loss_figures(losses)
    return {
        "benchmark": "vocoder_train",
        "repeats": repeats,
        **setup,
        "implementations": implementations,
        **agreement,
        "first_step_max_relative_difference": agreement["max_relative_difference_by_step"][0],
        "machine": common.machine(),
    }


def report_lines(result: dict) -> list[str]:
    lines = [
        f"vocoder training step, {result['size']} size: {result['architecture']}; MPD + MSD channels / "
        f"{result['discriminator_divisor']} ({result['generator_params']:,} generator + "
        f"{result['discriminator_params']:,} discriminator params)",
        f"batch {result['rows']} x {result['frames']} frames ({result['audio_seconds']:.2f} s of audio per step), "
        f"median of {result['repeats']} steps after the first; duration predictor {result['duration_predictor']}",
    ]
    for name, figures in result["implementations"].items():
        lines.append(f"{common.audio_rate_line(name, figures, 24)}  (s per step)")
    first = result["losses_by_step"]
    lines.append(
        f"step 1 from the same weights: losses agree to {result['first_step_max_relative_difference']:.1e} relative "
        f"(generator {first[OURS][0]['loss']:.4f} vs {first[REFERENCE][0]['loss']:.4f}, discriminator "
        f"{first[OURS][0]['discriminator_loss']:.4f} vs {first[REFERENCE][0]['discriminator_loss']:.4f}); "
        f"by step: {', '.join(f'{value:.1e}' for value in result['max_relative_difference_by_step'])}"
    )
    lines.append(
        f"slam_jax compile {result['slam_jax_compile_seconds']:.1f} s; PyTorch on {result['torch_device']} "
        f"({result['torch_threads']} threads, cudnn.allow_tf32={result['torch_cudnn_allow_tf32']})"
    )
    machine = result["machine"]
    lines.append(common.describe(machine))
    lines.append(f"CPU flags: {' '.join(machine['cpu_flags']) or 'none of avx512*/amx/bf16'}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vocoder_train", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--size", choices=sorted(SIZES), default="paper", help="paper: configs/vocoder.py")
    parser.add_argument("--batch", type=int, default=2, help="rows per step (the paper trains 16)")
    parser.add_argument("--frames", type=int, default=14, help="frames per row (the paper's 14 of 640 samples)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each after the first (median)")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes, one timed step: {QUICK}")
    parser.add_argument(
        "--grouped-convolutions",
        choices=discriminators.GROUPINGS,
        default="xla",
        help="how slam_jax's MSD runs its grouped convolutions (model.grouped_convolutions)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if min(args.batch, args.frames, args.steps) < 1:
        parser.error("--batch, --frames and --steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args.size, args.batch, args.frames, args.steps, args.grouped_convolutions)
    common.emit(result, args.json, report_lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
