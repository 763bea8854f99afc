"""Logical parameter axes -> mesh axes.

Each parameter of `Qwen2` carries `logical_axes` metadata, one name per dimension from
('vocab', 'embed', 'mlp', 'heads', 'kv', None) where 'kv' is the head dimension.
Two mesh axes are understood:
  'tensor': Megatron-style tensor parallelism, through `logical_to_mesh_rules`;
  'fsdp':   fully sharded data parallelism, placed on the largest dimension that is not
            already sharded and divides evenly (so every weight is split when it can be).
A dimension whose size does not divide by its mesh axis is left replicated. Any other
mesh axis (e.g. 'data') replicates the parameters.
"""
from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

FSDP = "fsdp"
TENSOR = "tensor"
LOGICAL_AXES = ("vocab", "embed", "mlp", "heads", "kv")


def logical_to_mesh_rules(tensor_parallel: bool) -> dict[str, str | None]:
    """Logical axis name -> mesh axis ('tensor') or None (not tensor-sharded).

    FSDP is not a per-name rule: see `partition_spec`.
    """
    tensor = TENSOR if tensor_parallel else None
    return {"vocab": tensor, "mlp": tensor, "heads": tensor, "embed": None, "kv": None}


def partition_spec(shape: tuple[int, ...], logical_axes: tuple, mesh_shape: dict[str, int],
                   tensor_parallel: bool) -> PartitionSpec:
    """The PartitionSpec of one parameter of `shape` with names `logical_axes`."""
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
        free = [i for i, size in enumerate(shape) if spec[i] is None and size % fsdp_size == 0]
        if free:
            spec[max(free, key=lambda i: shape[i])] = FSDP
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def make_mesh(fsdp: int = -1, tensor: int = 1, data: int = 1, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh with Auto axis types (what the model expects).

    fsdp=-1 takes all devices left after data * tensor.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp == -1:
        if n % (data * tensor):
            raise ValueError(f"{n} devices do not divide into data={data} x tensor={tensor}")
        fsdp = n // (data * tensor)
    if data * fsdp * tensor != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} != {n} devices")
    return jax.make_mesh((data, fsdp, tensor), ("data", FSDP, TENSOR),
                         axis_types=(AxisType.Auto,) * 3, devices=devices)


def _check_auto(mesh: Mesh) -> None:
    explicit = [name for name, kind in zip(mesh.axis_names, mesh.axis_types)
                if kind != AxisType.Auto]
    if explicit:
        raise ValueError(
            f"mesh axes {explicit} are not AxisType.Auto; the model relies on XLA sharding "
            "propagation: build the mesh with axis_types=(AxisType.Auto, ...) "
            "(e.g. recal_jax.models.sharding.make_mesh)")


def param_shardings(model_or_state: Any, mesh: Mesh, tensor_parallel: bool | None = None):
    """NamedShardings for every variable, in the structure of `nnx.state(model)`.

    `tensor_parallel` defaults to whether the mesh has a 'tensor' axis of size > 1.
    Use as `jax.device_put(nnx.state(model), param_shardings(model, mesh))` or as the
    in/out shardings of a jitted train step. Variables without `logical_axes` metadata
    are replicated.
    """
    _check_auto(mesh)
    mesh_shape = dict(mesh.shape)
    if tensor_parallel is None:
        tensor_parallel = mesh_shape.get(TENSOR, 1) > 1
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)

    def to_sharding(var):
        if not _is_variable(var):
            return NamedSharding(mesh, PartitionSpec())
        axes = var.get_metadata().get("logical_axes")
        shape = tuple(var.get_value().shape)
        if axes is None:
            spec = PartitionSpec()
        else:
            spec = partition_spec(shape, axes, mesh_shape, tensor_parallel)
        return var.replace(NamedSharding(mesh, spec))

    return jax.tree.map(to_sharding, state, is_leaf=_is_variable)


def shard_model(model: nnx.Module, mesh: Mesh, tensor_parallel: bool | None = None) -> None:
    """Moves the model's variables onto their shardings (in place)."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, param_shardings(state, mesh, tensor_parallel)))
