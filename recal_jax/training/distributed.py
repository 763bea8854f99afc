"""Multi-process (multi-host) start-up and host-local -> global batches.

Call `maybe_initialize_distributed()` first thing in a launcher, before anything touches
a JAX device. With several processes each one loads its own slice of every batch (rows
[p * B / P, (p + 1) * B / P) for process p of P) and `host_local_batch_to_global` assembles
the global, row-sharded arrays that the train step takes.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from recal_jax.training.mesh import batch_sharding


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from e


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Calls jax.distributed.initialize when this run is one of several processes.

    Sources, first match wins: the arguments; the environment variables
    JAX_COORDINATOR_ADDRESS ("host:port"), JAX_NUM_PROCESSES, JAX_PROCESS_ID; a SLURM job
    with more than one task (SLURM_JOB_ID and SLURM_NTASKS > 1: JAX auto-detects the
    rest). A single process (num_processes 1 or nothing set) is left alone.
    Returns whether the distributed runtime is initialised. Safe to call twice.
    """
    if jax.distributed.is_initialized():
        return True
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    nproc = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if address is not None or nproc is not None or pid is not None:
        if nproc == 1 and address is None:
            return False
        missing = [n for n, v in (("coordinator_address / JAX_COORDINATOR_ADDRESS", address),
                                  ("num_processes / JAX_NUM_PROCESSES", nproc),
                                  ("process_id / JAX_PROCESS_ID", pid)) if v is None]
        if missing:
            raise ValueError(f"multi-process launch is missing {missing}")
        if nproc < 1 or not 0 <= pid < nproc:
            raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes; "
                             f"got {nproc}, {pid}")
        jax.distributed.initialize(coordinator_address=address, num_processes=nproc,
                                   process_id=pid)
        return True
    if os.environ.get("SLURM_JOB_ID") and (_env_int("SLURM_NTASKS") or 1) > 1:
        jax.distributed.initialize()
        return True
    return False


def host_local_batch_to_global(batch: Mapping[str, Any], mesh: Mesh) -> dict:
    """Global jax.Arrays, rows split over ('data', 'fsdp'), from this process's rows.

    Every process passes the same keys with the same per-process shapes; the global batch
    has process_count times as many rows, process p's rows coming after process p - 1's
    (the order of jax.devices(), which make_mesh follows).
    """
    out = {}
    for name, value in batch.items():
        local = np.asarray(value)
        if local.ndim == 0:
            raise ValueError(f"batch[{name!r}] is a scalar; batch arrays need a row axis")
        out[name] = jax.make_array_from_process_local_data(
            batch_sharding(mesh, local.ndim), local)
    return out
