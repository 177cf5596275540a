"""Every job `python -m slam_jax.main` can run, by the name a config's `mode` gives it.

The registry names each job's module and function; `job(name)` imports that module only when the job runs, so a
job loads only what it uses (a TPU pre-training run never imports the TTS or matplotlib).
"""

import importlib
from collections.abc import Callable

MODES = {
    "selfcheck": "slam_jax.selfcheck:run",
    "pretrain": "slam_jax.training.loop:run",
    "prepare": "slam_jax.data.stores:run_prepare",
    "dpo": "slam_jax.training.dpo:run",
    "train_vocoder": "slam_jax.training.vocoder:run",
    "pipeline": "slam_jax.pipeline:run",
    "tokenize": "slam_jax.speech.tokenize:run",
    "eval": "slam_jax.evaluation.pair_metrics:run",
    "generate": "slam_jax.evaluation.generation:run",
    "synthesize": "slam_jax.speech.spoken_sets:run",
    "resynthesize": "slam_jax.speech.resynthesize:run",
    "demo_text": "slam_jax.demo.text:run",
    "report": "slam_jax.demo.report:run",
    "status": "slam_jax.status:run",
}


def check(name: str, key: str = "mode") -> None:
    """A one-line error naming `key` unless `name` is a registered job."""
    if name not in MODES:
        raise ValueError(f"{key}={name!r} is not one of {sorted(MODES)}")


def job(name: str) -> Callable:
    """The function that runs the job `name` (its module imported now)."""
    check(name)
    module, function = MODES[name].split(":")
    return getattr(importlib.import_module(module), function)
