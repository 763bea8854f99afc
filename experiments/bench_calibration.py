"""Benchmark: jit-compiled `calibrate` (preset recal) vs a vectorised numpy version of the same math.

    python -m experiments.bench_calibration [--sizes 64 1024 16384] [--runs 50]

Both run in this process on the same inputs (U instances, G=8, K=5, D=7); the outputs are
checked to agree first, then each is timed after warm-up (median over --runs calls). The
JAX side returns the advantages only, so XLA drops the diagnostics it does not need.
Prints a markdown table and the machine (platform.processor(), jax.devices()).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax.calibration import CalibrationConfig, calibrate, init_state

G, K, D, M = 8, 5, 7, 6


def numpy_recal(r, fmt, valid, ids, cfg: CalibrationConfig):
    """gate -> mean baseline -> dataset scale (batch stats) -> weighted sum -> variance weights."""
    w = np.asarray(cfg.weights, np.float32)
    r = np.where(valid[..., None], r, np.float32(0))
    fmt = fmt & valid
    aux = fmt & (r[..., 1] >= cfg.tau)
    gate = np.stack([np.ones_like(fmt), fmt, aux, aux, aux], axis=-1)
    rt = np.where(gate, r, np.float32(0))
    v = valid[..., None]
    n = v.sum(1, keepdims=True).astype(np.float32)
    mean = np.where(v, rt, 0).sum(1, keepdims=True) / np.maximum(n, 1)
    a = np.where(v & (n >= 2), rt - mean, np.float32(0))
    onehot_du = (ids[None, :] == np.arange(cfg.num_datasets)[:, None]).astype(np.float32)
    m2_sum = onehot_du @ (a * a).sum(1)
    cnt_d = onehot_du @ valid.sum(1).astype(np.float32)
    s_d = np.sqrt(m2_sum / np.maximum(cnt_d, 1)[:, None])
    div = np.where((cnt_d >= cfg.min_count)[:, None] & (s_d >= cfg.eps), s_d + cfg.eps, np.float32(1))
    adv = (a / div[ids][:, None, :]) @ w
    S = np.where(valid, rt @ w, np.float32(0))
    n_u = np.maximum(valid.sum(1), 1).astype(np.float32)
    mu = S.sum(1) / n_u
    sigma = np.sqrt(np.where(valid, (S - mu[:, None]) ** 2, 0).sum(1) / n_u)
    inf = sigma > 1e-6
    n_inf = max(int(inf.sum()), 1)
    sbar = sigma[inf].sum() / n_inf
    z = cfg.kappa * (sigma - sbar) / (sbar + cfg.eps)
    weight = cfg.w_min + (cfg.w_max - cfg.w_min) / (1 + np.exp(-z))
    mean_w = max(weight[inf].sum() / n_inf, cfg.w_min)
    weight = np.where(inf, weight / mean_w, np.float32(1))
    return np.where(valid, adv * weight[:, None], np.float32(0)).astype(np.float32)


def make_inputs(U, seed=0):
    rng = np.random.default_rng(seed)
    r = rng.random((U, G, K), dtype=np.float32)
    r[..., 1] = (rng.random((U, G)) < 0.5).astype(np.float32)
    r[..., 4] = 2 * r[..., 4] - 1
    fmt = rng.random((U, G)) > 0.1
    r[..., 0] = fmt
    valid = rng.random((U, G)) > 0.05
    ids = rng.integers(0, D, U).astype(np.int32)
    return r, fmt, valid, ids


def median_seconds(fn, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1024, 16384])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    cfg = CalibrationConfig.preset("recal", num_datasets=D)
    state = init_state(cfg, M)
    adv_fn = jax.jit(lambda r, f, v, i, s: calibrate(r, f, v, i, cfg, s)[0])
    rows = []
    for U in args.sizes:
        r, fmt, valid, ids = make_inputs(U)
        dev = [jax.device_put(x) for x in (r, fmt, valid, ids)]
        got = np.asarray(adv_fn(*dev, state))
        want = numpy_recal(r, fmt, valid, ids, cfg)
        err = float(np.max(np.abs(got - want)))
        if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
            raise SystemExit(f"U={U}: JAX and numpy disagree (max abs diff {err:.3g})")
        for _ in range(3):
            adv_fn(*dev, state).block_until_ready()
            numpy_recal(r, fmt, valid, ids, cfg)
        t_jax = median_seconds(lambda: adv_fn(*dev, state).block_until_ready(), args.runs)
        t_np = median_seconds(lambda: numpy_recal(r, fmt, valid, ids, cfg), args.runs)
        rows.append((U, U * G, t_jax, t_np, err))

    print(f"machine: {platform.processor() or platform.machine()}; jax {jax.__version__}; devices: {jax.devices()}")
    print(f"preset recal, G={G}, K={K}, D={D}; median of {args.runs} runs after warm-up\n")
    print("| U | rollouts | jax jit (ms) | numpy (ms) | numpy / jax | max abs diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    for U, B, t_jax, t_np, err in rows:
        print(f"| {U} | {B} | {t_jax * 1e3:.3f} | {t_np * 1e3:.3f} | {t_np / t_jax:.2f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
