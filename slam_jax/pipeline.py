"""`mode: pipeline`: several jobs in order, each in its own folder, resumable stage by stage.

`pipeline.stages` lists the stages; stage S runs the job `config.S.mode` (any mode but `pipeline`) with the
config `config.S` in `WORKDIR/S/`. A stage that finished writes `stage_done.json` there and is skipped on a
re-run; a preempted stage stops the pipeline (re-run the same command to resume it). In a stage's string
values `{workdir}` stands for the pipeline's WORKDIR, so a stage names the outputs of the ones before it
(e.g. `{workdir}/pretrain`). A `dpo` stage with no `model.init_from` starts from the `pretrain` stage.
"""

import json
import time
from pathlib import Path

from ml_collections import ConfigDict

from slam_jax import modes

DONE = "stage_done.json"
WORKDIR = "{workdir}"


def stage_names(config: ConfigDict) -> list[str]:
    """The stages in order, each checked to have a config section that is not itself a pipeline."""
    stages = [stage.strip() for stage in config.pipeline.stages.split(",") if stage.strip()]
    for stage in stages:
        if stage not in config or not isinstance(config[stage], ConfigDict):
            raise ValueError(f"pipeline.stages: stage {stage!r} has no config section config.{stage}")
        if config[stage].get("mode", stage) == "pipeline":
            raise ValueError(f"pipeline.stages: config.{stage}.mode is 'pipeline'; stages cannot nest")
    return stages


def with_workdir(config: ConfigDict, workdir: Path) -> ConfigDict:
    """A copy of `config` with `{workdir}` in every string value replaced by `workdir`."""

    def substitute(value):
        if isinstance(value, dict):
            return {key: substitute(item) for key, item in value.items()}
        return value.replace(WORKDIR, str(workdir)) if isinstance(value, str) else value

    return ConfigDict(substitute(config.to_dict()))


def run(config: ConfigDict, workdir: Path) -> dict:
    workdir = Path(workdir)
    stages = stage_names(config)
    results = {}
    for stage in stages:
        stage_dir = workdir / stage
        done = stage_dir / DONE
        if done.is_file():
            results[stage] = json.loads(done.read_text())
            print(f"[pipeline] {stage}: already done ({stage_dir}), skipped")
            continue
        stage_config = with_workdir(config[stage], workdir)
        mode = stage_config.get("mode", stage)
        modes.check(mode, key=f"config.{stage}.mode")
        if mode == "dpo" and not stage_config.model.init_from and "pretrain" in stages:
            stage_config.model.init_from = str(workdir / "pretrain")
        print(f"[pipeline] {stage}: running {mode} in {stage_dir}")
        stage_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        results[stage] = {
            **(modes.job(mode)(stage_config, stage_dir) or {}),
            "stage_seconds": time.perf_counter() - start,
        }
        if results[stage].get("stop_reason") == "preempted":
            print(f"[pipeline] {stage}: preempted; re-run the same command to resume")
            return results
        done.write_text(json.dumps(results[stage], indent=2, default=str) + "\n")
    return results
