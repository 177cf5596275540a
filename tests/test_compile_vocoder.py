"""`benchmarks.compile_vocoder`: the vocoder's training step compiled for a device this machine does not have.

A small step (benchmarks/vocoder_train.py's tiny generator with a duration predictor, discriminators / 8, 2 rows of
40 frames) compiled for an H100 keeps the test short; its buffer assignment, read from XLA's dump
(`--buffer-assignment also`), must give the compiled program's memory figures to the byte. Not compiled to the end
for a TPU: XLA's TPU code generator takes 2-20 s per convolution on this 2-core CPU (benchmarks/RESULTS.md), so even
this small step had not compiled for a v5e after 15 minutes; its buffer assignment (`--buffer-assignment only`)
is written in seconds, and the test reads it and stops the compile.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.num_units=50",
    "data.segment_frames=40",
    "model.embedding_dim=16",
    "model.upsample_initial_channel=32",
    "model.upsample_rates=(8,8)",
    "model.upsample_kernel_sizes=(16,16)",
    "model.resblock_kernel_sizes=(3,)",
    "model.resblock_dilation_sizes=((1,3,5),)",
    "model.duration_predictor_dim=8",
    "model.discriminator_divisor=8",
    "train.per_device_batch_size=2",
]
MEMORY_KEYS = ("argument_bytes", "output_bytes", "temp_bytes", "alias_bytes", "bytes_per_device")


def run_report(*arguments: str) -> tuple[dict, subprocess.CompletedProcess]:
    command = [sys.executable, "-m", "benchmarks.compile_vocoder", *arguments, "--json"]
    for item in SMALL:
        command += ["--set", item]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout), done


def test_a_small_vocoder_step_compiles_for_an_h100_and_reports_its_memory():
    report, done = run_report("--target", "h100", "--buffer-assignment", "also")
    assert report["compiled"] is True, report.get("error")
    assert report["device_kind"] == "NVIDIA H100 80GB HBM3" and report["devices"] == 1
    assert report["per_device_batch"] == [2, 40 * 64]
    assert "duration predictor 8" in report["architecture"] and report["discriminator_divisor"] == 8
    assert all(report[key] > 0 for key in MEMORY_KEYS), {key: report[key] for key in MEMORY_KEYS}
    # the donated state is counted once: arguments (state + batch) + temporaries + outputs - aliased
    assert report["alias_bytes"] == report["state_bytes"] <= report["argument_bytes"]
    used = report["argument_bytes"] + report["temp_bytes"] + report["output_bytes"] - report["alias_bytes"]
    assert report["bytes_per_device"] == used < report["device_memory_bytes"] and report["fits"]
    assert done.returncode == 0
    # XLA's buffer assignment, read from its dump before the code generation, is the compiled program's memory
    found = report["buffer_assignment"]
    assert {key: found[key] for key in MEMORY_KEYS} == {key: report[key] for key in MEMORY_KEYS}
    assert found["fits"] and found["file"].endswith("after_optimizations-buffer-assignment.txt")


def test_a_small_vocoder_steps_buffer_assignment_for_a_tpu_v5e_comes_without_waiting_for_its_code():
    report, done = run_report("--target", "tpu-v5e", "--buffer-assignment", "only", "--wait-seconds", "600")
    assert done.returncode == 0, report.get("error")
    assert report["compiled"] is False and "compile_seconds" not in report  # the compile was stopped
    assert report["device_kind"] == "TPU v5 lite" and report["per_device_batch"] == [2, 40 * 64]
    found = report["buffer_assignment"]
    assert all(found[key] > 0 for key in MEMORY_KEYS), found
    # the donated state is updated in place: aliased (the TPU's tiled layouts pad it: >= its logical bytes)
    assert report["state_bytes"] <= found["alias_bytes"] <= found["argument_bytes"]
    used = found["argument_bytes"] + found["temp_bytes"] + found["output_bytes"] - found["alias_bytes"]
    assert found["bytes_per_device"] == used < report["device_memory_bytes"] and found["fits"]
    assert found["seconds"] < 600
