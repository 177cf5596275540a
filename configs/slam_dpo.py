"""Slam preference optimisation, paper Table 5: DPO on SpokenSwag after pre-training.

| Table 5        | value                                  | key                                     |
|----------------|----------------------------------------|-----------------------------------------|
| data           | SpokenSwag (Auto-BLEU-2 < 0.3 filter)  | dpo.train_path, dpo.auto_bleu_threshold |
| objective      | DPO, sigmoid, beta 0.1                 | dpo.loss_type, dpo.beta                 |
| learning rate  | 5e-5, inverse-sqrt, 100 warmup steps   | train.learning_rate, schedule, warmup   |
| gradient clip  | 0.5                                    | train.grad_clip                         |
| batch          | 4 pairs x 16 accumulation              | train.per_device_batch_size, grad_accum |
| budget         | 0.5 h of the 24 h (~813 steps)         | train.time_budget                       |

`model.init_from` is the pre-training workdir (its newest checkpoint) or an imported model (HF/slamkit).
"""

from ml_collections import ConfigDict

from configs import slam, tokenize


def get_config():
    config = slam.get_config()
    config.mode = "dpo"  # the job: preference optimisation
    config.model.init_from = ""  # REQUIRED: pre-training workdir/checkpoint or converted model dir
    config.data.train_path = ""  # unused by DPO (pairs come from dpo.train_path)
    config.train.per_device_batch_size = 4  # pairs per device per micro-batch (paper: 4)
    config.train.grad_accum_steps = 16  # (paper: 16)
    config.train.learning_rate = 5e-5  # peak lr (paper: 5e-5)
    config.train.schedule = "inverse_sqrt"  # (paper: inverse-sqrt)
    config.train.warmup_steps = 100  # (paper: 100)
    config.train.warmup_fraction = 0.0  # warmup is exactly warmup_steps
    config.train.max_steps = 0  # 0 = until the time budget
    config.train.time_budget = "30m"  # (paper: 0.5 h, ~813 steps on an A5000)
    config.train.eval_every = 0  # no held-out pre-training loss during DPO
    config.checkpoint.every_steps = 200  # save period in steps

    config.dpo = ConfigDict()
    config.dpo.train_path = ""  # preference jsonl (prompt/chosen/rejected; SpokenSwag)
    config.dpo.beta = 0.1  # (paper: 0.1)
    config.dpo.label_smoothing = 0.0  # conservative-DPO smoothing (paper: 0)
    config.dpo.loss_type = "sigmoid"  # sigmoid (DPO) | ipo
    config.dpo.rpo_alpha = 0.0  # > 0 adds TRL's RPO term: alpha x token-mean NLL of the chosen (paper: 0)
    config.dpo.reference = "precomputed"  # precomputed (one model in memory) | frozen (copy in the step)
    config.dpo.max_prompt_length = 256  # prompt tokens incl. BOS, left-truncated
    config.dpo.max_completion_length = 256  # completion tokens incl. EOS, right-truncated
    config.dpo.truncate = True  # False: over-long rows are bad rows
    config.dpo.bad_rows = "error"  # error (file:line) | skip (counted)
    config.dpo.auto_bleu_threshold = 0.3  # keep pairs whose prompt+chosen text Auto-BLEU-2 < this (0 = off)
    config.dpo.units_cache = ""  # units of audio fields, cached ('' = WORKDIR/units_cache)

    # Rows whose fields are audio paths go through this tokeniser (the keys of configs/tokenize.py).
    config.tokenize = tokenize.get_config().tokenize
    del config.tokenize.data_path  # the rows name the files
    del config.tokenize.out_path  # the unit cache decides
    return config
