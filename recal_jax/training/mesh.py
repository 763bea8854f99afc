"""Device mesh ('data', 'fsdp', 'tensor') and the shardings of batches and parameters.

Batches are split along their leading (row) axis over 'data' and 'fsdp' together
(fsdp is extra data parallelism whose parameters are also sharded).
The mesh maker and the partition rule of parameters (and of optimizer state, which keeps
the params' nnx Variables) are recal_jax.models.sharding's, re-exported here:
`make_mesh`, `variable_spec`, `tree_shardings`.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from recal_jax.models.sharding import (  # noqa: F401  (re-exported)
    MESH_AXES, make_mesh, tree_shardings, variable_spec,
)

BATCH_AXES = ("data", "fsdp")

# Logical axis -> tensor mesh axis, as partition_spec uses it ('fsdp' is not a per-name
# rule: it goes on each weight's largest free dimension).


def batch_parallelism(mesh: Mesh) -> int:
    """How many ways the batch rows are split: size of 'data' times size of 'fsdp'."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows over ('data', 'fsdp'), the other `ndim - 1` axes replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict:
    """device_put every array of `batch` with its rows split over ('data', 'fsdp')."""
    par = batch_parallelism(mesh)
    out = {}
    for name, value in batch.items():
        value = np.asarray(value) if not isinstance(value, jax.Array) else value
        if value.ndim == 0 or value.shape[0] % par:
            raise ValueError(f"batch[{name!r}] has shape {value.shape}: its leading axis must "
                             f"be divisible by data*fsdp = {par}")
        out[name] = jax.device_put(value, batch_sharding(mesh, value.ndim))
    return out


def shard_tree(tree: Any, mesh: Mesh, tensor_parallel: bool | None = None) -> Any:
    """device_put `tree` with tree_shardings(tree, mesh, tensor_parallel)."""
    return jax.device_put(tree, tree_shardings(tree, mesh, tensor_parallel))
