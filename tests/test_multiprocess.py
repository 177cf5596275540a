"""Two local JAX processes (gloo CPU collectives) train and checkpoint together, then resume together."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--config.model.preset=tiny",
    "--config.data.num_units=20",
    "--config.data.context_length=64",
    "--config.data.synthetic_files=200",
    "--config.train.per_device_batch_size=2",
    "--config.train.grad_accum_steps=2",
    "--config.train.eval_every=3",
    "--config.train.eval_batches=2",
    "--config.train.time_budget=",
    "--config.train.peak_flops_per_device=1e11",
    "--config.checkpoint.every_steps=3",
    "--config.log.every_steps=1",
]


def launch(workdir: Path, max_steps: int) -> list[subprocess.CompletedProcess]:
    port = portpicker.pick_unused_port()
    processes = []
    for index in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(index),
        )
        command = [
            sys.executable,
            "-m",
            "slam_jax.main",
            "--config",
            "configs/pretrain_synthetic.py",
            "--workdir",
            str(workdir),
        ]
        command += ARGS + [f"--config.train.max_steps={max_steps}"]
        processes.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def test_two_processes_train_checkpoint_and_resume(tmp_path):
    for result in launch(tmp_path, max_steps=6):
        assert result.returncode == 0, result.stderr[-3000:]
    step_dir = tmp_path / "checkpoints" / "6"
    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    # The data position is one global integer, the same whatever the number of processes that saved it.
    assert isinstance(meta["data_position"], int) and meta["data_position"] > 0
    assert meta["layout"] == {"processes": 2, "devices": 4, "mesh": {"data": 4, "fsdp": 1, "tensor": 1}}
    assert not (step_dir / "data").exists()
    recorded = json.loads((tmp_path / "run_manifest.json").read_text())
    assert [entry["layout"] for entry in recorded["layouts"]] == [meta["layout"]]  # the manifest records the layout
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4, 5, 6]  # process 0 logs, once
    assert all(np.isfinite(row["loss"]) for row in rows if "loss" in row)

    resumed = launch(tmp_path, max_steps=9)
    for result in resumed:
        assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in resumed[0].stdout and "(step 6)" in resumed[0].stdout
    assert (tmp_path / "checkpoints" / "9" / "params").is_dir()
