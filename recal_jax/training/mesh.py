"""Device mesh ('data', 'fsdp', 'tensor') and the shardings of batches and parameters.

Batches are split along their leading (row) axis over 'data' and 'fsdp' together
(fsdp is extra data parallelism whose parameters are also sharded).
Parameters get their PartitionSpec from nnx metadata:
  - `out_sharding` (flax.nnx's own sharding metadata, mesh axis names): used as given;
  - `logical_axes` (logical names, as recal_jax.models annotates them): mapped to mesh
    axes through `rules` (DEFAULT_RULES unless given);
  - neither: replicated.
A dimension whose size is not divisible by its mesh axes, or whose mesh axis is already
used by another dimension of the same array, stays unsharded, so any model fits any mesh.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis name (recal_jax.models) -> mesh axis (or None: never sharded)
DEFAULT_RULES: Mapping[str, str | None] = {
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv": None,
    "vocab": "tensor",
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh of shape (data, fsdp, tensor) over `devices` (default: all devices).

    At most one of the sizes may be -1 (all the remaining devices); the product must
    equal the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [data, fsdp, tensor]
    if any((not isinstance(s, int)) or s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive ints or -1; got data={data}, "
                         f"fsdp={fsdp}, tensor={tensor}")
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh size may be -1; got {sizes}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n % known:
            raise ValueError(f"{n} devices cannot be split into a mesh with fixed sizes "
                             f"{sizes} (product of the fixed sizes {known} must divide {n})")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) has "
                         f"{math.prod(sizes)} slots but there are {n} devices")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


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


def _fit_spec(spec: Sequence[Any], shape: Sequence[int], mesh: Mesh) -> P:
    """Drops mesh axes that do not divide their dimension or are used twice."""
    used: set[str] = set()
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
        names = tuple(a for a in names if a in mesh.shape)
        size = math.prod(mesh.shape[a] for a in names)
        if not names or dim % size or used.intersection(names):
            fitted.append(None)
            continue
        used.update(names)
        fitted.append(names[0] if len(names) == 1 else names)
    return P(*fitted)


def variable_spec(var: nnx.Variable, mesh: Mesh,
                  rules: Mapping[str, Any] | None = None) -> P:
    """PartitionSpec of one nnx Variable from its sharding metadata (see module doc)."""
    meta = var.get_metadata()
    shape = np.shape(var.get_value())
    if meta.get("out_sharding"):
        return _fit_spec(tuple(nnx.get_partition_spec(var)[...]), shape, mesh)
    logical = meta.get("logical_axes")
    if logical:
        rules = DEFAULT_RULES if rules is None else rules
        return _fit_spec([rules.get(a) if a is not None else None for a in logical],
                         shape, mesh)
    return P()


def tree_shardings(tree: Any, mesh: Mesh, rules: Mapping[str, Any] | None = None) -> Any:
    """NamedSharding for every array of `tree` (params, optimizer state, a TrainState...).

    nnx Variables (anywhere, e.g. inside optax moments, which keep the Variables of the
    params) are sharded by their metadata; every other array is replicated. The result
    has the structure of `tree`, ready for jax.device_put / jit out_shardings.
    """
    def one(x):
        if isinstance(x, nnx.Variable):
            return x.replace(NamedSharding(mesh, variable_spec(x, mesh, rules)))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_tree(tree: Any, mesh: Mesh, rules: Mapping[str, Any] | None = None) -> Any:
    """device_put `tree` with tree_shardings(tree, mesh, rules)."""
    return jax.device_put(tree, tree_shardings(tree, mesh, rules))
