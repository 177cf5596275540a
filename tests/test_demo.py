"""The offline demo end to end at a reduced size: every stage's outputs, the report's numbers, resuming."""

import json

import pytest

from configs import demo
from slam_jax import pipeline
from slam_jax.models import storage

STAGES = demo.get_config().pipeline.stages.split(",")


def reduced_config():
    """configs/demo.py with every size cut down (same stages, same code paths)."""
    config = demo.get_config()
    config.text.text.num_stories = 48
    config.text.text.num_preference_rows = 12
    config.text.text.num_benchmark_pairs = 6
    for stage in ("stories", "spokenswag", "benchmarks"):
        config[stage].synth.num_workers = 1
    config.pretrain.train.max_steps = 4
    config.pretrain.train.per_device_batch_size = 4
    config.pretrain.train.warmup_steps = 1
    config.pretrain.train.eval_every = 2
    config.pretrain.train.eval_batches = 2
    config.pretrain.checkpoint.every_steps = 2
    config.pretrain.log.every_steps = 1
    config.pretrain.data.valid_fraction = 0.1
    config.dpo.train.max_steps = 2
    config.dpo.train.per_device_batch_size = 4
    config.dpo.train.warmup_steps = 1
    config.dpo.checkpoint.every_steps = 2
    config.dpo.log.every_steps = 1
    return config


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    return workdir, pipeline.run(reduced_config(), workdir)


def test_every_stage_ran_and_wrote_its_outputs(demo_run):
    workdir, results = demo_run
    assert list(results) == STAGES
    for stage in STAGES:
        assert (workdir / stage / pipeline.DONE).is_file(), stage
    assert all((workdir / "text" / name).stat().st_size for name in ("stories.jsonl", "swag.jsonl", "benchmarks.jsonl"))
    assert (workdir / "stories" / "units" / "centroids.npy").is_file()
    stories = (workdir / "stories" / "units" / "features.jsonl").read_text().splitlines()
    assert len(stories) == 48 and all(max(json.loads(line)["units"]) < 100 for line in stories)
    pairs = [json.loads(line) for line in (workdir / "spokenswag" / "preference.jsonl").read_text().splitlines()]
    assert pairs and all({"prompt", "chosen", "rejected", "chosen_text"} <= set(pair) for pair in pairs)
    layouts = {"tstorycloze": ("0_correct", "0_incorrect"), "sblimp": ("0+correct", "0+incorrect")}
    for name, first_pair in {**layouts, "swuggy": ("0_word", "0_nonword")}.items():
        files = sorted(path.stem for path in (workdir / "benchmarks" / "audio" / name).glob("*.wav"))
        assert len(files) == 12 and set(first_pair) <= set(files), name
    assert storage.resolve_model_dir(workdir / "pretrain").name == "4"
    assert storage.resolve_model_dir(workdir / "dpo").name == "2"
    assert results["pretrain"]["step"] == 4 and results["dpo"]["step"] == 2
    for name in ("report.md", "report.json", "report/metrics.png", "report/training.png"):
        assert (workdir / name).stat().st_size > 0, name


def test_report_numbers_are_the_evaluation_files(demo_run):
    workdir, _ = demo_run
    report = json.loads((workdir / "report.json").read_text())
    markdown = (workdir / "report.md").read_text()
    assert [row["metric"] for row in report["metrics"]] == ["sblimp", "swuggy", "tstorycloze"]
    for row in report["metrics"]:
        before = json.loads((workdir / "eval_pretrain" / "eval" / f"{row['metric']}.json").read_text())
        after = json.loads((workdir / "eval_dpo" / "eval" / f"{row['metric']}.json").read_text())
        assert (row["before"], row["after"]) == (before["accuracy"], after["accuracy"])
        assert row["after_pairs"] == after["num_pairs"] == 6
        assert (
            f"| {row['metric']} | 50% | {100 * before['accuracy']:.1f}% | {100 * after['accuracy']:.1f}% |" in markdown
        )
        assert after["model"].endswith("dpo/checkpoints/2") and before["model"].endswith("pretrain/checkpoints/4")
    assert set(report["stage_seconds"]) == set(STAGES) - {"report"}
    assert "python -m slam_jax.main --config configs/demo.py --workdir " + str(workdir) in markdown


def test_a_rerun_skips_every_stage(demo_run, capsys):
    workdir, results = demo_run
    before = (workdir / "report.md").read_text()
    again = pipeline.run(reduced_config(), workdir)
    assert again == json.loads(json.dumps(results, default=str))
    assert capsys.readouterr().out.count("already done") == len(STAGES)
    assert (workdir / "report.md").read_text() == before
