"""`mode: pipeline`: several jobs in order, each in its own folder, resumable stage by stage.

`pipeline.stages` lists the stages; stage S runs the job `config.S.mode` (any mode but `pipeline`) with the
config `config.S` in `WORKDIR/S/`. A stage that finished writes `stage_done.json` there and is skipped on a
re-run; a preempted stage stops the pipeline, and `slam_jax.main` exits 75 (re-run the same command to resume
it). In a stage's string values `{workdir}` stands for the pipeline's WORKDIR, so a stage names the outputs of the
ones before it (e.g. `{workdir}/pretrain`). A `dpo` stage with no `model.init_from` starts from the `pretrain` stage.
"""

import dataclasses
import json
import time

from ml_collections import ConfigDict

from slam_jax import modes
from slam_jax.paths import Path
from slam_jax.settings import Settings, setting

DONE = "stage_done.json"
WORKDIR = "{workdir}"


@dataclasses.dataclass(frozen=True)
class PipelineSettings(Settings):
    """`pipeline`: the stages to run, in order (comma-separated names of config sections)."""

    stages: str

    def validate(self) -> None:
        if not self.names():
            raise ValueError(f"{self._source}.stages={self.stages!r}: name one or more stages")

    def names(self) -> list[str]:
        return [stage.strip() for stage in self.stages.split(",") if stage.strip()]


@dataclasses.dataclass(frozen=True)
class PipelineJob(Settings):
    """A whole `mode: pipeline` config but its stage sections, which stay configs: each stage's own job checks
    its section when the stage starts (its paths may name the outputs of the stages before it)."""

    pipeline: PipelineSettings
    mode: str = setting("pipeline", choices=("pipeline",))
    seed: int = 0  # unused: each stage has its own


def parse(config: ConfigDict, name: str = "config") -> tuple[PipelineJob, dict[str, ConfigDict]]:
    """The pipeline's own keys as a `PipelineJob` and its stage sections {name: config}, every stage checked to
    have a section whose mode is a job other than `pipeline`."""
    sections = {key: value for key, value in config.items() if isinstance(value, ConfigDict) and key != "pipeline"}
    own = {key: value for key, value in config.items() if key not in sections}
    job = PipelineJob.from_config(own, name)
    for stage in job.pipeline.names():
        if stage not in sections:
            raise ValueError(f"{name}.pipeline.stages: stage {stage!r} has no config section {name}.{stage}")
        mode = sections[stage].get("mode", stage)
        if mode == "pipeline":
            raise ValueError(f"{name}.pipeline.stages: {name}.{stage}.mode is 'pipeline'; stages cannot nest")
        modes.check(mode, key=f"{name}.{stage}.mode")
    return job, sections


def with_workdir(config: ConfigDict, workdir: Path) -> ConfigDict:
    """A copy of `config` with `{workdir}` in every string value replaced by `workdir`."""

    def substitute(value):
        if isinstance(value, dict):
            return {key: substitute(item) for key, item in value.items()}
        return value.replace(WORKDIR, str(workdir)) if isinstance(value, str) else value

    return ConfigDict(substitute(config.to_dict()))


def run(config: ConfigDict, workdir: Path) -> dict:
    """`mode: pipeline`: the config checked (`parse`), then `run_stages`."""
    job, sections = parse(config)
    return run_stages(job, sections, workdir)


def run_stages(job: PipelineJob, sections: dict[str, ConfigDict], workdir: Path) -> dict:
    """Each stage of `job.pipeline.stages` not yet done, in order, in WORKDIR/<stage>; {stage: its result}."""
    workdir = Path(workdir)
    stages = job.pipeline.names()
    results = {}
    for stage in stages:
        stage_dir = workdir / stage
        done = stage_dir / DONE
        if done.is_file():
            results[stage] = json.loads(done.read_text())
            print(f"[pipeline] {stage}: already done ({stage_dir}), skipped")
            continue
        stage_config = with_workdir(sections[stage], workdir)
        mode = stage_config.get("mode", stage)
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
