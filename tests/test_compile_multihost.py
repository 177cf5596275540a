"""`benchmarks.compile` for a pod or a cluster: one train step over every chip of several hosts.

The tiny preset keeps each compile to a few seconds; the paper's step and the scaled size on `tpu-v5e-16` and
`tpu-v4-32` are in benchmarks/RESULTS.md ("Pods and clusters").
"""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from ml_collections import ConfigDict
from test_compile import KEYS

from benchmarks import compile as compile_tool

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set",
    "model.preset=tiny",
    "--set",
    "train.per_device_batch_size=2",
    "--set",
    "data.context_length=128",
    "--set",
    "train.grad_accum_steps=2",
    "--set",
    "model.scan_layers=True",
]


def compile_report(target: str, *arguments: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.compile", "--target", target, "--json", *TINY, *arguments]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout)


def test_tpu_v5e_16_compiles_over_four_hosts_with_fsdp_within_each_host():
    report = compile_report("tpu-v5e-16")
    assert KEYS <= set(report), sorted(KEYS - set(report))
    assert report["compiled"] is True, report.get("error")
    assert (report["devices"], report["hosts"], report["devices_per_host"], report["chips"]) == (16, 4, 4, 16)
    assert report["mesh"] == {"data": 4, "fsdp": 4, "tensor": 1} and report["fsdp_within_host"] is True
    assert report["global_batch"] == [2, 2 * 16, 128] and report["attention_kernel"].startswith("splash_mha")
    collectives = report["collectives"]
    assert sorted(collectives) == sorted(compile_tool.COLLECTIVES)
    # fsdp gathers the sharded parameters; gradients are summed across the data axis
    assert collectives["all-gather"] > 0 and collectives["all-reduce"] > 0
    assert report["bytes_per_chip"] == report["bytes_per_device"] < report["device_memory_bytes"]
    assert report["dots_with_f32_operand"] == 0 and report["compile_seconds"] > 0


def test_a_mesh_override_spelled_as_in_training_is_compiled_as_given():
    """`--config.mesh.*` as `slam_jax.main` takes it: fsdp over all 16 chips of a v4-32 (megacore: one device per
    chip), so each fsdp group spans the four hosts."""
    report = compile_report("tpu-v4-32", "--config.mesh.data=1", "--config.mesh.fsdp=16")
    assert report["compiled"] is True, report.get("error")
    assert (report["device_kind"], report["devices"], report["hosts"], report["chips"]) == ("TPU v4", 16, 4, 16)
    assert report["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1} and report["fsdp_within_host"] is False
    assert report["collectives"]["all-gather"] > 0


def test_collectives_are_counted_by_opcode_once_per_async_pair():
    text = "\n".join(
        [
            "%all-reduce.1 = f32[8]{0} all-reduce(f32[8]{0} %p), replica_groups={{0,1}}, to_apply=%add",
            "%ags = (f32[4]{0}, f32[8]{0}) all-gather-start(f32[4]{0} %q), dimensions={0}",
            "%agd = f32[8]{0} all-gather-done((f32[4]{0}, f32[8]{0}) %ags)",
            "%rs = f32[4]{0} reduce-scatter(f32[8]{0} %all-reduce.1), dimensions={0}, to_apply=%add",
            "%cp = f32[4]{0} collective-permute(f32[4]{0} %rs), source_target_pairs={{0,1},{1,0}}",
            "%use = f32[4]{0} add(f32[4]{0} %rs, f32[4]{0} %all-gather.3)",
        ]
    )
    counts = compile_tool.collective_counts(text)
    assert counts == {"all-reduce": 1, "all-gather": 1, "reduce-scatter": 1, "all-to-all": 0, "collective-permute": 1}


def fake_devices(hosts: int, per_host: int) -> list:
    return [types.SimpleNamespace(id=i, process_index=i // per_host, coords=None) for i in range(hosts * per_host)]


def test_the_pod_split_replaces_only_the_default_mesh():
    devices = fake_devices(4, 4)
    default = ConfigDict({"mesh": {"data": -1, "fsdp": 1, "tensor": 1}})
    compile_tool.pod_mesh(default, devices)
    assert (default.mesh.data, default.mesh.fsdp, default.mesh.tensor) == (4, 4, 1)
    chosen = ConfigDict({"mesh": {"data": 16, "fsdp": 1, "tensor": 1}})
    compile_tool.pod_mesh(chosen, devices)
    assert (chosen.mesh.data, chosen.mesh.fsdp) == (16, 1)
    one_host = ConfigDict({"mesh": {"data": -1, "fsdp": 1, "tensor": 1}})  # the single-host targets keep it
    compile_tool.pod_mesh(one_host, fake_devices(1, 4))
    assert one_host.mesh.data == -1
    assert compile_tool.hosts_of(devices) == 4 and compile_tool.chips_of(devices) == 16


def test_fsdp_within_host_reads_the_mesh_groups():
    devices = np.array(fake_devices(2, 4), dtype=object)
    by_host = types.SimpleNamespace(devices=devices.reshape(2, 4, 1), shape={"data": 2, "fsdp": 4, "tensor": 1})
    across = types.SimpleNamespace(devices=devices.reshape(4, 2, 1).transpose(1, 0, 2), shape=by_host.shape)
    assert compile_tool.fsdp_within_host(by_host) is True
    assert compile_tool.fsdp_within_host(across) is False


def test_an_unknown_argument_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        compile_tool.main(["--target", "tpu-v5e-16", "--mesh.fsdp=16"])
    assert exit_info.value.code == 2 and "unrecognized argument: --mesh.fsdp=16" in capsys.readouterr().err
