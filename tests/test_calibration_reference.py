"""Plain numpy / Python-loop reference of spec sections 3-6, written from the spec's words.

The other tests/test_calibration_*.py files compare recal_jax.calibration against it; the
tests in this file pin the reference itself to hand-computed cases.
"""

from collections import deque

import numpy as np
import pytest

WEIGHTS = (0.5, 1.0, 0.25, 0.25, 0.1)


def ref_gate(r, fmt, tau, mode="threshold", tau_min=0.5):
    out = np.array(r, dtype=np.float64)
    U, G, _ = out.shape
    for u in range(U):
        threshold = tau
        if mode == "group_best":
            answers = [r[u, g, 1] for g in range(G) if fmt[u, g]]
            best = max(answers) if answers else tau_min
            threshold = min(max(best, tau_min), tau)
        for g in range(G):
            f = 1.0 if fmt[u, g] else 0.0
            answer = r[u, g, 1]
            out[u, g, 1] = f * answer
            for k in (2, 3, 4):
                out[u, g, k] = f * (1.0 if answer >= threshold else 0.0) * r[u, g, k]
    return out


def ref_group_adv(x, valid, baseline="mean", scale="group", eps=1e-6):
    """x [U,G] -> advantages [U,G]: baseline, then group / batch / no scale."""
    U, G = x.shape
    out = np.zeros((U, G))
    for u in range(U):
        members = [g for g in range(G) if valid[u, g]]
        n = len(members)
        if n < 2:
            continue
        vals = np.array([x[u, g] for g in members], dtype=np.float64)
        for g in members:
            if baseline == "mean":
                a = x[u, g] - vals.mean()
            else:
                a = x[u, g] - (vals.sum() - x[u, g]) / (n - 1)
            if scale == "group":
                a = a / (np.std(vals, ddof=1) + eps)
            out[u, g] = a
    if scale == "batch":
        out = ref_batch_scale(out, valid, eps)
    return out


def ref_batch_scale(x, valid, eps):
    vals = [x[u, g] for u in range(x.shape[0]) for g in range(x.shape[1]) if valid[u, g]]
    std = np.std(vals) if vals else 0.0
    return np.where(valid, x / (std + eps), 0.0)


def ref_batch_normalize(x, valid, eps):
    vals = [x[u, g] for u in range(x.shape[0]) for g in range(x.shape[1]) if valid[u, g]]
    mean = np.mean(vals) if vals else 0.0
    std = np.std(vals) if vals else 0.0
    return np.where(valid, (x - mean) / (std + eps), 0.0)


def ref_dataset_m2(a, valid, ids, D):
    m2 = np.zeros(D)
    count = np.zeros(D, dtype=int)
    for d in range(D):
        vals = [a[u, g] for u in range(a.shape[0]) for g in range(a.shape[1]) if ids[u] == d and valid[u, g]]
        count[d] = len(vals)
        m2[d] = np.mean(np.square(vals)) if vals else 0.0
    return m2, count


def ref_dataset_scale(a, valid, ids, D, min_count=8, eps=1e-6, ema=None, decay=0.9):
    """a [U,G] -> (scaled, divisor [D], ema state). ema: None or (m2 [D], init [D])."""
    batch_m2, count = ref_dataset_m2(a, valid, ids, D)
    divisor = np.ones(D)
    if ema is None:
        for d in range(D):
            s = np.sqrt(batch_m2[d])
            if count[d] >= min_count and s >= eps:
                divisor[d] = s + eps
        new_ema = None
    else:
        m2, init = np.array(ema[0], dtype=np.float64), np.array(ema[1], dtype=bool)
        for d in range(D):
            if count[d] >= min_count:
                m2[d] = decay * m2[d] + (1 - decay) * batch_m2[d] if init[d] else batch_m2[d]
                init[d] = True
            s = np.sqrt(m2[d])
            if init[d] and s >= eps:
                divisor[d] = s + eps
        new_ema = (m2, init)
    out = np.zeros_like(a, dtype=np.float64)
    for u in range(a.shape[0]):
        for g in range(a.shape[1]):
            if valid[u, g]:
                out[u, g] = a[u, g] / divisor[ids[u]]
    return out, divisor, new_ema


def ref_variance_weights(S, valid, w_min=0.5, w_max=2.0, kappa=2.0, eps=1e-6):
    U = S.shape[0]
    sigma = np.zeros(U)
    for u in range(U):
        vals = [S[u, g] for g in range(S.shape[1]) if valid[u, g]]
        sigma[u] = np.std(vals) if vals else 0.0
    informative = [u for u in range(U) if sigma[u] > 1e-6]
    v = np.ones(U)
    if not informative:
        return v
    sbar = np.mean([sigma[u] for u in informative])
    raw = {u: w_min + (w_max - w_min) / (1 + np.exp(-kappa * (sigma[u] - sbar) / (sbar + eps))) for u in informative}
    mean = np.mean(list(raw.values()))
    for u in informative:
        v[u] = raw[u] / mean
    return v


def ref_ema_frequencies(p, counts, lam):
    total = float(np.sum(counts))
    if total == 0:
        return np.array(p, dtype=np.float64)
    return (1 - lam) * np.asarray(p, dtype=np.float64) + lam * np.asarray(counts) / total


def ref_balance(counts_ugm, valid, p):
    U, G, M = counts_ugm.shape
    out = np.zeros((U, G))
    for u in range(U):
        for g in range(G):
            if not valid[u, g]:
                continue
            calls = [m for m in range(M) for _ in range(int(counts_ugm[u, g, m]))]
            if calls:
                out[u, g] = np.mean([np.clip(1 - M * p[m], -1, 1) for m in calls])
    return out


def ref_route_linear(cost, cost_ref):
    return 1 - np.minimum(np.maximum(cost, 0) / cost_ref, 1)


def ref_route_router_r1(cost, valid, history, window=1000, q_low=0.05, q_high=0.95, eps=1e-8):
    """Router-R1's rule as described in its paper's code: a deque of sqrt(cost)."""
    buf = deque(history, maxlen=window)
    out = np.zeros(cost.shape)
    for u in range(cost.shape[0]):
        for g in range(cost.shape[1]):
            if not valid[u, g]:
                continue
            x = np.sqrt(max(cost[u, g], 0.0))
            buf.append(x)
            arr = np.array(buf)
            lo, hi = np.percentile(arr, 100 * q_low), np.percentile(arr, 100 * q_high)
            if hi - lo < eps:
                out[u, g] = 0.5
            else:
                out[u, g] = 1 - np.clip((x - lo) / (hi - lo), 0, 1)
    return out, list(buf)


def ref_router_r1_scalar(fmt, answer, route, alpha):
    out = np.zeros(answer.shape)
    for idx in np.ndindex(answer.shape):
        if not fmt[idx]:
            out[idx] = -1.0
        elif answer[idx] > 0:
            out[idx] = (1 - alpha) * answer[idx] + alpha * route[idx]
    return out


def ref_calibrate(r, fmt, valid, ids, cfg, ema=None):
    """The whole pipeline for one config; ema: dict column -> (m2 [D], init [D]) or None.

    Returns (advantages [U,G], per-column divisors, new ema dict)."""
    r = np.asarray(r, dtype=np.float64)
    valid = np.asarray(valid, bool) & np.all(np.isfinite(r), axis=-1)
    r = np.where(valid[..., None], r, 0.0)
    fmt = np.asarray(fmt, bool) & valid
    rt = ref_gate(r, fmt, cfg.tau, cfg.gate_mode, cfg.tau_min) if cfg.gate else r
    w = np.array(cfg.weights)
    if cfg.scalar_reward == "router_r1":
        S = ref_router_r1_scalar(fmt, rt[..., 1], rt[..., 3], cfg.router_r1_alpha)
    else:
        S = np.einsum("ugk,k->ug", rt, w)
    S = np.where(valid, S, 0.0)
    columns = [(k, rt[..., k]) for k in range(5)] if cfg.decompose else [(5, S)]
    group_scale = cfg.scale if cfg.scale in ("group", "batch", "none") else "none"
    adv = np.zeros(S.shape)
    divisors, new_ema = {}, {}
    for col, x in columns:
        a = ref_group_adv(x, valid, cfg.baseline, group_scale, cfg.eps)
        if cfg.scale == "dataset":
            state = None if cfg.dataset_stats == "batch" else (ema or {}).get(
                col, (np.zeros(cfg.num_datasets), np.zeros(cfg.num_datasets, bool)))
            a, divisors[col], new_ema[col] = ref_dataset_scale(
                a, valid, ids, cfg.num_datasets, cfg.min_count, cfg.eps, ema=state, decay=cfg.ema_decay)
        adv += (w[col] if cfg.decompose else 1.0) * a
    if cfg.final_batch_norm:
        adv = ref_batch_normalize(adv, valid, cfg.eps)
    if cfg.reweight == "variance":
        adv = adv * ref_variance_weights(S, valid, cfg.w_min, cfg.w_max, cfg.kappa, cfg.eps)[:, None]
    return np.where(valid, adv, 0.0), divisors, new_ema


# --- the reference against hand-computed cases -------------------------------------------

def test_ref_group_adv_hand_case():
    x = np.array([[1.0, 0.0, 0.0, 9.0]])
    valid = np.array([[True, True, True, False]])
    # mean 1/3, unbiased std sqrt(1/3)
    a = ref_group_adv(x, valid, "mean", "group", eps=0.0)
    np.testing.assert_allclose(a, [[(2 / 3) / np.sqrt(1 / 3), -(1 / 3) / np.sqrt(1 / 3), -(1 / 3) / np.sqrt(1 / 3), 0]])
    loo = ref_group_adv(x, valid, "loo", "none")
    np.testing.assert_allclose(loo, [[1.0, -0.5, -0.5, 0.0]])


def test_ref_variance_weights_hand_case():
    S = np.array([[0.0, 1.0], [0.0, 0.0], [0.0, 0.5]])
    valid = np.ones((2 * 1 + 1, 2), bool)
    # sigmas 0.5, 0, 0.25 -> sbar 0.375; x = 2 * (+-0.125) / 0.375 = +-2/3
    v = ref_variance_weights(S, valid, eps=0.0)
    hi, lo = 0.5 + 1.5 / (1 + np.exp(-2 / 3)), 0.5 + 1.5 / (1 + np.exp(2 / 3))
    np.testing.assert_allclose(v, [hi / ((hi + lo) / 2), 1.0, lo / ((hi + lo) / 2)])


def test_ref_router_r1_hand_case():
    out, buf = ref_route_router_r1(np.array([[4.0, 1.0, 9.0]]), np.ones((1, 3), bool), [])
    assert out[0, 0] == 0.5                        # one value: zero spread
    assert out[0, 1] == pytest.approx(1.0)         # cheapest of {2, 1}
    # window {2, 1, 3}: 5% = 1.1, 95% = 2.9; x = 3 -> clipped to 0
    assert out[0, 2] == pytest.approx(0.0)
    assert buf == [2.0, 1.0, 3.0]


def test_ref_balance_hand_case():
    p = np.array([0.5, 0.25, 0.25])   # M * p = 1.5, .75, .75
    counts = np.array([[[2, 1, 0], [0, 0, 0]]])
    out = ref_balance(counts, np.ones((1, 2), bool), p)
    np.testing.assert_allclose(out, [[(2 * -0.5 + 0.25) / 3, 0.0]])
