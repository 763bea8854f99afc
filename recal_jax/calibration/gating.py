"""Stage 1: gating of the auxiliary components and the scalar rewards (spec sections 4, 6)."""

from __future__ import annotations

import jax.numpy as jnp


def gate_rewards(rewards_ugk, format_ok_ug, tau: float = 1.0):
    """Gated components r~ (spec 4), f32[U,G,K].

    r~format = r_format; r~answer = format_ok * r_answer;
    r~aux = format_ok * [r_answer >= tau] * r_aux for aux in (info, route, balance).
    """
    rewards_ugk = jnp.asarray(rewards_ugk, jnp.float32)
    fmt = jnp.asarray(format_ok_ug, bool)
    answer = rewards_ugk[..., 1]
    aux_open = fmt & (answer >= tau)
    gate_ugk = jnp.stack(
        [jnp.ones_like(fmt), fmt, aux_open, aux_open, aux_open], axis=-1
    )
    return jnp.where(gate_ugk, rewards_ugk, 0.0)


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
