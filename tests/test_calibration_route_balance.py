"""Route and balance have one owner, calibration: pins that computing them inside `calibrate`
from the raw facts (calls per model, cost) gives the advantages of the old path, where the
environment precomputed route / balance (an independent numpy reference of spec section 3
and of Router-R1's windowed rule stands in for the old environment code)."""

import collections

import jax
import numpy as np
import pytest

from recal_jax import calibration as cal

U, G, D, M = 6, 4, 3, 4
CALIBRATE = jax.jit(cal.calibrate, static_argnames="config")
COST_REF = 0.05


class ReferenceRouting:
    """Spec section 3 in numpy, with its own state: EMA frequency p and Router-R1's deque
    (float32 arithmetic, as the environment's numbers were)."""

    def __init__(self, window: int, freq_decay: float = 0.1):
        self.freq = np.full(M, 1.0 / M, np.float32)
        self.window = collections.deque(maxlen=window)
        self.freq_decay = np.float32(freq_decay)

    def balance(self, counts_ugm, valid_ug):
        per_model = np.clip(np.float32(1.0) - np.float32(M) * self.freq, -1.0, 1.0)
        out = np.zeros(valid_ug.shape, np.float32)
        for u, g in zip(*np.nonzero(valid_ug)):
            calls = [m for m in range(M) for _ in range(int(counts_ugm[u, g, m]))]
            out[u, g] = np.float32(sum(per_model[calls], np.float32(0)) / np.float32(len(calls))) if calls else 0.0
        return out

    def update_freq(self, counts_ugm, valid_ug):
        total_m = counts_ugm[valid_ug].sum(0).astype(np.float32)
        if total_m.sum() > 0:
            self.freq = (np.float32(1) - self.freq_decay) * self.freq + self.freq_decay * (total_m / total_m.sum())

    def route(self, cost_ug, valid_ug, rule):
        out = np.zeros(valid_ug.shape, np.float32)
        for u, g in zip(*np.nonzero(valid_ug)):
            if rule == "linear":
                out[u, g] = np.float32(1) - min(np.float32(cost_ug[u, g]) / np.float32(COST_REF), np.float32(1))
                continue
            x = np.sqrt(max(cost_ug[u, g], 0.0))
            self.window.append(x)
            lo, hi = np.percentile(list(self.window), 5), np.percentile(list(self.window), 95)
            out[u, g] = 0.5 if hi - lo < 1e-8 else 1.0 - np.clip((x - lo) / (hi - lo), 0.0, 1.0)
        return out


def _batch(rng):
    stateless = np.zeros((U, G, 3), np.float32)
    stateless[..., 0] = rng.random((U, G)) < 0.85
    stateless[..., 1] = np.where(rng.random((U, G)) < 0.5, 1.0, rng.random((U, G)).round(2))
    stateless[..., 2] = rng.random((U, G)) < 0.6
    counts = rng.integers(0, 3, (U, G, M)).astype(np.float32)
    counts[rng.random((U, G)) < 0.2] = 0.0  # some rollouts make no call
    cost = (counts * np.array([0.001, 0.01, 0.03, 0.08])).sum(-1).astype(np.float32)
    valid = rng.random((U, G)) < 0.9
    return stateless, stateless[..., 0].astype(bool), valid, counts, cost, rng.integers(0, D, U).astype(np.int32)


PRESETS = [("recal", "linear"), ("recal_ema", "linear"), ("grpo", "linear"), ("gdpo", "linear"),
           ("router_r1", "router_r1"), ("recal_no_decomp", "router_r1")]


def _config(preset, rule):
    return cal.CalibrationConfig.preset(preset, num_datasets=D, min_count=4, cost_ref=COST_REF, route_rule=rule,
                                        route_window=16)


@pytest.mark.parametrize("preset,rule", PRESETS)
def test_old_and_new_training_paths_give_identical_advantages(preset, rule):
    """Old: the environment computed route / balance (columns 3 / 4) and GRPO passed them with
    the facts, calibrate recomputing them. New: the environment reports the three stateless
    components and the facts. Same advantages, state and diagnostics, bit for bit, over
    several steps; the logged reward means equal the old environment's columns' means."""
    cfg = _config(preset, rule)
    rng = np.random.default_rng(0)
    ref = ReferenceRouting(window=16)
    old_state = new_state = cal.init_state(cfg, M)
    for _ in range(4):  # several steps: the EMA frequency and the window evolve
        stateless, fmt, valid, counts, cost, ids = _batch(rng)
        route, balance = ref.route(cost, valid, rule), ref.balance(counts, valid)
        ref.update_freq(counts, valid)
        env_ugk = np.concatenate([stateless, route[..., None], balance[..., None]], -1).astype(np.float32)
        old = CALIBRATE(env_ugk, fmt, valid, ids, cfg, old_state, call_counts_ugm=counts, cost_ug=cost)
        new = CALIBRATE(stateless, fmt, valid, ids, cfg, new_state, call_counts_ugm=counts, cost_ug=cost)
        (adv_old, old_state, diag_old), (adv_new, new_state, diag_new) = old, new
        np.testing.assert_array_equal(adv_new, adv_old)
        for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(old_state)):
            np.testing.assert_array_equal(a, b)
        for key in diag_old:
            if key != "reward_mean_k":
                np.testing.assert_array_equal(diag_new[key], diag_old[key], err_msg=key)
        # what training logs as reward/<component>: the old environment's columns, averaged
        np.testing.assert_allclose(diag_new["reward_mean_k"], env_ugk[valid].mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset,rule", PRESETS)
def test_route_balance_and_their_state_match_an_independent_reference(preset, rule):
    """calibrate's route / balance / EMA frequency / cost window against the numpy reference
    of spec section 3; and its advantages against calibrate given those columns precomputed
    (no facts, the spec section 8 signature)."""
    cfg = _config(preset, rule)
    rng = np.random.default_rng(1)
    ref = ReferenceRouting(window=16)
    state = given_state = cal.init_state(cfg, M)
    for _ in range(4):
        stateless, fmt, valid, counts, cost, ids = _batch(rng)
        route, balance = ref.route(cost, valid, rule), ref.balance(counts, valid)
        ref.update_freq(counts, valid)
        rewards_ugk = np.concatenate([stateless, route[..., None], balance[..., None]], -1).astype(np.float32)
        adv, state, diag = CALIBRATE(stateless, fmt, valid, ids, cfg, state, call_counts_ugm=counts, cost_ug=cost)
        adv_given, given_state, _ = CALIBRATE(rewards_ugk, fmt, valid, ids, cfg, given_state)
        np.testing.assert_allclose(diag["reward_mean_k"], rewards_ugk[valid].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.freq, ref.freq, rtol=1e-5)
        if rule == "router_r1":
            size = int(state.route_window.size)
            assert size == len(ref.window)
            np.testing.assert_allclose(np.sort(np.asarray(state.route_window.values)[:size]),
                                       np.sort(list(ref.window)), rtol=1e-6)
        if preset != "gdpo":  # gdpo's per-component group std turns 1-ulp differences of a
            # near-constant balance column into visible advantage differences: compared above only
            np.testing.assert_allclose(adv, adv_given, rtol=1e-4, atol=1e-5)


def test_stateless_components_equal_any_route_and_balance_columns_with_facts():
    """With the facts given, calibrate ignores columns 3 / 4: K=3 input == K=5 input, exactly."""
    cfg = cal.CalibrationConfig.preset("recal", num_datasets=D, min_count=4, cost_ref=COST_REF)
    stateless, fmt, valid, counts, cost, ids = _batch(np.random.default_rng(1))
    junk = np.random.default_rng(2).random((U, G, 2)).astype(np.float32)
    state = cal.init_state(cfg, M)
    out3 = CALIBRATE(stateless, fmt, valid, ids, cfg, state, call_counts_ugm=counts, cost_ug=cost)
    out5 = CALIBRATE(np.concatenate([stateless, junk], -1), fmt, valid, ids, cfg, state,
                     call_counts_ugm=counts, cost_ug=cost)
    for a, b in zip(jax.tree_util.tree_leaves(out3), jax.tree_util.tree_leaves(out5)):
        np.testing.assert_array_equal(a, b)


def test_three_components_need_both_facts():
    cfg = cal.CalibrationConfig.preset("recal", num_datasets=D, cost_ref=COST_REF)
    stateless, fmt, valid, counts, cost, ids = _batch(np.random.default_rng(3))
    state = cal.init_state(cfg, M)
    with pytest.raises(ValueError, match="K=5"):
        cal.calibrate(stateless, fmt, valid, ids, cfg, state, call_counts_ugm=counts)
    with pytest.raises(ValueError, match="K=5"):
        cal.calibrate(stateless, fmt, valid, ids, cfg, state)
