"""Stage 1: gating of the auxiliary components and the scalar rewards (spec sections 4, 6)."""

from __future__ import annotations

import jax.numpy as jnp

from recal_jax.calibration.config import ANSWER, FORMAT, NUM_COMPONENTS


def gate_rewards(rewards_ugk, format_ok_ug, tau: float = 1.0, mode: str = "threshold",
                 tau_min: float = 0.5):
    """Gated components r~ (spec 4), f32[U,G,K].

    r~format = r_format; r~answer = format_ok * r_answer;
    r~aux = format_ok * [r_answer >= tau_u] * r_aux for aux in (info, route, balance), where
    - mode 'threshold' (spec): tau_u = tau for every group;
    - mode 'group_best' (extension): tau_u = clip(best_u, tau_min, tau), best_u the highest
      answer among the group's format-valid rollouts. The aux rewards then also open for the
      best answers of a group on a fractional metric that never reaches tau (never for an
      answer below tau_min). On binary answers with tau = 1 and 0 < tau_min <= 1 this is
      exactly the spec gate.
    Rollouts that are not valid must come with format_ok False (calibrate does this).
    """
    rewards_ugk = jnp.asarray(rewards_ugk, jnp.float32)
    fmt = jnp.asarray(format_ok_ug, bool)
    answer = rewards_ugk[..., ANSWER]
    aux_open = fmt & (answer >= group_gate_threshold(answer, fmt, tau, mode, tau_min))
    gates = {FORMAT: jnp.ones_like(fmt), ANSWER: fmt}  # every other component is an aux one
    gate_ugk = jnp.stack([gates.get(k, aux_open) for k in range(NUM_COMPONENTS)], axis=-1)
    return jnp.where(gate_ugk, rewards_ugk, 0.0)


def group_gate_threshold(answer_ug, format_ok_ug, tau: float, mode: str, tau_min: float):
    """tau_u of `gate_rewards`, f32[U,1] (mode 'group_best') or a scalar (mode 'threshold')."""
    if mode == "threshold":
        return jnp.float32(tau)
    if mode != "group_best":
        raise ValueError(f"gate mode must be 'threshold' or 'group_best', got {mode!r}")
    if not 0.0 < tau_min <= tau:
        raise ValueError(f"gate mode 'group_best' needs 0 < tau_min <= tau, got tau_min={tau_min}, tau={tau}")
    best_u1 = jnp.max(jnp.where(format_ok_ug, answer_ug, -jnp.inf), axis=1, keepdims=True)
    return jnp.clip(best_u1, tau_min, tau)


def weighted_sum(rewards_ugk, weights):
    """S = sum_k w_k r_k, f32[U,G]."""
    w_k = jnp.asarray(weights, jnp.float32)
    return jnp.sum(jnp.asarray(rewards_ugk, jnp.float32) * w_k, axis=-1)


def router_r1_scalar_reward(format_ok_ug, answer_ug, route_ug, alpha: float = 0.0):
    """Router-R1's training reward (spec 6), f32[U,G].

    -1 where the format fails; else (1 - alpha) * answer + alpha * route where answer > 0;
    else 0. `route` is the cost reward in its `router_r1` (windowed percentile) form.
    """
    fmt = jnp.asarray(format_ok_ug, bool)
    answer = jnp.asarray(answer_ug, jnp.float32)
    route = jnp.asarray(route_ug, jnp.float32)
    mixed = (1.0 - alpha) * answer + alpha * route
    return jnp.where(fmt, jnp.where(answer > 0, mixed, 0.0), -1.0)
