"""The device mesh and the one partition rule: nnx variable metadata -> mesh axes.

Each parameter of `Qwen2` carries `logical_axes` metadata, one name per dimension from
('layers', 'vocab', 'embed', 'mlp', 'heads', 'kv', None) where 'kv' is the head dimension
and 'layers' the leading axis of the stacked layer parameters, which is never sharded
(the layer scan slices it; neither 'tensor' nor 'fsdp' may go there).
Two mesh axes are understood:
  'tensor': Megatron-style tensor parallelism, through `logical_to_mesh_rules`;
  'fsdp':   fully sharded data parallelism, placed on the largest dimension that is not
            already sharded and divides evenly (so every weight is split when it can be).
A dimension whose size does not divide by its mesh axis is left replicated. Any other
mesh axis (e.g. 'data') replicates the parameters. Variables with flax.nnx's own
`out_sharding` metadata (mesh axis names) keep it, minus axes that do not divide their
dimension or are used twice; variables with no sharding metadata are replicated.
recal_jax.training.mesh re-exports make_mesh / variable_spec / tree_shardings (training
imports models, never the reverse).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = ("data", FSDP, TENSOR)
LAYERS = "layers"
LOGICAL_AXES = (LAYERS, "vocab", "embed", "mlp", "heads", "kv")


def logical_to_mesh_rules(tensor_parallel: bool) -> dict[str, str | None]:
    """Logical axis name -> mesh axis ('tensor') or None (not tensor-sharded).

    FSDP is not a per-name rule: see `partition_spec`.
    """
    tensor = TENSOR if tensor_parallel else None
    return {"vocab": tensor, "mlp": tensor, "heads": tensor, "embed": None, "kv": None,
            LAYERS: None}


def partition_spec(shape: tuple[int, ...], logical_axes: tuple, mesh_shape: dict[str, int],
                   tensor_parallel: bool) -> PartitionSpec:
    """The PartitionSpec of one parameter of `shape` with names `logical_axes`.

    'tensor' goes on the first dimension whose name maps to it (and divides); 'fsdp' on the
    largest remaining dimension that divides, never on a 'layers' dimension.
    """
    if len(shape) != len(logical_axes):
        raise ValueError(f"logical axes {logical_axes} do not match shape {shape}")
    rules = logical_to_mesh_rules(tensor_parallel)
    unknown = [a for a in logical_axes if a is not None and a not in rules]
    if unknown:
        raise ValueError(f"unknown logical axes {unknown}; known: {LOGICAL_AXES}")
    spec: list[str | None] = [None] * len(shape)
    tensor_size = mesh_shape.get(TENSOR, 1)
    if tensor_parallel and tensor_size > 1:
        for i, (size, name) in enumerate(zip(shape, logical_axes)):
            if name is not None and rules[name] == TENSOR and size % tensor_size == 0:
                spec[i] = TENSOR
                break  # a mesh axis may appear once per spec
    fsdp_size = mesh_shape.get(FSDP, 1)
    if fsdp_size > 1:
        free = [i for i, size in enumerate(shape)
                if spec[i] is None and logical_axes[i] != LAYERS and size % fsdp_size == 0]
        if free:
            spec[max(free, key=lambda i: shape[i])] = FSDP
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') Mesh over `devices` (default: all devices), every axis
    AxisType.Auto (the model relies on XLA sharding propagation).

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
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES,
                axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _check_auto(mesh: Mesh) -> None:
    explicit = [name for name, kind in zip(mesh.axis_names, mesh.axis_types)
                if kind != AxisType.Auto]
    if explicit:
        raise ValueError(
            f"mesh axes {explicit} are not AxisType.Auto; the model relies on XLA sharding "
            "propagation: build the mesh with axis_types=(AxisType.Auto, ...) "
            "(e.g. recal_jax.models.sharding.make_mesh)")


def _fit_spec(spec: Sequence[Any], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
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
    return PartitionSpec(*fitted)


def _tensor_parallel(mesh: Mesh, tensor_parallel: bool | None) -> bool:
    return dict(mesh.shape).get(TENSOR, 1) > 1 if tensor_parallel is None else bool(tensor_parallel)


def variable_spec(var: nnx.Variable, mesh: Mesh, tensor_parallel: bool | None = None) -> PartitionSpec:
    """PartitionSpec of one nnx Variable from its metadata (see module doc).

    `tensor_parallel` defaults to whether the mesh has a 'tensor' axis of size > 1.
    """
    meta = var.get_metadata()
    shape = tuple(np.shape(var.get_value()))
    if meta.get("out_sharding"):
        return _fit_spec(tuple(meta["out_sharding"]), shape, mesh)
    axes = meta.get("logical_axes")
    if axes:
        return partition_spec(shape, tuple(axes), dict(mesh.shape),
                              _tensor_parallel(mesh, tensor_parallel))
    return PartitionSpec()


def tree_shardings(tree: Any, mesh: Mesh, tensor_parallel: bool | None = None) -> Any:
    """NamedSharding for every array of `tree` (params, optimizer state, a TrainState...).

    nnx Variables (anywhere, e.g. inside optax moments, which keep the Variables of the
    params) get `variable_spec`; every other array is replicated. The result has the
    structure of `tree`, ready for jax.device_put / jit out_shardings.
    """
    def one(x):
        if _is_variable(x):
            return x.replace(NamedSharding(mesh, variable_spec(x, mesh, tensor_parallel)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, tree, is_leaf=_is_variable)


def param_shardings(model_or_state: Any, mesh: Mesh, tensor_parallel: bool | None = None):
    """NamedShardings for every variable, in the structure of `nnx.state(model)`.

    `tree_shardings` of the model's state, on an Auto mesh (checked). Use as
    `jax.device_put(nnx.state(model), param_shardings(model, mesh))` or as the in/out
    shardings of a jitted step. Variables without sharding metadata are replicated.
    """
    _check_auto(mesh)
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    return tree_shardings(state, mesh, tensor_parallel)


def shard_model(model: nnx.Module, mesh: Mesh, tensor_parallel: bool | None = None) -> None:
    """Moves the model's variables onto their shardings (in place)."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, param_shardings(state, mesh, tensor_parallel)))
