"""Throughput accounting (FLOPs, MFU) and metric sinks: JSONL, TensorBoard, optional wandb."""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from slam_jax import paths
from slam_jax.models.config import ModelConfig
from slam_jax.paths import Path

# Dense bf16 peak FLOP/s per device by `device_kind` prefix (vendor figures).
PEAK_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA A6000": 155e12,
    "NVIDIA RTX A5000": 111e12,
    "NVIDIA L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def flops_per_token(config: ModelConfig, context_length: int) -> float:
    """Training FLOPs per token (docs/performance.md): 6 N + 6 L d T with N the non-embedding parameters."""
    non_embedding = config.num_params(include_embedding=False)
    return 6.0 * non_embedding + 6.0 * config.num_layers * config.hidden_size * context_length


def measured_matmul_peak(size: int = 2048, repeats: int = 3) -> float:
    """Best FLOP/s of a bf16-input, f32-accumulating matmul on the first device (the CPU 'peak')."""
    a = jnp.ones((size, size), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def peak_flops_per_device(override: float = 0.0) -> float:
    """`override` if set; the vendor figure for known accelerators; else a matmul measured now."""
    if override:
        return override
    kind = jax.devices()[0].device_kind
    for prefix, flops in PEAK_FLOPS.items():
        if kind.startswith(prefix):
            return flops
    return measured_matmul_peak()


class MetricsWriter:
    """Appends metric rows to WORKDIR/metrics.jsonl and TensorBoard (and wandb when configured).

    For a workdir in a bucket both are written to a local mirror (`paths.Mirror`) and uploaded whole by `sync`:
    at every checkpoint, at most every `SYNC_SECONDS` while rows are written, and at `close`."""

    SYNC_SECONDS = 60.0

    def __init__(self, workdir: Path, enabled: bool = True, tensorboard: bool = True, wandb_project: str = ""):
        self.enabled = enabled
        self._tensorboard = None
        self._wandb = None
        if not enabled:
            return
        self._mirror = paths.Mirror(workdir, names=["metrics.jsonl"])
        self._synced = time.monotonic()
        self._jsonl = open(self._mirror.root / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(self._mirror.root / "tensorboard"))
        if wandb_project:
            import wandb

            self._wandb = wandb.init(project=wandb_project, dir=str(self._mirror.root), resume="allow")

    def sync(self) -> None:
        """Upload what was written (a workdir in a bucket; nothing to do on a local disk)."""
        if not self.enabled:
            return
        self._jsonl.flush()
        if self._tensorboard is not None and paths.is_remote(self._mirror.folder):
            self._tensorboard.flush()
        self._mirror.sync()
        self._synced = time.monotonic()

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{key: float(value) for key, value in values.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        if self._tensorboard is not None:
            for key, value in values.items():
                self._tensorboard.add_scalar(key, float(value), int(step))
        if self._wandb is not None:
            self._wandb.log(values, step=int(step))
        if time.monotonic() - self._synced >= self.SYNC_SECONDS:
            self.sync()

    def media(self, step: int, tag: str, image: np.ndarray, audio: np.ndarray, sample_rate: int) -> None:
        """TensorBoard only: `image` [height, width] (scaled to 0..1, low rows at the bottom, as a spectrogram is
        read) and `audio` [samples] in -1..1 under `tag`."""
        if not self.enabled or self._tensorboard is None:
            return
        low, high = float(np.min(image)), float(np.max(image))
        scaled = (np.asarray(image, np.float32) - low) / max(high - low, 1e-9)
        self._tensorboard.add_image(tag, scaled[::-1], int(step), dataformats="HW")
        self._tensorboard.add_audio(tag, np.clip(audio, -1.0, 1.0), int(step), sample_rate=sample_rate)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        self._mirror.sync()
        if self._wandb is not None:
            self._wandb.finish()
