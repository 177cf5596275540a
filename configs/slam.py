"""Slam pre-training, paper Table 4: Qwen2.5-0.5B (TWIST) on speech units, one GPU, one day.

| Table 4                | value                                   | key                                        |
|------------------------|-----------------------------------------|--------------------------------------------|
| model                  | Qwen2.5-0.5B, TWIST, 358M params        | model.preset, model.init_from              |
| context                | 1024                                    | data.context_length                        |
| batch                  | 8 x 1024 tokens x 16 accumulation       | train.per_device_batch_size, grad_accum    |
| optimiser              | AdamW (0.9, 0.999, 1e-8), wd 0          | train.adam_*, train.weight_decay           |
| learning rate          | 1e-3, warmup max(100, 1%), cosine->5e-5 | train.learning_rate, warmup_*, min_lr      |
| gradient clip          | 0.5                                     | train.grad_clip                            |
| precision              | bf16 compute                            | model.compute_dtype                        |
| budget                 | 23.5 h of the 24 h (0.5 h DPO)          | train.time_budget                          |

Point `data.train_path` at prepared stores (or raw features.jsonl) of Libri-Light + LibriSpeech +
sTinyStories and `model.init_from` at `python -m conversion.hf_to_flax --model Qwen/Qwen2.5-0.5B --twist`.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.mode = "pretrain"  # the job: pretrain (prepare = only write the unit stores)
    config.seed = 42  # global seed: init, data shuffle

    config.model = ConfigDict()
    config.model.preset = "slam"  # architecture when not init_from: slam = Qwen2.5-0.5B body, vocab 502
    config.model.init_from = ""  # converted TWIST model dir or checkpoint ('' = random init, GSLM baseline)
    config.model.compute_dtype = "bfloat16"  # matmul dtype; params stay float32 (paper: bf16)
    # layers unrolled (False) or under lax.scan (True: one compiled layer, a 3 s compile instead of 13-20 s). On an
    # H200 the paper's step takes 0.053 s unrolled and 0.069 s scanned (benchmarks/RESULTS.md, GPU suite).
    config.model.scan_layers = False
    # activation recompute: none | full | dots | dots_no_batch. Unrolled, with fused attention, the paper's step
    # needs 14.4 GiB on a 24 GB A5000 and 13.9 GiB on a 16 GiB TPU v5e chip without it (benchmarks.compile);
    # dots_no_batch (10.9 GiB on the A5000) made the H200 step 8% slower.
    config.model.remat_policy = "none"
    config.model.attention = "auto"  # attention kernel: auto (per platform) | xla | splash | pallas_gpu | cudnn

    config.data = ConfigDict()
    config.data.train_path = ""  # stores, prepared folders, raw unit jsonl/parquet or 'synthetic'; comma list
    config.data.valid_path = ""  # validation stores ('' = train_path's held-out splits; set: none held out, slamkit)
    config.data.weights = ""  # mixture weights per train_path entry ('' = by size, as the paper)
    config.data.num_units = 500  # speech units (vocab = num_units + 2)
    config.data.context_length = 1024  # tokens per row (paper: 1024)
    config.data.packing = True  # pack chunks into rows (segment ids); False = one padded chunk per row
    config.data.valid_fraction = 0.01  # held-out share of raw train_path files without valid_path (paper: ~1%)
    config.data.synthetic_files = 20_000  # files of the 'synthetic' grammar corpus

    config.mesh = ConfigDict()
    config.mesh.data = -1  # data-parallel axis (-1 = all remaining devices)
    config.mesh.fsdp = 1  # parameter/optimiser-sharded data-parallel axis
    config.mesh.tensor = 1  # tensor-parallel axis (heads, MLP columns)

    config.train = ConfigDict()
    config.train.per_device_batch_size = 8  # rows per device per micro-batch (paper: 8)
    config.train.grad_accum_steps = 16  # micro-batches per optimiser step (paper: 16 -> 131,072 tokens)
    config.train.max_steps = 0  # optimiser steps (0 = until the time budget)
    config.train.time_budget = "23h30m"  # wall-clock budget; sets the cosine length when max_steps is 0
    config.train.calibration_steps = 10  # steps timed to turn a time budget into a step count
    config.train.learning_rate = 1e-3  # peak lr (paper: 1e-3)
    config.train.min_learning_rate = 5e-5  # cosine floor (paper: 5e-5)
    config.train.schedule = "cosine"  # cosine | constant | inverse_sqrt
    config.train.warmup_steps = 100  # warmup = max(warmup_steps, warmup_fraction * steps) (paper: 100, 1%)
    config.train.warmup_fraction = 0.01
    config.train.grad_clip = 0.5  # global-norm clip (paper: 0.5)
    config.train.adam_b1 = 0.9  # (paper: 0.9)
    config.train.adam_b2 = 0.999  # (paper: 0.999)
    config.train.adam_eps = 1e-8  # (paper: 1e-8)
    config.train.weight_decay = 0.0  # decoupled weight decay (paper: 0)
    config.train.mu_dtype = "float32"  # Adam's first moment: float32 | bfloat16 (half the memory and traffic)
    config.train.eval_every = 1000  # steps between validation losses (paper: 1000)
    config.train.eval_batches = 100  # validation batches per evaluation (0 = the whole split)
    config.train.peak_flops_per_device = 0.0  # for MFU; 0 = vendor figure, or a matmul measured on CPU
    config.train.stall_steps = 20  # steps in a row of grad norm exactly 0 before a warning (0 = off; not in the paper)
    config.train.host_timeout = 60.0  # several hosts: s a process may go unheard before all stop, exit 69 (0 = off)
    # run-manifest keys (WORKDIR/run_manifest.json) a resume may change, comma-separated, e.g. 'seed' ('' = none)
    config.train.allow_changed = ""

    config.checkpoint = ConfigDict()
    config.checkpoint.every_steps = 1000  # save period in steps
    config.checkpoint.every_minutes = 30.0  # and in minutes (0 = off)
    config.checkpoint.keep = 3  # recent checkpoints kept
    config.checkpoint.keep_period = 0  # also keep every P-th step (0 = off)
    # how long a save may take to commit before the run stops in one line (a bucket that stopped answering)
    config.checkpoint.commit_timeout_minutes = 30.0

    config.log = ConfigDict()
    config.log.every_steps = 10  # metrics.jsonl / TensorBoard period
    config.log.tensorboard = True  # WORKDIR/tensorboard event files
    config.log.wandb_project = ""  # log to wandb too ('' = off; needs wandb installed)
    config.log.progress = "auto"  # stderr: 'bar' (tqdm), 'plain' (a line per row), 'auto' (bar on a terminal)
    return config
