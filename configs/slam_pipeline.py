"""The whole Slam recipe in one budget: pre-training (Table 4, 23.5 h) then DPO (Table 5, 0.5 h).

`--config.pretrain.KEY=...` and `--config.dpo.KEY=...` reach each stage's config; the stages resume
independently in WORKDIR/pretrain and WORKDIR/dpo.
"""

from ml_collections import ConfigDict

from configs import slam, slam_dpo


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.mode = "pipeline"  # the job: stages in order
    config.pipeline = ConfigDict()
    config.pipeline.stages = "pretrain,dpo"  # comma-separated stages
    config.pretrain = slam.get_config()  # Table 4; its train.time_budget is 23h30m
    config.dpo = slam_dpo.get_config()  # Table 5; its train.time_budget is 30m; init_from = the pre-training
    return config
