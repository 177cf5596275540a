"""Pre-training only, on the grammar corpus of `slam_jax.data.synthetic`: a small speech LM on a CPU in minutes.

Same recipe as `configs/slam.py` (schedule, clip, packing, checkpoints), scaled down: a 4-layer,
128-wide model (`demo` preset) on a stochastic-grammar corpus over 100 units. The loss falls from
log(102) = 4.6 towards the grammar's entropy; validation loss, TensorBoard and checkpoints are in WORKDIR.
"""

from configs import slam


def get_config():
    config = slam.get_config()
    config.seed = 0  # global seed: init, corpus, shuffle
    config.model.preset = "demo"  # 4 layers x 128 wide, ~0.8M params
    config.model.compute_dtype = "float32"  # fp32 is as fast as bf16 on most CPUs at this size
    config.model.remat_policy = "none"  # a small model: activations fit, recompute would only cost time
    config.model.scan_layers = True  # one compiled layer: the fastest compile for a small CPU model
    config.model.attention = "auto"  # attention kernel: auto (per platform) | xla | splash | pallas_gpu | cudnn
    config.data.train_path = "synthetic"  # the grammar corpus, written and prepared in WORKDIR/data
    config.data.num_units = 100  # units of the synthetic corpus
    config.data.context_length = 256  # tokens per row
    config.data.synthetic_files = 4000  # ~600k tokens
    config.train.per_device_batch_size = 16  # rows per micro-batch
    config.train.grad_accum_steps = 1  # no accumulation
    config.train.max_steps = 300  # optimiser steps
    config.train.time_budget = "10m"  # hard stop
    config.train.learning_rate = 3e-3  # peak lr for the small model
    config.train.eval_every = 100  # validation every 100 steps
    config.train.eval_batches = 20  # validation batches
    config.checkpoint.every_steps = 100  # save period
    config.log.every_steps = 10  # metrics period
    return config
