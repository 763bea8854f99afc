"""`calibrate`: the whole pipeline: route and balance -> gate -> baseline -> scale ->
weighted sum -> reweight.

Route and balance (components 3 and 4) are the stateful rewards: calibrate computes them
from the raw facts of each rollout (calls per model, cost) and advances their state (EMA
routing frequencies, Router-R1's cost window), so that CalibrationState is the one owner
of every reward statistic.

Overflow: every finite float32 input gives finite advantages and a finite state. Rewards
are bounded to +-MAX_ABS_REWARD and call counts to MAX_CALL_COUNT before any arithmetic
(the spec's rewards lie in [-1, 1]: the bounds never touch them). With component weights
whose absolute sum is below 1e4, every squared deviation is then below 4e32 and a sum of
them over up to 1e5 rollouts below float32's 3.4e38.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax.calibration.advantages import batch_normalize, batch_scale, group_advantages
from recal_jax.calibration.config import (
    ANSWER, BALANCE, NUM_COMPONENTS, NUM_STATELESS, ROUTE, STATELESS_COMPONENTS, CalibrationConfig)
from recal_jax.calibration.dataset_scale import dataset_scale, dataset_scale_ema
from recal_jax.calibration.gating import gate_rewards, router_r1_scalar_reward, weighted_sum
from recal_jax.calibration.reweight import INFORMATIVE_TOL, group_std, variance_weights
from recal_jax.calibration.route_balance import (
    RouteWindow, balance_reward, ema_frequencies, route_reward_linear, route_reward_router_r1)
from recal_jax.calibration.state import CalibrationState

MAX_ABS_REWARD = 1e12
MAX_CALL_COUNT = 1e6


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _validate_rewards(rewards, format_ok, valid, dataset_ids, config, stateful_given: bool):
    shape = jnp.shape(rewards)
    if len(shape) != 3:
        raise ValueError(f"calibrate: rewards must be f32[U,G,K], got shape {shape}")
    if shape[2] != NUM_COMPONENTS and not (stateful_given and shape[2] == NUM_STATELESS):
        raise ValueError(f"calibrate: rewards need K={NUM_COMPONENTS} components (or K={NUM_STATELESS}, "
                         f"{'/'.join(STATELESS_COMPONENTS)}, with call_counts_ugm and cost_ug), got K={shape[2]}")
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


def _validate(rewards, format_ok, valid, dataset_ids, config, state, call_counts_ugm, cost_ug):
    if not isinstance(config, CalibrationConfig):
        raise ValueError(f"calibrate: config must be a CalibrationConfig, got {type(config).__name__}")
    if not isinstance(state, CalibrationState):
        raise ValueError(f"calibrate: state must be a CalibrationState (see init_state), got {type(state).__name__}")
    stateful_given = call_counts_ugm is not None and cost_ug is not None
    _validate_rewards(rewards, format_ok, valid, dataset_ids, config, stateful_given)
    ug = tuple(jnp.shape(rewards)[:2])
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


class _Inputs(NamedTuple):
    """calibrate's inputs after masking: non-finite rollouts invalid, values bounded."""

    rewards_ugk: jax.Array        # f32[U,G,K=5]; route / balance 0 when K=3 was given
    format_ok_ug: jax.Array       # bool[U,G], False where invalid
    valid_ug: jax.Array           # bool[U,G]: given valid and every input of the rollout finite
    call_counts_ugm: jax.Array | None  # f32[U,G,M], 0 where invalid
    cost_ug: jax.Array | None     # f32[U,G], 0 where invalid
    num_nan: jax.Array            # i32[]: valid rollouts dropped for a non-finite input


def _clean(rewards, format_ok, valid, call_counts_ugm, cost_ug) -> _Inputs:
    """Mask rollouts with a non-finite input, zero them, bound the rest, pad K=3 to K=5."""
    rewards = jnp.asarray(rewards, jnp.float32)
    given_valid = jnp.asarray(valid, bool)
    finite = jnp.all(jnp.isfinite(rewards), axis=-1)
    if call_counts_ugm is not None:
        call_counts_ugm = jnp.asarray(call_counts_ugm, jnp.float32)
        finite &= jnp.all(jnp.isfinite(call_counts_ugm), axis=-1)
    if cost_ug is not None:
        cost_ug = jnp.asarray(cost_ug, jnp.float32)
        finite &= jnp.isfinite(cost_ug)
    valid = given_valid & finite
    rewards = jnp.clip(jnp.where(valid[..., None], rewards, 0.0), -MAX_ABS_REWARD, MAX_ABS_REWARD)
    if rewards.shape[-1] == NUM_STATELESS:
        rewards = jnp.pad(rewards, ((0, 0), (0, 0), (0, NUM_COMPONENTS - NUM_STATELESS)))
    if call_counts_ugm is not None:
        call_counts_ugm = jnp.minimum(jnp.where(valid[..., None], call_counts_ugm, 0.0), MAX_CALL_COUNT)
    if cost_ug is not None:
        cost_ug = jnp.where(valid, cost_ug, 0.0)
    return _Inputs(rewards_ugk=rewards, format_ok_ug=jnp.asarray(format_ok, bool) & valid, valid_ug=valid,
                   call_counts_ugm=call_counts_ugm, cost_ug=cost_ug,
                   num_nan=jnp.sum(given_valid & ~finite).astype(jnp.int32))


def _route_and_balance(x: _Inputs, config: CalibrationConfig,
                       state: CalibrationState) -> tuple[jax.Array, jax.Array, RouteWindow]:
    """Components 3 (route) and 4 (balance) from the rollouts' facts -> (rewards f32[U,G,K],
    new freq f32[M], new route window). Balance uses the EMA frequency BEFORE this batch;
    a fact that was not given leaves its component and its state as they are."""
    rewards, valid = x.rewards_ugk, x.valid_ug
    freq, window = state.freq, state.route_window
    if x.call_counts_ugm is not None:
        rewards = rewards.at[..., BALANCE].set(balance_reward(x.call_counts_ugm, valid, state.freq))
        freq = ema_frequencies(state.freq, jnp.sum(x.call_counts_ugm, axis=(0, 1)), config.freq_decay)
    if x.cost_ug is not None:
        if config.route_rule == "router_r1":
            route, window = route_reward_router_r1(x.cost_ug, valid, window, q_low=config.route_q_low,
                                                   q_high=config.route_q_high)
        else:
            route = route_reward_linear(x.cost_ug, config.cost_ref)
        rewards = rewards.at[..., ROUTE].set(jnp.where(valid, route, 0.0))
    return rewards, freq, window


def _gated_and_scalar(rewards_ugk, format_ok_ug, valid_ug, config: CalibrationConfig):
    """Stage 1 -> (gated components r~ f32[U,G,K], scalar reward S f32[U,G], 0 where invalid)."""
    r_tilde = (gate_rewards(rewards_ugk, format_ok_ug, config.tau, config.gate_mode, config.tau_min)
               if config.gate else rewards_ugk)
    if config.scalar_reward == "router_r1":
        scalar = router_r1_scalar_reward(format_ok_ug, r_tilde[..., ANSWER], r_tilde[..., ROUTE],
                                         config.router_r1_alpha)
    else:
        scalar = weighted_sum(r_tilde, config.weights)
    return r_tilde, jnp.where(valid_ug, scalar, 0.0)


def _masked_mean_std(x_ugc, valid_ug):
    v = valid_ug[..., None]
    n = jnp.maximum(jnp.sum(valid_ug).astype(jnp.float32), 1.0)
    mean = jnp.sum(jnp.where(v, x_ugc, 0.0), axis=(0, 1)) / n
    var = jnp.sum(jnp.where(v, (x_ugc - mean) ** 2, 0.0), axis=(0, 1)) / n
    return mean, jnp.sqrt(var)


def _scaled_advantages(x_ugc, cols, valid_ug, ids_u, config: CalibrationConfig, state: CalibrationState):
    """Stage 2(a)-(b) on the C columns x_ugc -> (a f32[U,G,C], divisor f32[D,C], new m2 f32[D,K+1],
    new m2_initialized bool[D,K+1]); `cols` are the state columns of the C columns."""
    group_scale = config.scale if config.scale in ("group", "none") else "none"
    a = group_advantages(x_ugc, valid_ug, baseline=config.baseline, scale=group_scale, eps=config.eps)
    m2, m2_init = state.m2, state.m2_initialized
    divisor = jnp.ones((config.num_datasets, len(cols)), jnp.float32)
    if config.scale == "dataset" and config.dataset_stats == "batch":
        a, divisor = dataset_scale(a, valid_ug, ids_u, num_datasets=config.num_datasets,
                                   min_count=config.min_count, eps=config.eps)
    elif config.scale == "dataset":
        a, divisor, new_m2, new_init = dataset_scale_ema(
            a, valid_ug, ids_u, m2[:, cols], m2_init[:, cols], num_datasets=config.num_datasets,
            decay=config.ema_decay, min_count=config.min_count, eps=config.eps)
        m2 = m2.at[:, cols].set(new_m2)
        m2_init = m2_init.at[:, cols].set(new_init)
    elif config.scale == "batch":
        _, std_c = _masked_mean_std(a, valid_ug)
        divisor = jnp.broadcast_to(std_c + config.eps, divisor.shape)
        a = batch_scale(a, valid_ug, eps=config.eps)
    return a, divisor, m2, m2_init


def _combined(a_ugc, scalar_ug, valid_ug, config: CalibrationConfig):
    """Weighted sum (decomposed), GDPO's batch norm, variance reweighting (spec 5(c))
    -> (advantages f32[U,G], weight_u f32[U], sigma_u f32[U])."""
    adv = weighted_sum(a_ugc, config.weights) if config.decompose else a_ugc[..., 0]
    if config.final_batch_norm:
        adv = batch_normalize(adv, valid_ug, eps=config.eps)
    sigma_u = group_std(scalar_ug, valid_ug)
    if config.reweight == "variance":
        weight_u = variance_weights(scalar_ug, valid_ug, w_min=config.w_min, w_max=config.w_max,
                                    kappa=config.kappa, eps=config.eps)
    else:
        weight_u = jnp.ones((scalar_ug.shape[0],), jnp.float32)
    return jnp.where(valid_ug, adv * weight_u[:, None], 0.0), weight_u, sigma_u


def calibrate(rewards, format_ok, valid, dataset_ids, config: CalibrationConfig, state: CalibrationState,
              *, call_counts_ugm=None, cost_ug=None):
    """Calibrated advantages -> (f32[U,G], new CalibrationState, diagnostics dict).

    rewards f32[U,G,K=5] (COMPONENTS order), format_ok bool[U,G], valid bool[U,G],
    dataset_ids i32[U] in [0, D). `config` is static (jit with static_argnames="config").
    A non-finite reward (or cost / call count) marks that rollout invalid; it is counted in
    diagnostics["num_nan_rollouts"] and gets advantage 0. Finite inputs are bounded (see the
    module docstring), so advantages, state and diagnostics are always finite.

    The stateful rewards: with call_counts_ugm f32[U,G,M] the balance component is computed
    from state.freq (before this batch) and state.freq is EMA-updated; with cost_ug f32[U,G]
    the route component is computed by config.route_rule (router_r1: with and updating
    state.route_window; linear: with config.cost_ref). With both given, `rewards` may hold
    only the environment's K=3 stateless components (format, answer, info). Without them
    the given components are used as they are and freq / window are unchanged.
    diagnostics["reward_mean_k"] f32[K]: each component's mean over the valid rollouts,
    route and balance as computed here (before gating).
    """
    _validate(rewards, format_ok, valid, dataset_ids, config, state, call_counts_ugm, cost_ug)
    x = _clean(rewards, format_ok, valid, call_counts_ugm, cost_ug)
    ids = jnp.asarray(dataset_ids, jnp.int32)
    rewards_ugk, freq, window = _route_and_balance(x, config, state)
    r_tilde, scalar = _gated_and_scalar(rewards_ugk, x.format_ok_ug, x.valid_ug, config)
    if config.decompose:
        x_ugc, cols = r_tilde, np.arange(NUM_COMPONENTS)
    else:
        x_ugc, cols = scalar[..., None], np.array([NUM_COMPONENTS])
    a, divisor, m2, m2_init = _scaled_advantages(x_ugc, cols, x.valid_ug, ids, config, state)
    adv, weight_u, sigma_u = _combined(a, scalar, x.valid_ug, config)
    new_state = CalibrationState(freq=freq, m2=m2, m2_initialized=m2_init, route_window=window)
    diagnostics = _diagnostics(a, adv, divisor, weight_u, sigma_u, rewards_ugk, x.valid_ug, ids, x.num_nan, config)
    return adv, new_state, diagnostics


def _diagnostics(a_ugc, adv_ug, divisor_dc, weight_u, sigma_u, rewards_ugk, valid, ids, num_nan, config):
    comp_mean, comp_std = _masked_mean_std(a_ugc, valid)
    adv_mean, adv_std = _masked_mean_std(adv_ug[..., None], valid)
    has_rollout = jnp.any(valid, axis=1)
    n_inst = jnp.maximum(jnp.sum(has_rollout).astype(jnp.float32), 1.0)
    reward_mean_dk, count_d = dataset_moments_linear(rewards_ugk, valid, ids, config.num_datasets)
    n_valid = jnp.maximum(jnp.sum(valid).astype(jnp.float32), 1.0)
    reward_mean_k = jnp.sum(jnp.where(valid[..., None], rewards_ugk, 0.0), axis=(0, 1)) / n_valid
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
        "reward_mean_k": reward_mean_k,
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
