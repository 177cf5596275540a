"""Pieces of multi-host training that one process can check: which rows a process builds, global batches from
them, agreed flags, the watchdog's switch and the supervisor's reading of a coordination abort."""

import numpy as np
import pytest

from slam_jax import main, parallel


@pytest.mark.parametrize("sizes", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)])
def test_a_global_batch_from_this_process_rows_equals_the_whole_batch_placed(sizes):
    mesh = parallel.make_mesh(*sizes)
    rows = parallel.data_parallel_size(mesh) * 3
    mine = parallel.process_rows(mesh, rows)
    assert mine == list(range(rows))  # one process holds every row
    whole = np.arange(2 * rows * 5).reshape(2, rows, 5)
    sharding = parallel.batch_sharding(mesh, leading_axes=1, trailing_axes=1)
    built = parallel.global_batch(whole[:, mine], mine, sharding, whole.shape, row_axis=1)
    assert built.sharding == sharding
    np.testing.assert_array_equal(np.asarray(built), whole)
    for shard in built.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), whole[shard.index])


def test_flags_of_one_process_are_its_own():
    mesh = parallel.make_mesh()
    np.testing.assert_array_equal(np.asarray(parallel.any_process(mesh, [0, 1])), [0, 1])


def test_the_watchdog_is_off_for_one_process():
    with parallel.HostWatchdog(60, lambda: "none") as watchdog:
        assert not watchdog.active


def test_the_supervisor_names_the_lost_process_from_the_coordination_abort(tmp_path):
    service_gone = (
        "E1205 coordination_service_agent.cc:289] Polled an error from coordination service (this can be an error "
        'from this or another task).\n:UNKNOWN:Error received from peer {grpc_status:14, grpc_message:"Socket closed"}'
    )
    assert main.lost_process(service_gone) == 0
    assert main.lost_process("coordination_service.cc] Task 3 heartbeat timeout. This indicates ...") == 3
    assert main.lost_process("Segmentation fault") is None
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    (tmp_path / "checkpoints" / "10.orbax-checkpoint-tmp-1").mkdir()  # not committed
    line = main.last_committed(["slam_jax.main", "--config", "configs/demo.py", f"--workdir={tmp_path}"])
    assert line == f"the last committed checkpoint is step 5 in {tmp_path}/checkpoints"
    assert main.supervise(["slam_jax.main"], environ={}) is None  # one host: the job runs in this process


@pytest.mark.parametrize(
    "environ, wanted",
    [
        ({}, False),
        ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, True),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "4"}, True),
        ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, False),
        ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, True),
        ({"SLAM_JAX_DISTRIBUTED": "1"}, True),
        ({"SLAM_JAX_DISTRIBUTED": "0"}, False),
    ],
)
def test_the_launcher_environment_decides_whether_to_join_other_hosts(environ, wanted):
    assert parallel.wants_distributed(environ) is wanted
