"""Multi-host start-up: `jax.distributed.initialize()` when the launcher's environment asks for it."""

import os

import jax

_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def wants_distributed(environ=os.environ) -> bool:
    """True under an explicit coordinator (JAX_COORDINATOR_ADDRESS), a multi-task SLURM job or a TPU pod."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return len(environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def maybe_initialize(environ=os.environ) -> None:
    """Join the job's processes (once, before any computation); a no-op for a single process."""
    if not wants_distributed(environ) or jax.distributed.is_initialized():
        return
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        missing = [name for name in _EXPLICIT if not environ.get(name)]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not")
        if environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(environ["JAX_NUM_PROCESSES"]),
            process_id=int(environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()


def barrier(name: str) -> None:
    """Wait until every process reaches this point (a no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
