"""`mode: pipeline`: several stages in one budget (paper: pre-train 23.5 h, then DPO 0.5 h).

Each stage runs in `WORKDIR/<stage>/` with its own config (`config.<stage>`) and resumes there; a stage
that finished writes `stage_done.json` and is skipped on a re-run. DPO starts from the newest
pre-training checkpoint unless its `model.init_from` says otherwise.
"""

import json
from pathlib import Path

from ml_collections import ConfigDict

from slam_jax.training import dpo, loop

STAGES = {"pretrain": loop.run, "dpo": dpo.run}
DONE = "stage_done.json"


def run(config: ConfigDict, workdir: Path) -> dict:
    results = {}
    stages = [stage.strip() for stage in config.pipeline.stages.split(",") if stage.strip()]
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise ValueError(f"pipeline.stages: unknown stage(s) {unknown}; known: {sorted(STAGES)}")
    for stage in stages:
        stage_dir = Path(workdir) / stage
        done = stage_dir / DONE
        if done.is_file():
            results[stage] = json.loads(done.read_text())
            print(f"[pipeline] {stage}: already done ({stage_dir}), skipped")
            continue
        stage_config = config[stage]
        if stage == "dpo" and not stage_config.model.init_from and "pretrain" in stages:
            stage_config.model.init_from = str(Path(workdir) / "pretrain")
        print(f"[pipeline] {stage}: running in {stage_dir}")
        results[stage] = STAGES[stage](stage_config, stage_dir)
        if results[stage].get("stop_reason") == "preempted":
            print(f"[pipeline] {stage}: preempted; re-run the same command to resume")
            return results
        done.write_text(json.dumps(results[stage], indent=2) + "\n")
    return results
