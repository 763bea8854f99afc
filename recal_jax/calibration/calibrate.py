"""`calibrate`: the whole pipeline gate -> baseline -> scale -> weighted sum -> reweight."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax.calibration.advantages import batch_normalize, batch_scale, group_advantages
from recal_jax.calibration.config import NUM_COMPONENTS, CalibrationConfig
from recal_jax.calibration.dataset_scale import dataset_scale, dataset_scale_ema
from recal_jax.calibration.gating import gate_rewards, router_r1_scalar_reward, weighted_sum
from recal_jax.calibration.reweight import INFORMATIVE_TOL, group_std, variance_weights
from recal_jax.calibration.routing_rewards import (
    balance_reward, ema_frequencies, route_reward_linear, route_reward_router_r1)
from recal_jax.calibration.state import CalibrationState

ROUTE, BALANCE = 3, 4


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _validate(rewards, format_ok, valid, dataset_ids, config, state, call_counts_ugm, cost_ug):
    if not isinstance(config, CalibrationConfig):
        raise ValueError(f"calibrate: config must be a CalibrationConfig, got {type(config).__name__}")
    if not isinstance(state, CalibrationState):
        raise ValueError(f"calibrate: state must be a CalibrationState (see init_state), got {type(state).__name__}")
    shape = jnp.shape(rewards)
    if len(shape) != 3:
        raise ValueError(f"calibrate: rewards must be f32[U,G,K], got shape {shape}")
    if shape[2] != NUM_COMPONENTS:
        raise ValueError(f"calibrate: rewards need K={NUM_COMPONENTS} components, got K={shape[2]}")
    ug = shape[:2]
    for name, arr in (("format_ok", format_ok), ("valid", valid)):
        if jnp.shape(arr) != ug:
            raise ValueError(f"calibrate: {name} must have shape [U,G]={ug}, got {jnp.shape(arr)}")
    if jnp.shape(dataset_ids) != ug[:1]:
        raise ValueError(f"calibrate: dataset_ids must have shape [U]=({ug[0]},), got {jnp.shape(dataset_ids)}")
    if not jnp.issubdtype(jnp.result_type(dataset_ids), jnp.integer):
        raise ValueError(f"calibrate: dataset_ids must be integers, got {jnp.result_type(dataset_ids)}")
    if _is_concrete(dataset_ids) and ug[0] > 0:
        ids = np.asarray(dataset_ids)
        if ids.min() < 0 or ids.max() >= config.num_datasets:
            raise ValueError(f"calibrate: dataset_ids must lie in [0, {config.num_datasets}), "
                             f"got range [{ids.min()}, {ids.max()}]")
    want = (config.num_datasets, config.num_stats)
    if jnp.shape(state.m2) != want or jnp.shape(state.m2_initialized) != want:
        raise ValueError(f"calibrate: state.m2 must have shape {want} for this config, got {jnp.shape(state.m2)}")
    if jnp.shape(state.route_window.values) != (config.route_window,):
        raise ValueError(f"calibrate: state route window has {jnp.shape(state.route_window.values)} slots, "
                         f"config.route_window={config.route_window}")
    if call_counts_ugm is not None and jnp.shape(call_counts_ugm) != ug + jnp.shape(state.freq):
        raise ValueError(f"calibrate: call_counts_ugm must have shape [U,G,M]={ug + jnp.shape(state.freq)}, "
                         f"got {jnp.shape(call_counts_ugm)}")
    if cost_ug is not None:
        if jnp.shape(cost_ug) != ug:
            raise ValueError(f"calibrate: cost_ug must have shape [U,G]={ug}, got {jnp.shape(cost_ug)}")
        if config.route_rule == "linear" and config.cost_ref is None:
            raise ValueError("calibrate: cost_ug with route_rule='linear' needs config.cost_ref")


def _masked_mean_std(x_ugc, valid_ug):
    v = valid_ug[..., None]
    n = jnp.maximum(jnp.sum(valid_ug).astype(jnp.float32), 1.0)
    mean = jnp.sum(jnp.where(v, x_ugc, 0.0), axis=(0, 1)) / n
    var = jnp.sum(jnp.where(v, (x_ugc - mean) ** 2, 0.0), axis=(0, 1)) / n
    return mean, jnp.sqrt(var)


def calibrate(rewards, format_ok, valid, dataset_ids, config: CalibrationConfig, state: CalibrationState,
              *, call_counts_ugm=None, cost_ug=None):
    """Calibrated advantages -> (f32[U,G], new CalibrationState, diagnostics dict).

    rewards f32[U,G,K=5] (COMPONENTS order), format_ok bool[U,G], valid bool[U,G],
    dataset_ids i32[U] in [0, D). `config` is static (jit with static_argnames="config").
    A non-finite reward (or cost / call count) marks that rollout invalid; it is counted in
    diagnostics["num_nan_rollouts"] and gets advantage 0.

    Optional stateful rewards: with call_counts_ugm f32[U,G,M] the balance component is
    recomputed from state.freq (before this batch) and state.freq is EMA-updated; with
    cost_ug f32[U,G] the route component is recomputed by config.route_rule (router_r1:
    with and updating state.route_window; linear: with config.cost_ref). Without them the
    given components are used as they are and freq / window are unchanged.
    """
    _validate(rewards, format_ok, valid, dataset_ids, config, state, call_counts_ugm, cost_ug)
    rewards = jnp.asarray(rewards, jnp.float32)
    format_ok = jnp.asarray(format_ok, bool)
    ids = jnp.asarray(dataset_ids, jnp.int32)
    given_valid = jnp.asarray(valid, bool)
    finite = jnp.all(jnp.isfinite(rewards), axis=-1)
    if call_counts_ugm is not None:
        call_counts_ugm = jnp.asarray(call_counts_ugm, jnp.float32)
        finite &= jnp.all(jnp.isfinite(call_counts_ugm), axis=-1)
    if cost_ug is not None:
        cost_ug = jnp.asarray(cost_ug, jnp.float32)
        finite &= jnp.isfinite(cost_ug)
    num_nan = jnp.sum(given_valid & ~finite).astype(jnp.int32)
    valid = given_valid & finite
    rewards = jnp.where(valid[..., None], rewards, 0.0)
    format_ok = format_ok & valid

    freq, window = state.freq, state.route_window
    if call_counts_ugm is not None:
        counts = jnp.where(valid[..., None], call_counts_ugm, 0.0)
        rewards = rewards.at[..., BALANCE].set(balance_reward(counts, valid, state.freq))
        freq = ema_frequencies(state.freq, jnp.sum(counts, axis=(0, 1)), config.freq_decay)
    if cost_ug is not None:
        cost = jnp.where(valid, cost_ug, 0.0)
        if config.route_rule == "router_r1":
            route, window = route_reward_router_r1(cost, valid, window, q_low=config.route_q_low,
                                                   q_high=config.route_q_high)
        else:
            route = route_reward_linear(cost, config.cost_ref)
        rewards = rewards.at[..., ROUTE].set(jnp.where(valid, route, 0.0))

    r_tilde = (gate_rewards(rewards, format_ok, config.tau, config.gate_mode, config.tau_min)
               if config.gate else rewards)
    if config.scalar_reward == "router_r1":
        scalar = router_r1_scalar_reward(format_ok, r_tilde[..., 1], r_tilde[..., ROUTE], config.router_r1_alpha)
    else:
        scalar = weighted_sum(r_tilde, config.weights)
    scalar = jnp.where(valid, scalar, 0.0)

    if config.decompose:
        x_ugc, cols = r_tilde, np.arange(NUM_COMPONENTS)
    else:
        x_ugc, cols = scalar[..., None], np.array([NUM_COMPONENTS])
    group_scale = config.scale if config.scale in ("group", "none") else "none"
    a = group_advantages(x_ugc, valid, baseline=config.baseline, scale=group_scale, eps=config.eps)

    m2, m2_init = state.m2, state.m2_initialized
    num_c = len(cols)
    divisor = jnp.ones((config.num_datasets, num_c), jnp.float32)
    if config.scale == "dataset" and config.dataset_stats == "batch":
        a, divisor = dataset_scale(a, valid, ids, num_datasets=config.num_datasets,
                                   min_count=config.min_count, eps=config.eps)
    elif config.scale == "dataset":
        a, divisor, new_m2, new_init = dataset_scale_ema(
            a, valid, ids, m2[:, cols], m2_init[:, cols], num_datasets=config.num_datasets,
            decay=config.ema_decay, min_count=config.min_count, eps=config.eps)
        m2 = m2.at[:, cols].set(new_m2)
        m2_init = m2_init.at[:, cols].set(new_init)
    elif config.scale == "batch":
        _, std_c = _masked_mean_std(a, valid)
        divisor = jnp.broadcast_to(std_c + config.eps, divisor.shape)
        a = batch_scale(a, valid, eps=config.eps)

    if config.decompose:
        adv = weighted_sum(a, config.weights)
    else:
        adv = a[..., 0]
    if config.final_batch_norm:
        adv = batch_normalize(adv, valid, eps=config.eps)

    sigma_u = group_std(scalar, valid)
    if config.reweight == "variance":
        weight_u = variance_weights(scalar, valid, w_min=config.w_min, w_max=config.w_max,
                                    kappa=config.kappa, eps=config.eps)
    else:
        weight_u = jnp.ones((rewards.shape[0],), jnp.float32)
    adv = jnp.where(valid, adv * weight_u[:, None], 0.0)

    new_state = CalibrationState(freq=freq, m2=m2, m2_initialized=m2_init, route_window=window)
    diagnostics = _diagnostics(a, adv, divisor, weight_u, sigma_u, rewards, valid, ids, num_nan, config)
    return adv, new_state, diagnostics


def _diagnostics(a_ugc, adv_ug, divisor_dc, weight_u, sigma_u, rewards_ugk, valid, ids, num_nan, config):
    comp_mean, comp_std = _masked_mean_std(a_ugc, valid)
    adv_mean, adv_std = _masked_mean_std(adv_ug[..., None], valid)
    has_rollout = jnp.any(valid, axis=1)
    n_inst = jnp.maximum(jnp.sum(has_rollout).astype(jnp.float32), 1.0)
    reward_mean_dk, count_d = dataset_moments_linear(rewards_ugk, valid, ids, config.num_datasets)
    return {
        "adv_mean_k": comp_mean,
        "adv_std_k": comp_std,
        "adv_mean": adv_mean[0],
        "adv_std": adv_std[0],
        "dataset_scale": divisor_dc,
        # instances without rollouts are excluded by giving them a value that cannot win
        "weight_min": jnp.min(jnp.where(has_rollout, weight_u, jnp.max(weight_u))),
        "weight_mean": jnp.sum(jnp.where(has_rollout, weight_u, 0.0)) / n_inst,
        "weight_max": jnp.max(jnp.where(has_rollout, weight_u, jnp.min(weight_u))),
        "informative_frac": jnp.sum(has_rollout & (sigma_u > INFORMATIVE_TOL)) / n_inst,
        "dataset_reward_mean": reward_mean_dk,
        "dataset_count": count_d,
        "valid_count": jnp.sum(valid).astype(jnp.int32),
        "num_nan_rollouts": num_nan,
    }


def dataset_moments_linear(rewards_ugk, valid_ug, dataset_ids_u, num_datasets):
    """(mean reward f32[D,K] over each dataset's valid rollouts (0 if absent), count i32[D])."""
    sum_uk = jnp.sum(jnp.where(valid_ug[..., None], rewards_ugk, 0.0), axis=1)
    cnt_u = jnp.sum(valid_ug, axis=1).astype(jnp.int32)
    sum_dk = jax.ops.segment_sum(sum_uk, dataset_ids_u, num_segments=num_datasets)
    cnt_d = jax.ops.segment_sum(cnt_u, dataset_ids_u, num_segments=num_datasets)
    return sum_dk / jnp.maximum(cnt_d, 1).astype(jnp.float32)[:, None], cnt_d
