"""Each calibration function against the numpy loop reference, eager and under jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recal_jax import calibration as cal
from tests.test_calibration_reference import (
    ref_balance, ref_batch_normalize, ref_batch_scale, ref_calibrate, ref_dataset_scale,
    ref_ema_frequencies, ref_gate, ref_group_adv, ref_route_linear, ref_route_router_r1,
    ref_router_r1_scalar, ref_variance_weights)

U, G, K, D, M = 9, 5, 5, 3, 4
SEEDS = range(4)


def make_batch(seed, U=U, G=G, D=D, p_valid=0.8):
    rng = np.random.default_rng(seed)
    r = rng.random((U, G, K)).astype(np.float32)
    r[..., 0] = rng.random((U, G)) > 0.2
    r[..., 1] = np.where(rng.random((U, G)) > 0.5, 1.0, rng.random((U, G)))
    r[..., 4] = 2 * r[..., 4] - 1
    fmt = r[..., 0] > 0.5
    valid = rng.random((U, G)) < p_valid
    valid[0] = [True] + [False] * (G - 1)      # a singleton group
    valid[1] = False                            # an empty group
    r[2] = r[2, :1]                             # an all-equal group
    ids = rng.integers(0, D - 1, U).astype(np.int32)   # dataset D-1 stays absent
    return r, fmt, valid, ids


@pytest.mark.parametrize("seed", SEEDS)
def test_gate_matches_reference(seed):
    r, fmt, _, _ = make_batch(seed)
    for tau in (1.0, 0.5):
        np.testing.assert_allclose(cal.gate_rewards(r, fmt, tau), ref_gate(r, fmt, tau), rtol=1e-6)
        for tau_min in (0.3, tau):
            got = jax.jit(cal.gate_rewards, static_argnums=(2, 3, 4))(r, fmt, tau, "group_best", tau_min)
            np.testing.assert_allclose(got, ref_gate(r, fmt, tau, "group_best", tau_min), rtol=1e-6)


def test_group_best_gate_by_hand():
    # answers of one group: 0.8 (format ok), 0.8, 0.6, 0.9 (format broken: not a candidate)
    r = np.zeros((3, 4, K), np.float32)
    r[..., 3] = 1.0                                   # route reward 1 everywhere
    r[0, :, 1] = [0.8, 0.8, 0.6, 0.9]
    r[1, :, 1] = [0.3, 0.2, 0.0, 0.0]                 # best 0.3 < tau_min: stays shut
    r[2, :, 1] = [1.0, 0.0, 0.0, 1.0]                 # binary: the spec gate
    fmt = np.array([[True, True, True, False], [True] * 4, [True, True, True, False]])
    route = np.asarray(cal.gate_rewards(r, fmt, 1.0, "group_best", 0.5))[..., 3]
    np.testing.assert_array_equal(route, [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    spec = np.asarray(cal.gate_rewards(r, fmt, 1.0))[..., 3]
    np.testing.assert_array_equal(spec, [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match="tau_min"):
        cal.gate_rewards(r, fmt, 1.0, "group_best", 0.0)
    with pytest.raises(ValueError, match="gate mode"):
        cal.gate_rewards(r, fmt, 1.0, "best")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("baseline", ["mean", "loo"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_matches_reference(seed, baseline, scale):
    r, _, valid, _ = make_batch(seed)
    x = r[..., 1]
    got = cal.group_advantages(x, valid, baseline=baseline, scale=scale)
    jitted = jax.jit(cal.group_advantages, static_argnames=("baseline", "scale", "eps"))(
        x, valid, baseline=baseline, scale=scale)
    chex.assert_shape(got, (U, G))
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, ref_group_adv(x, valid, baseline, scale), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jitted, got, rtol=1e-6, atol=1e-7)


def test_group_advantages_per_component_axis():
    r, _, valid, _ = make_batch(0)
    got = cal.group_advantages(r, valid)
    for k in range(K):
        np.testing.assert_allclose(got[..., k], ref_group_adv(r[..., k], valid), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_batch_scale_and_normalize_match_reference(seed):
    r, _, valid, _ = make_batch(seed)
    x = r[..., 2] * 3 - 1
    np.testing.assert_allclose(cal.batch_scale(x, valid), ref_batch_scale(np.where(valid, x, 0), valid, 1e-6),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cal.batch_normalize(x, valid), ref_batch_normalize(x, valid, 1e-6),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("min_count", [1, 8, 20])
def test_dataset_scale_matches_reference(seed, min_count):
    r, _, valid, ids = make_batch(seed)
    a = ref_group_adv(r[..., 1], valid, "mean", "none")
    got, div = cal.dataset_scale(a[..., None].astype(np.float32), valid, ids, num_datasets=D, min_count=min_count)
    want, want_div, _ = ref_dataset_scale(a, valid, ids, D, min_count)
    np.testing.assert_allclose(got[..., 0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(div[:, 0], want_div, rtol=1e-5)
    assert div[D - 1, 0] == 1.0   # absent dataset: unscaled


def test_dataset_scale_ema_over_steps_matches_reference():
    m2 = jnp.zeros((D, 1))
    init = jnp.zeros((D, 1), bool)
    ref_state = (np.zeros(D), np.zeros(D, bool))
    step = jax.jit(cal.dataset_scale_ema, static_argnames=("num_datasets", "decay", "min_count", "eps"))
    for seed in range(5):
        r, _, valid, ids = make_batch(seed)
        if seed == 2:
            ids = np.where(ids == 1, 0, ids).astype(np.int32)   # dataset 1 absent this step
        a = ref_group_adv(r[..., 1] * (seed + 1), valid, "mean", "none")
        got, div, m2, init = step(a[..., None].astype(np.float32), valid, ids, m2, init,
                                  num_datasets=D, decay=0.9, min_count=6)
        want, want_div, ref_state = ref_dataset_scale(a, valid, ids, D, 6, ema=ref_state, decay=0.9)
        np.testing.assert_allclose(got[..., 0], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m2[:, 0], ref_state[0], rtol=1e-5)
        np.testing.assert_array_equal(init[:, 0], ref_state[1])
    assert not bool(init[D - 1, 0])


@pytest.mark.parametrize("seed", SEEDS)
def test_variance_weights_matches_reference(seed):
    r, _, valid, _ = make_batch(seed)
    S = r @ np.array([0.5, 1.0, 0.25, 0.25, 0.1], np.float32)
    got = cal.variance_weights(S, valid, w_min=0.5, w_max=2.0, kappa=2.0)
    chex.assert_shape(got, (U,))
    np.testing.assert_allclose(got, ref_variance_weights(S, valid), rtol=1e-5)
    informative = np.abs(got - 1) > 0
    assert np.mean(np.asarray(got)[informative]) == pytest.approx(1.0, rel=1e-5)
    jitted = jax.jit(cal.variance_weights, static_argnames=("w_min", "w_max", "kappa", "eps", "tol"))
    np.testing.assert_allclose(jitted(S, valid, w_min=0.5, w_max=2.0, kappa=2.0), got, rtol=1e-6)


def test_variance_weights_no_informative_instance_gives_ones():
    np.testing.assert_array_equal(cal.variance_weights(np.ones((3, 4)), np.ones((3, 4), bool)), np.ones(3))


def test_ema_frequencies_matches_reference():
    rng = np.random.default_rng(0)
    p = np.full(M, 1 / M, np.float32)
    for _ in range(4):
        counts = rng.integers(0, 5, M).astype(np.float32)
        got = jax.jit(cal.ema_frequencies)(p, counts, 0.1)
        want = ref_ema_frequencies(p, counts, 0.1)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert float(jnp.sum(got)) == pytest.approx(1.0, abs=1e-6)
        p = np.asarray(got)
    np.testing.assert_array_equal(cal.ema_frequencies(p, np.zeros(M), 0.1), p)


@pytest.mark.parametrize("seed", SEEDS)
def test_balance_reward_matches_reference(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 3, (U, G, M)).astype(np.float32)
    counts[0, 0] = 0
    valid = rng.random((U, G)) > 0.2
    p = rng.dirichlet(np.ones(M)).astype(np.float32)
    got = jax.jit(cal.balance_reward)(counts, valid, p)
    np.testing.assert_allclose(got, ref_balance(counts, valid, p), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(got) <= 1)


def test_route_reward_linear_matches_reference():
    cost = np.random.default_rng(0).random((U, G)).astype(np.float32) * 2
    np.testing.assert_allclose(cal.route_reward_linear(cost, 1.3), ref_route_linear(cost, 1.3), rtol=1e-6, atol=1e-6)


def test_route_reward_router_r1_matches_reference_across_batches():
    rng = np.random.default_rng(0)
    window = cal.init_route_window(16)     # small window so it wraps around
    history = []
    fn = jax.jit(cal.route_reward_router_r1)
    for step in range(3):
        cost = (rng.random((4, 3)) ** 3 * 1e-2).astype(np.float32)
        cost[0, 1] = cost[0, 0]               # ties
        valid = rng.random((4, 3)) > 0.2
        got, window = fn(cost, valid, window)
        want, history = ref_route_router_r1(cost, valid, history, window=16)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert int(window.size) == len(history)
        assert sorted(np.asarray(window.values)[: int(window.size)].tolist()) == pytest.approx(sorted(history), rel=1e-6)


def test_router_r1_scalar_reward_matches_reference():
    r, fmt, _, _ = make_batch(0)
    for alpha in (0.0, 0.3):
        got = cal.router_r1_scalar_reward(fmt, r[..., 1], r[..., 3], alpha)
        np.testing.assert_allclose(got, ref_router_r1_scalar(fmt, r[..., 1], r[..., 3], alpha), rtol=1e-6)


@pytest.mark.parametrize("name", cal.ALL_PRESET_NAMES)
def test_calibrate_matches_reference_for_every_preset(name):
    cfg = cal.CalibrationConfig.preset(name, num_datasets=D, min_count=4)
    fn = jax.jit(cal.calibrate, static_argnames="config")
    for seed in range(2):
        r, fmt, valid, ids = make_batch(seed)
        state = cal.init_state(cfg, M)
        adv, _, diag = cal.calibrate(r, fmt, valid, ids, cfg, state)
        adv_jit, _, _ = fn(r, fmt, valid, ids, cfg, state)
        want, divisors, _ = ref_calibrate(r, fmt, valid, ids, cfg)
        chex.assert_shape(adv, (U, G))
        chex.assert_type(adv, jnp.float32)
        np.testing.assert_allclose(adv, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(adv_jit, adv, rtol=1e-5, atol=1e-6)
        for col, div in divisors.items():
            np.testing.assert_allclose(diag["dataset_scale"][:, col if cfg.decompose else 0], div, rtol=1e-5)
        assert int(diag["valid_count"]) == int(valid.sum())


def test_calibrate_ema_state_over_steps_matches_reference():
    cfg = cal.CalibrationConfig.preset("recal", num_datasets=D, dataset_stats="ema", min_count=6)
    state = cal.init_state(cfg, M)
    ema = None
    fn = jax.jit(cal.calibrate, static_argnames="config")
    for seed in range(3):
        r, fmt, valid, ids = make_batch(seed)
        adv, state, _ = fn(r, fmt, valid, ids, cfg, state)
        want, _, ema = ref_calibrate(r, fmt, valid, ids, cfg, ema)
        np.testing.assert_allclose(adv, want, rtol=1e-4, atol=1e-5)
        for k in range(K):
            np.testing.assert_allclose(state.m2[:, k], ema[k][0], rtol=1e-5, atol=1e-9)
    assert not bool(jnp.any(state.m2_initialized[:, K]))   # the scalar column is unused when decomposed


def test_calibrate_recomputes_stateful_rewards():
    cfg = cal.CalibrationConfig.preset("router_r1", num_datasets=D, router_r1_alpha=0.4, route_window=32)
    r, fmt, valid, ids = make_batch(0)
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 3, (U, G, M)).astype(np.float32)
    cost = rng.random((U, G)).astype(np.float32)
    state = cal.init_state(cfg, M)
    adv, new_state, _ = jax.jit(cal.calibrate, static_argnames="config")(
        r, fmt, valid, ids, cfg, state, call_counts_ugm=counts, cost_ug=cost)
    route, _ = ref_route_router_r1(cost, valid, [], window=32)
    r_ref = r.copy()
    r_ref[..., 3] = route
    r_ref[..., 4] = ref_balance(counts, valid, np.full(M, 1 / M))
    want, _, _ = ref_calibrate(r_ref, fmt, valid, ids, cfg)
    np.testing.assert_allclose(adv, want, rtol=1e-4, atol=1e-4)
    valid_counts = np.where(valid[..., None], counts, 0).sum((0, 1))
    np.testing.assert_allclose(new_state.freq, ref_ema_frequencies(np.full(M, 1 / M), valid_counts, 0.1), rtol=1e-6)
    assert int(new_state.route_window.size) == int(valid.sum())


def test_calibrate_linear_route_from_cost():
    cfg = cal.CalibrationConfig.preset("recal", num_datasets=D, cost_ref=0.5, min_count=4)
    r, fmt, valid, ids = make_batch(3)
    cost = np.random.default_rng(2).random((U, G)).astype(np.float32)
    adv, state, _ = cal.calibrate(r, fmt, valid, ids, cfg, cal.init_state(cfg, M), cost_ug=cost)
    r_ref = r.copy()
    r_ref[..., 3] = ref_route_linear(cost, 0.5)
    np.testing.assert_allclose(adv, ref_calibrate(r_ref, fmt, valid, ids, cfg)[0], rtol=1e-4, atol=1e-5)
    assert int(state.route_window.size) == 0


def test_calibrate_diagnostics():
    cfg = cal.CalibrationConfig.preset("recal", num_datasets=D, min_count=4)
    r, fmt, valid, ids = make_batch(1)
    r = r.copy()
    valid = valid.copy()
    valid[3, :2] = True
    r[3, 0, 2] = np.nan
    r[3, 1, 1] = np.inf
    adv, _, diag = cal.calibrate(r, fmt, valid, ids, cfg, cal.init_state(cfg, M))
    assert int(diag["num_nan_rollouts"]) == 2
    assert np.all(np.isfinite(np.asarray(adv))) and adv[3, 0] == 0 and adv[3, 1] == 0
    eff = valid & np.all(np.isfinite(r), -1)
    assert int(diag["valid_count"]) == int(eff.sum())
    for d in range(D):
        members = eff & (ids[:, None] == d)
        want = r[members].mean(0) if members.any() else np.zeros(K)
        np.testing.assert_allclose(diag["dataset_reward_mean"][d], want, rtol=1e-5, atol=1e-7)
        assert int(diag["dataset_count"][d]) == int(members.sum())
    S = np.where(eff, np.einsum("ugk,k->ug", ref_gate(np.where(eff[..., None], r, 0), fmt & eff, 1.0),
                                np.array(cfg.weights)), 0)
    w = ref_variance_weights(S, eff)
    has = eff.any(1)
    assert float(diag["weight_min"]) == pytest.approx(w[has].min(), rel=1e-5)
    assert float(diag["weight_max"]) == pytest.approx(w[has].max(), rel=1e-5)
    assert float(diag["weight_mean"]) == pytest.approx(w[has].mean(), rel=1e-5)
    sig = np.array([np.std(S[u][eff[u]]) if eff[u].any() else 0 for u in range(U)])
    assert float(diag["informative_frac"]) == pytest.approx(np.mean(sig[has] > 1e-6), rel=1e-6)
    chex.assert_shape([diag["adv_mean_k"], diag["adv_std_k"]], (K,))
    chex.assert_shape(diag["dataset_scale"], (D, K))
    assert float(diag["adv_mean"]) == pytest.approx(float(np.asarray(adv)[eff].mean()), abs=1e-6)
