"""What a training workdir holds, without starting anything: `mode: status`.

    python -m slam_jax.main --config configs/status.py --workdir runs/slam [--config.json=True]

The same as `python -m slam_jax.status runs/slam [--json]` (slam_jax/status.py): the job, the last checkpoint,
the last metrics and validation loss, the time and steps left, the layout, checkpoints set aside, and a state word
(running, finished, stopped, empty). Read from the workdir's files only: no JAX device work, nothing written.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.mode = "status"  # the job: report a training workdir (pretrain / dpo) without changing it
    config.json = False  # True: one JSON object instead of human-readable lines
    return config
