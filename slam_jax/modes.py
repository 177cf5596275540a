"""Every job `python -m slam_jax.main` can run, by the name a config's `mode` gives it."""

from slam_jax import pipeline, selfcheck
from slam_jax.data import stores
from slam_jax.demo import report, text
from slam_jax.evaluation import generation, pair_metrics
from slam_jax.speech import spoken_sets
from slam_jax.speech import tokenize as tokenize_mode
from slam_jax.training import dpo, loop

MODES = {
    "selfcheck": selfcheck.run,
    "pretrain": loop.run,
    "prepare": stores.run_prepare,
    "dpo": dpo.run,
    "pipeline": pipeline.run,
    "tokenize": tokenize_mode.run,
    "eval": pair_metrics.run,
    "generate": generation.run,
    "synthesize": spoken_sets.run,
    "demo_text": text.run,
    "report": report.run,
}
