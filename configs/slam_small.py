"""A 46M-parameter speech LM (12 layers x 512) on the Slam recipe: a quick single-GPU or multi-core CPU run.

Everything else (data, schedule, clip, checkpoints) is `configs/slam.py`; batch and budget are scaled down.
"""

from configs import slam


def get_config():
    config = slam.get_config()
    config.model.preset = "slam_small"  # 12 layers x 512, 8 heads / 2 KV heads, ~46M params, random init
    config.train.per_device_batch_size = 16  # rows per device per micro-batch
    config.train.grad_accum_steps = 4  # 65,536 tokens per optimiser step
    config.train.time_budget = "2h"  # wall-clock budget; the cosine ends with it
    config.train.eval_every = 500  # steps between validation losses
    config.checkpoint.every_steps = 500  # save period
    return config
