"""The stateful reward components, route and balance (spec 3), and their state.

The environment (recal_jax.routing.rewards) reports only the raw facts of each rollout
(calls per model, cost in USD); these functions turn them into components 3 (route) and 4
(balance), and advance the state they need: the EMA routing frequency p (balance) and
Router-R1's window of recent costs (route, rule 'router_r1'). `calibrate` is their one
caller in training, so that state has one owner: CalibrationState.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


def ema_frequencies(freq, counts, decay):
    """p <- (1 - decay) * p + decay * counts / sum(counts), f32[M].

    freq f32[M]: current EMA frequencies; counts f32[M]: calls to each model over the valid
    rollouts of the batch; decay: lam (spec 3, 0.1), the weight of the NEW batch. A batch
    with no calls leaves p unchanged.
    """
    freq = jnp.asarray(freq, jnp.float32)
    counts = jnp.maximum(jnp.asarray(counts, jnp.float32), 0.0)
    if freq.ndim != 1 or counts.shape != freq.shape:
        raise ValueError(f"ema_frequencies: freq and counts must both be [M]; got {freq.shape}, {counts.shape}")
    total = jnp.sum(counts)
    batch_f = counts / jnp.maximum(total, 1e-12)
    return jnp.where(total > 0, (1.0 - decay) * freq + decay * batch_f, freq)


def balance_reward(call_counts_ugm, valid_ug, freq_m):
    """Balance component f32[U,G] in [-1, 1] (spec 3).

    Mean over the rollout's calls of clip(1 - M * p[m], -1, 1), with p the EMA frequency
    before this batch's update; 0 for a rollout with no calls or an invalid rollout.
    """
    counts = jnp.maximum(jnp.asarray(call_counts_ugm, jnp.float32), 0.0)
    freq = jnp.asarray(freq_m, jnp.float32)
    if counts.ndim != 3 or counts.shape[-1] != freq.shape[-1] or counts.shape[:2] != jnp.shape(valid_ug):
        raise ValueError(f"balance_reward: need call_counts [U,G,M], valid [U,G], freq [M]; got "
                         f"{counts.shape}, {jnp.shape(valid_ug)}, {freq.shape}")
    per_call_m = jnp.clip(1.0 - freq.shape[-1] * freq, -1.0, 1.0)
    total = jnp.sum(counts, axis=-1)
    mean = jnp.sum(counts * per_call_m, axis=-1) / jnp.maximum(total, 1e-12)
    return jnp.where(jnp.asarray(valid_ug, bool) & (total > 0), mean, 0.0)


def route_reward_linear(cost_ug, cost_ref):
    """Linear cost reward 1 - min(cost / cost_ref, 1), f32[U,G] in [0, 1] (negative cost -> 1)."""
    if isinstance(cost_ref, (int, float)) and not (cost_ref > 0 and math.isfinite(cost_ref)):
        raise ValueError(f"route_reward_linear: cost_ref must be a positive finite number, got {cost_ref}")
    cost = jnp.asarray(cost_ug, jnp.float32)
    return 1.0 - jnp.clip(cost / cost_ref, 0.0, 1.0)


class RouteWindow(NamedTuple):
    """Ring buffer of the last W transformed costs sqrt(cost) (Router-R1's deque)."""

    values: jax.Array      # f32[W]
    next_index: jax.Array  # i32[], slot the next value overwrites
    size: jax.Array        # i32[], filled slots (<= W)


def init_route_window(size: int = 1000) -> RouteWindow:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"route window size must be an int >= 1, got {size!r}")
    return RouteWindow(jnp.zeros((size,), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _percentile_sorted(s, n, q):
    """numpy's default ('linear') percentile of the first n entries of sorted s."""
    h = (n - 1).astype(jnp.float32) * q
    lo = jnp.clip(jnp.floor(h).astype(jnp.int32), 0, s.shape[0] - 1)
    hi = jnp.clip(jnp.minimum(lo + 1, n - 1), 0, s.shape[0] - 1)
    return s[lo] + (h - lo.astype(jnp.float32)) * (s[hi] - s[lo])


def route_reward_router_r1(cost_ug, valid_ug, window: RouteWindow, *, q_low=0.05, q_high=0.95, eps=1e-8):
    """Router-R1's windowed percentile cost reward -> (f32[U,G] in [0, 1], new window).

    Router-R1 (its reward manager, training branch) scores each rollout in turn:
    x = sqrt(cost) is appended to a sliding window of the last W values (W = 1000 there);
    r_lo, r_hi = the q_low / q_high (5% / 95%) percentiles of the window, current value
    included, with numpy's linear interpolation (with one value both equal it); the reward
    is 0.5 if r_hi - r_lo < eps (1e-8), else 1 - clip((x - r_lo) / (r_hi - r_lo), 0, 1):
    cheap calls score near 1, expensive near 0. Here rollouts are visited in row-major
    (u, g) order by a lax.scan; invalid rollouts get 0 and do not enter the window;
    negative costs count as 0. The window is explicit state (ring buffer + size).
    """
    cost = jnp.asarray(cost_ug, jnp.float32)
    if cost.ndim != 2 or cost.shape != jnp.shape(valid_ug):
        raise ValueError(f"route_reward_router_r1: cost and valid must both be [U,G]; got {cost.shape}, {jnp.shape(valid_ug)}")
    width = window.values.shape[0]
    slots = jnp.arange(width)
    x_b = jnp.sqrt(jnp.maximum(cost, 0.0)).reshape(-1)
    v_b = jnp.asarray(valid_ug, bool).reshape(-1)

    def step(win, inp):
        x, ok = inp
        values = jnp.where(ok, win.values.at[win.next_index].set(x), win.values)
        size = jnp.where(ok, jnp.minimum(win.size + 1, width), win.size)
        nxt = jnp.where(ok, (win.next_index + 1) % width, win.next_index)
        s = jnp.sort(jnp.where(slots < size, values, jnp.inf))
        s = jnp.where(jnp.isfinite(s), s, 0.0)
        r_lo = _percentile_sorted(s, size, q_low)
        r_hi = _percentile_sorted(s, size, q_high)
        denom = r_hi - r_lo
        scaled = jnp.clip((x - r_lo) / jnp.where(denom < eps, 1.0, denom), 0.0, 1.0)
        reward = jnp.where(denom < eps, 0.5, 1.0 - scaled)
        return RouteWindow(values, nxt, size), jnp.where(ok, reward, 0.0)

    new_window, reward_b = jax.lax.scan(step, window, (x_b, v_b))
    return reward_b.reshape(cost.shape), new_window
