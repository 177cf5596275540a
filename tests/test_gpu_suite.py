"""The GPU suite runs end to end at toy sizes on this CPU, so device minutes go to measuring, not debugging.

Every part must produce figures: the attention check within bf16 rounding of the float32 einsum for each
backend this platform runs (the Pallas kernels interpreted), every train variant timed, both PyTorch steps, the
DPO and decode comparisons, the pipeline against the train step, an XLA-flag run in a fresh process, and the
vocoder's training step beside the PyTorch one.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import trace_summary

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
    for part in ("attention", "train", "torch", "profile", "dpo", "decode", "pipeline", "xla_flags", "vocoder_train"):
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
    threads = sorted(figures["threads"] for figures in pipeline["pipelines"].values())
    assert len(threads) == 2 and threads[0] == 1 and threads[1] >= 2  # one reader thread, then several
    assert pipeline["pipeline_over_train"] > 0
    assert results["xla_flags"]["variant"] == "xla_unrolled"  # the step as configs/slam.py lays it out
    flag_run = results["xla_flags"]["flag_sets"]["cpu_fast_math_off"]
    assert flag_run["seconds"] > 0 and flag_run["flags"] == "--xla_cpu_enable_fast_math=false"


def test_the_vocoder_training_step_was_timed_beside_the_pytorch_step(suite):
    """The `vocoder_train` part (benchmarks/vocoder_train.py at its --quick sizes here): both steps timed, and the
    first step's losses, from the same weights, the reference's."""
    result = suite[1]["vocoder_train"]
    assert set(result["implementations"]) == {"reference_torch_fp32", "slam_jax_vocoder_step"}
    for figures in result["implementations"].values():
        assert figures["seconds_per_step"] > 0 and figures["audio_seconds_per_second"] > 0
    assert result["size"] == "tiny" and result["first_step_max_relative_difference"] < 1e-4


def test_the_profile_part_traced_the_configs_step_and_summed_its_ops(suite):
    profile = suite[1]["profile"]
    assert profile["variant"] == "xla_unrolled" and profile["lines"] == "host_xla_threads"  # a CPU's XLA threads
    assert profile["steps"] == 2 and profile["busy_seconds_per_step"] > 0 and profile["wall_seconds_per_step"] > 0
    by_category = sum(figures["seconds_per_step"] for figures in profile["by_category"].values())
    assert by_category == pytest.approx(profile["busy_seconds_per_step"])
    assert profile["top_ops"] and all(op["calls_per_step"] > 0 for op in profile["top_ops"])
    assert list(Path(profile["trace_folder"]).glob("plugins/profile/*/perfetto_trace.json.gz"))


def _line(pid: int, tid: int, name: str) -> dict:
    return {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}


def _process(pid: int, name: str) -> dict:
    return {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}


def _op(pid: int, tid: int, name: str, microseconds: float) -> dict:
    return {"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": 0, "dur": microseconds}


def test_a_gpu_trace_is_read_from_its_streams_or_else_its_xla_ops_line():
    """Hand-made traces of 2 steps: a GPU with kernels on two streams and the same work on an `XLA Ops` line
    (which must not count twice), the host's own threads and a Megascale process ignored; then a TPU-like device
    with the `XLA Ops` line only."""
    kernels = [  # (line, name, microseconds)
        (11, "mha_forward", 300.0),
        (11, "gemm_fusion_dot_12", 1000.0),
        (11, "gemm_fusion_dot_12", 1000.0),
        (11, "loop_add_fusion", 200.0),
        (12, "ncclDevKernel_AllReduce_Sum_f32", 100.0),
        (11, "transpose_7", 50.0),
        (11, "cudnn_generated_fort_native_sdpa_sm90", 150.0),
    ]
    header = [_process(1, "/device:GPU:0"), _process(2, "/host:CPU"), _process(3, "/device:CUSTOM:Megascale Trace")]
    header += [_line(1, 10, "XLA Ops"), _line(1, 11, "Stream #13(Compute)"), _line(1, 12, "Stream #14(Nccl)")]
    header += [_line(2, 20, "tf_XLAPjRtCpuClient/1"), _line(3, 30, "GrpcTcpEvents")]
    noise = [_op(2, 20, "host_fusion", 9e6), _op(3, 30, "grpc", 9e6), {"ph": "i", "name": "marker", "pid": 1}]
    ops = [_op(1, 10, f"op.{index}", us) for index, (_, _, us) in enumerate(kernels)]
    gpu = header + noise + ops + [_op(1, line, name, us) for line, name, us in kernels]
    summary = trace_summary.summarise(gpu, steps=2, wall_seconds_per_step=0.002)
    assert summary["lines"] == "streams" and summary["line_count"] == 2
    # per step: (300 + 2000 + 200 + 100 + 50 + 150) us / 2 = 1.4 ms busy of 2 ms: 30% idle
    assert summary["busy_seconds_per_step"] == pytest.approx(1.4e-3)
    assert summary["idle_share"] == pytest.approx(0.3)
    seconds = {name: figures["seconds_per_step"] for name, figures in summary["by_category"].items()}
    assert seconds == pytest.approx(
        {"matmul": 1.0e-3, "attention": 0.225e-3, "other": 0.1e-3, "collective": 0.05e-3, "copy_transpose": 25e-6}
    )
    assert list(summary["by_category"]) == ["matmul", "attention", "other", "collective", "copy_transpose"]
    top = summary["top_ops"][0]
    assert (top["name"], top["calls_per_step"], top["seconds_per_step"]) == ("gemm_fusion_dot_12", 1.0, 1.0e-3)

    tpu = [_process(1, "/device:TPU:0"), _line(1, 10, "XLA Ops"), *ops]
    summary = trace_summary.summarise(tpu, steps=2)
    assert summary["lines"] == "xla_ops" and summary["busy_seconds_per_step"] == pytest.approx(1.4e-3)
    assert "idle_share" not in summary and set(summary["by_category"]) == {"other"}
