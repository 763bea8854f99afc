"""TrainState: everything a training run carries from step to step, as one pytree."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


class TrainState(struct.PyTreeNode):
    """Explicit training state (a pytree; `graphdef` is static metadata, not a leaf).

    graphdef: nnx.GraphDef of the policy model (nnx.merge(graphdef, params) rebuilds it).
    params: nnx.State of the policy's nnx.Param variables.
    opt_state: optax state of `params`.
    ref_params: nnx.State of the frozen reference policy (for the KL term), or None.
    calib_state: the calibration state (opaque pytree, e.g. CalibrationState), or None.
    rng: uint32[2] raw PRNG key data (raw so that checkpoints store plain arrays).
    step: i32 scalar, optimizer updates done.
    data_position: i32 scalar, where the data iterator stands (owned by the loop).
    """

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    params: Any
    opt_state: Any
    ref_params: Any
    calib_state: Any
    rng: jax.Array
    step: jax.Array
    data_position: jax.Array

    @classmethod
    def create(cls, model: nnx.Module, optimizer: optax.GradientTransformation, *,
               rng: jax.Array, calib_state: Any = None, with_reference: bool = False,
               data_position: int = 0) -> "TrainState":
        """Splits `model` into graphdef + params and initialises the optimizer.

        rng: a PRNG key (typed or raw uint32[2]). with_reference: keep a copy of the
        initial params as the frozen reference policy.
        """
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ValueError("TrainState.create: the model has non-Param state "
                             f"({list(rest.keys())}); only nnx.Param models are supported")
        if jnp.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        rng = jnp.asarray(rng, jnp.uint32)
        if rng.shape != (2,):
            raise ValueError(f"TrainState.create: rng must be a PRNG key; got shape {rng.shape}")
        ref = jax.tree.map(jnp.copy, params) if with_reference else None
        # Weakly typed leaves (e.g. jnp.full(..., 0.25)) would change type after the first
        # step and make the jitted step compile twice.
        calib_state = jax.tree.map(lambda x: jnp.asarray(x, jnp.asarray(x).dtype), calib_state)
        return cls(
            graphdef=graphdef,
            params=params,
            opt_state=optimizer.init(params),
            ref_params=ref,
            calib_state=calib_state,
            rng=rng,
            step=jnp.asarray(0, jnp.int32),
            data_position=jnp.asarray(data_position, jnp.int32),
        )

    def model(self) -> nnx.Module:
        """The policy as an nnx.Module (a fresh object sharing the params' arrays)."""
        return nnx.merge(self.graphdef, self.params)

    def next_rng(self) -> tuple["TrainState", jax.Array]:
        """(state with an advanced key, a fresh raw key uint32[2] for the caller)."""
        new, use = jax.random.split(self.rng)
        return self.replace(rng=new), use
