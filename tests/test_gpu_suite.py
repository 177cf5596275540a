"""The GPU suite runs end to end at toy sizes on this CPU, so device minutes go to measuring, not debugging.

Every part must produce figures: the attention check within bf16 rounding of the float32 einsum for each
backend this platform runs (the Pallas kernels interpreted), every train variant timed, both PyTorch steps, the
DPO and decode comparisons, the pipeline against the train step, and an XLA-flag run in a fresh process.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gpu_suite")
    command = [sys.executable, "-m", "benchmarks.gpu_suite", "--out", str(out), "--tiny", "--repeats", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "suite.json").read_text())


def test_every_part_ran_and_was_saved_on_its_own(suite):
    out, results = suite
    for part in ("attention", "train", "torch", "dpo", "decode", "pipeline", "xla_flags"):
        assert part in results and "failed" not in results[part], (part, results.get(part, {}).get("failed"))
        assert json.loads((out / f"{part}.json").read_text())["part_seconds"] > 0


def test_attention_backends_agree_with_the_float32_einsum(suite):
    backends = suite[1]["attention"]["backends"]
    assert set(backends) == {"xla", "pallas_gpu", "splash"}
    for name, figures in backends.items():
        errors = figures["max_abs_error_vs_f32_einsum"]
        assert set(errors) == {"out", "dq", "dk", "dv"}
        assert max(errors.values()) < 0.05, (name, errors)  # bf16 inputs and outputs
        assert figures["forward_backward"]["seconds"] > 0


def test_train_variants_and_pytorch_steps_were_timed(suite):
    train = suite[1]["train"]
    assert train["auto_backend"] == "xla"
    expected = {"xla_scan", "pallas_gpu_scan", "splash_scan", "xla_unrolled", "xla_unrolled_onehot_embed"}
    expected |= {"xla_remat_dots_no_batch", "xla_mu_bf16"}
    assert set(train["variants"]) == expected
    for name, figures in train["variants"].items():
        assert figures["seconds"] > 0 and figures["tokens_per_second"] > 0, name
        assert figures["compile_seconds"] > 0
    torch_steps = suite[1]["torch"]["variants"]
    assert set(torch_steps) == {"slamkit_like", "compiled_fused_adamw"}
    assert all(figures["seconds"] > 0 for figures in torch_steps.values())


def test_dpo_decode_pipeline_and_flags_have_figures(suite):
    results = suite[1]
    assert results["dpo"]["steps"]["dpo_over_pretrain"] > 0
    ratios = results["decode"]["jax_over_torch_tokens_per_s"]["bf16"]
    assert set(ratios) == {"batch1", "batch2"} and all(value > 0 for value in ratios.values())
    pipeline = results["pipeline"]
    workers = sorted(figures["workers"] for figures in pipeline["pipelines"].values())
    assert len(workers) == 2 and workers[0] == 0 and workers[1] >= 1  # in-process, then worker processes
    assert pipeline["pipeline_over_train"] > 0
    assert results["xla_flags"]["variant"] == "xla_unrolled"  # the step as configs/slam.py lays it out
    flag_run = results["xla_flags"]["flag_sets"]["cpu_fast_math_off"]
    assert flag_run["seconds"] > 0 and flag_run["flags"] == "--xla_cpu_enable_fast_math=false"
