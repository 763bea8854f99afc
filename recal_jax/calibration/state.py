"""`CalibrationState`: the explicit, checkpointed state of calibration (a pytree)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from recal_jax.calibration.config import CalibrationConfig
from recal_jax.calibration.route_balance import RouteWindow, init_route_window


class CalibrationState(NamedTuple):
    """freq f32[M]: EMA routing frequency p (spec 3), uniform at start.
    m2 f32[D,K+1]: per-dataset second-moment EMA of the advantages, one column per
        component plus the last one for the scalar (decompose=False) pass.
    m2_initialized bool[D,K+1]: whether m2 has seen its first batch with min_count rollouts.
    route_window: Router-R1's sliding window of sqrt(cost) (route_rule='router_r1').
    """

    freq: jax.Array
    m2: jax.Array
    m2_initialized: jax.Array
    route_window: RouteWindow


def init_state(config: CalibrationConfig, num_models: int) -> CalibrationState:
    if not isinstance(config, CalibrationConfig):
        raise ValueError(f"init_state needs a CalibrationConfig, got {type(config).__name__}")
    if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models < 1:
        raise ValueError(f"num_models must be an int >= 1, got {num_models!r}")
    shape = (config.num_datasets, config.num_stats)
    return CalibrationState(
        freq=jnp.full((num_models,), 1.0 / num_models, jnp.float32),
        m2=jnp.zeros(shape, jnp.float32),
        m2_initialized=jnp.zeros(shape, bool),
        route_window=init_route_window(config.route_window),
    )
