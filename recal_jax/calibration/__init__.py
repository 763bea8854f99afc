"""Reward calibration (spec sections 3-6): pure, jit-able functions over batched rewards."""

from recal_jax.calibration.advantages import batch_normalize, batch_scale, batch_std, group_advantages
from recal_jax.calibration.calibrate import calibrate
from recal_jax.calibration.config import (
    ALL_PRESET_NAMES, COMPONENTS, DEFAULT_WEIGHTS, EXTENSION_PRESET_NAMES, PRESET_NAMES, PRESETS,
    CalibrationConfig)
from recal_jax.calibration.dataset_scale import dataset_moments, dataset_scale, dataset_scale_ema
from recal_jax.calibration.gating import gate_rewards, router_r1_scalar_reward, weighted_sum
from recal_jax.calibration.reweight import group_std, variance_weights
from recal_jax.calibration.route_balance import (
    RouteWindow, balance_reward, ema_frequencies, init_route_window, route_reward_linear,
    route_reward_router_r1)
from recal_jax.calibration.state import CalibrationState, init_state

__all__ = [
    "ALL_PRESET_NAMES", "COMPONENTS", "DEFAULT_WEIGHTS", "EXTENSION_PRESET_NAMES", "PRESET_NAMES", "PRESETS",
    "CalibrationConfig", "CalibrationState",
    "RouteWindow", "balance_reward", "batch_normalize", "batch_scale", "batch_std", "calibrate",
    "dataset_moments", "dataset_scale", "dataset_scale_ema", "ema_frequencies", "gate_rewards",
    "group_advantages", "group_std", "init_route_window", "init_state", "route_reward_linear",
    "route_reward_router_r1", "router_r1_scalar_reward", "variance_weights", "weighted_sum",
]
