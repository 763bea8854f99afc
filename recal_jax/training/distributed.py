"""Multi-process (multi-host) start-up and host-local -> global batches.

Call `maybe_initialize_distributed()` first thing in a launcher, before anything touches
a JAX device. With several processes each one loads its own slice of every batch (rows
[p * B / P, (p + 1) * B / P) for process p of P) and `host_local_batch_to_global` assembles
the global, row-sharded arrays that the train step takes.

Multi-host GRPO (recal_jax.training.iteration) rolls out a slice of each step's records per
process (`process_rows`), gathers the per-row reward arrays (`allgather_rows`) so that every
process calibrates the same global batch, and samples from process-local copies of the
policy's parameters (`process_local`). The gathering functions are collectives: every
process calls them, in the same order, with the same names and shapes.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

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


def process_rows(rows: Sequence[Any], process_index: int, process_count: int, *,
                 name: str = "rows") -> Sequence[Any]:
    """Process p's contiguous block rows[p * U / P:(p + 1) * U / P] of `rows` (a sequence
    or an array with a leading axis of length U). U must be divisible by P (a ValueError
    names `name` and both numbers otherwise)."""
    total = len(rows)
    if total % process_count:
        raise ValueError(f"{name} ({total}) must be divisible by the number of processes "
                         f"({process_count}): each process takes an equal slice")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    size = total // process_count
    return rows[process_index * size:(process_index + 1) * size]


def allgather_rows(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{name: x[R, ...]} of this process -> {name: numpy [P * R, ...]}: every process's rows,
    process 0's first (multihost_utils.process_allgather, tiled). Collective: every process
    passes the same names with the same shapes and dtypes. One process: numpy copies."""
    local = {k: np.asarray(v) for k, v in arrays.items()}
    scalars = [k for k, v in local.items() if v.ndim == 0]
    if scalars:
        raise ValueError(f"allgather_rows needs arrays with a row axis; {scalars} are scalars")
    gathered = multihost_utils.process_allgather(local, tiled=True)
    return {k: np.asarray(v) for k, v in gathered.items()}


def global_max(value: int) -> int:
    """The largest `value` over all processes (collective)."""
    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def process_local(tree: Any) -> Any:
    """`tree` with every jax.Array usable by this process alone (e.g. as the sampler's
    weights, in a computation that the other processes do not join). Per leaf:

    - numpy values and fully addressable arrays: unchanged;
    - arrays whose whole value is held by this process's devices (replicated across
      processes: every parameter under a mesh whose 'fsdp' and 'tensor' axes lie within
      one process, 'data' across processes; any fully replicated array): the same device
      buffers, re-wrapped as an array over the process's own block of the mesh (no copy,
      no communication), so the sampler keeps the fsdp/tensor layout within the process;
    - otherwise (a parameter split across processes, or a mesh whose devices of this
      process are not one block): gathered from all processes (process_allgather, a
      collective; a host copy when fully replicated) onto this process's default device.
    Same shapes and dtypes as `tree`; the values are equal.
    """
    return jax.tree.map(_process_local_leaf, tree)


def _process_local_leaf(x: Any) -> Any:
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return x
    local = _local_sharding(x.sharding)
    if local is not None:
        return jax.make_array_from_single_device_arrays(
            x.shape, local, [s.data for s in x.addressable_shards])
    # uncommitted (default device) so that they mix with leaves on the process's own block
    if x.sharding.is_fully_replicated:
        return jnp.asarray(np.asarray(x.addressable_data(0)))
    return jnp.asarray(multihost_utils.process_allgather(x, tiled=True))


def _local_sharding(sharding: Any) -> NamedSharding | None:
    """`sharding` restricted to this process's devices, when they form a block of its mesh
    that spans every mesh axis the spec shards over; else None."""
    if not isinstance(sharding, NamedSharding):
        return None
    mesh = sharding.mesh
    devices = np.asarray(mesh.devices)
    mine = np.vectorize(lambda d: d.process_index == jax.process_index())(devices)
    if not mine.any():
        return None
    block = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mine))
    if not mine[block].all():
        return None
    local_mesh = Mesh(devices[block], mesh.axis_names, axis_types=mesh.axis_types)
    used = [a for entry in sharding.spec if entry is not None
            for a in (entry if isinstance(entry, tuple) else (entry,))]
    if any(local_mesh.shape[a] != mesh.shape[a] for a in used):
        return None
    return NamedSharding(local_mesh, sharding.spec)
