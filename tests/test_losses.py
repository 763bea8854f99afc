"""Tests for recal_jax.losses against loop references written from the spec's words."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from recal_jax.losses import (
    AGG_MODES, LossTerms, aggregate, aggregate_terms, aux_to_metrics, kl_penalty,
    policy_loss, reduce_stacked_aux,
)

jax.config.update("jax_enable_x64", False)


# ---------- references (plain Python loops) ----------

def ref_token_loss(logp, logp_old, adv, clip_low=0.2, clip_high=0.2, dual=None):
    b, t = logp.shape
    out = np.zeros((b, t))
    for i in range(b):
        for j in range(t):
            a = adv[i]
            rho = math.exp(min(max(logp[i, j] - logp_old[i, j], -20.0), 20.0))
            l = max(-a * rho, -a * min(max(rho, 1 - clip_low), 1 + clip_high))
            if dual is not None and a < 0:
                l = min(l, -a * dual)
            out[i, j] = l
    return out


def ref_kl(logp, ref, kind):
    b, t = logp.shape
    out = np.zeros((b, t))
    for i in range(b):
        for j in range(t):
            d = float(logp[i, j]) - float(ref[i, j])
            if kind == "k1":
                out[i, j] = d
            elif kind == "k2":
                out[i, j] = d * d / 2
            else:
                x = min(max(-d, -20.0), 20.0)
                out[i, j] = min(max(math.exp(x) - x - 1, -10.0), 10.0)
    return out


def ref_aggregate(l, m, mode):
    b, t = l.shape
    if mode == "token-mean":
        num = sum(m[i, j] * l[i, j] for i in range(b) for j in range(t))
        den = sum(m[i, j] for i in range(b) for j in range(t))
        return num / den if den else 0.0
    if mode == "seq-mean-token-sum-norm":
        return sum(m[i, j] * l[i, j] for i in range(b) for j in range(t)) / (b * t)
    seq_vals = []
    for i in range(b):
        msum = sum(m[i])
        if msum == 0:
            continue
        s = sum(m[i, j] * l[i, j] for j in range(t))
        seq_vals.append(s / msum if mode == "seq-mean-token-mean" else s)
    return sum(seq_vals) / len(seq_vals) if seq_vals else 0.0


def random_batch(seed, b=5, t=7, full_rows=False):
    rng = np.random.default_rng(seed)
    logp_old = -rng.uniform(0.05, 4.0, (b, t)).astype(np.float32)
    logp = (logp_old + rng.normal(0, 0.4, (b, t))).astype(np.float32)
    logp = np.minimum(logp, 0.0)
    adv = rng.normal(0, 1.0, (b,)).astype(np.float32)
    mask = (rng.uniform(size=(b, t)) < 0.7).astype(np.float32)
    if not full_rows:
        mask[1] = 0.0  # one padded rollout
    ref = (logp_old + rng.normal(0, 0.3, (b, t))).astype(np.float32)
    return logp, logp_old, adv, mask, ref


# ---------- aggregation ----------

@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_matches_loop_reference(mode):
    rng = np.random.default_rng(0)
    l = rng.normal(size=(6, 9)).astype(np.float32)
    m = (rng.uniform(size=(6, 9)) < 0.5).astype(np.float32)
    m[2] = 0.0
    got = aggregate(l, m, mode)
    chex.assert_shape(got, ())
    np.testing.assert_allclose(got, ref_aggregate(l, m, mode), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_all_masked_is_zero(mode):
    l = jnp.ones((3, 4)) * 1e4
    assert float(aggregate(l, jnp.zeros((3, 4)), mode)) == 0.0


def test_aggregate_hand_case():
    l = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    m = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    assert float(aggregate(l, m, "token-mean")) == pytest.approx((1 + 2 + 4) / 3)
    assert float(aggregate(l, m, "seq-mean-token-mean")) == pytest.approx((1.5 + 4) / 2)
    assert float(aggregate(l, m, "seq-mean-token-sum")) == pytest.approx((3 + 4) / 2)
    assert float(aggregate(l, m, "seq-mean-token-sum-norm")) == pytest.approx(7 / 6)


def test_unknown_mode_and_kind_raise():
    with pytest.raises(ValueError, match="aggregation mode"):
        aggregate(jnp.zeros((2, 2)), jnp.ones((2, 2)), "seq-mean")
    with pytest.raises(ValueError, match="KL estimator"):
        kl_penalty(jnp.zeros((2, 2)), jnp.zeros((2, 2)), "k4")
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="aggregation mode"):
        policy_loss(z, z, jnp.zeros(2), z, agg="mean")
    with pytest.raises(ValueError, match="KL estimator"):
        policy_loss(z, z, jnp.zeros(2), z, kl_kind="kl")


def test_bad_shapes_raise():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(z, z, jnp.zeros(3), z)
    with pytest.raises(ValueError, match="logp_old"):
        policy_loss(z, jnp.zeros((2, 4)), jnp.zeros(2), z)
    with pytest.raises(ValueError, match="same shape"):
        aggregate(z, jnp.zeros((3, 2)), "token-mean")
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(z, z, jnp.zeros(2), z, dual_clip=0.5)
    with pytest.raises(ValueError, match="logp_ref"):
        policy_loss(z, z, jnp.zeros(2), z, kl_coef=0.1)


# ---------- KL ----------

@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_matches_reference(kind):
    logp, _, _, _, ref = random_batch(1)
    logp[0, 0], ref[0, 0] = -1e4, 0.0     # x = +1e4: k3 clamps to 10
    logp[0, 1], ref[0, 1] = 0.0, -1e4     # x = -1e4: exp(-20) + 20 - 1 -> clipped at 10
    got = kl_penalty(logp, ref, kind)
    chex.assert_shape(got, logp.shape)
    chex.assert_tree_all_finite(got)
    np.testing.assert_allclose(got, ref_kl(logp, ref, kind), rtol=1e-5, atol=1e-5)


def test_k3_clamps_hand_values():
    # d = 0 -> 0 ; x = 1 -> e - 2 ; x = 30 -> clip 20 -> huge -> clamp 10
    logp = jnp.array([[0.0, -1.0, -30.0]])
    ref = jnp.array([[0.0, 0.0, 0.0]])
    np.testing.assert_allclose(kl_penalty(logp, ref, "k3"), [[0.0, math.e - 2, 10.0]],
                               rtol=1e-6)


# ---------- policy loss ----------

def test_ppo_clip_hand_cases():
    # rows: A=+1 rho=1.5 -> clipped 1.2 -> -1.2 ; A=+1 rho=0.5 -> -0.5 (unclipped min)
    #       A=-1 rho=0.5 -> max(0.5, 0.8) = 0.8 ; A=-1 rho=1.5 -> max(1.5, 1.2) = 1.5
    rho = np.array([1.5, 0.5, 0.5, 1.5])
    logp = jnp.asarray(np.log(rho)[:, None], jnp.float32)
    old = jnp.zeros((4, 1))
    adv = jnp.array([1.0, 1.0, -1.0, -1.0])
    mask = jnp.ones((4, 1))
    loss, aux = policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum")
    expected = [-1.2, -0.5, 0.8, 1.5]
    np.testing.assert_allclose(loss.value(), np.mean(expected), rtol=1e-5)
    m = aux_to_metrics(aux)
    assert float(m["clipfrac_high"]) == pytest.approx(0.25)  # row 0
    assert float(m["clipfrac_low"]) == pytest.approx(0.25)   # row 2
    assert float(m["ratio_min"]) == pytest.approx(0.5, rel=1e-5)
    assert float(m["ratio_max"]) == pytest.approx(1.5, rel=1e-5)
    assert float(m["ratio_mean"]) == pytest.approx(1.0, rel=1e-5)


def test_dual_clip_hand_case():
    # A = -1, rho = 5: plain loss max(5, 1.2) = 5, dual clip c=3 caps at 3.
    # A = +1, rho = 5: dual clip does not apply: -1.2.
    logp = jnp.log(jnp.array([[5.0], [5.0]]))
    old = jnp.zeros((2, 1))
    adv = jnp.array([-1.0, 1.0])
    mask = jnp.ones((2, 1))
    loss, aux = policy_loss(logp, old, adv, mask, dual_clip=3.0, agg="seq-mean-token-sum")
    np.testing.assert_allclose(loss.value(), (3.0 - 1.2) / 2, rtol=1e-5)
    assert float(aux["dualclip_frac"].value()) == pytest.approx(0.5)
    loss_off, _ = policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum")
    np.testing.assert_allclose(loss_off.value(), (5.0 - 1.2) / 2, rtol=1e-5)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("dual", [None, 3.0])
def test_policy_loss_matches_reference(mode, dual):
    logp, old, adv, mask, ref = random_batch(2)
    loss, aux = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28,
                            dual_clip=dual, agg=mode, logp_ref=ref, kl_coef=0.05,
                            kl_kind="k3")
    tok = ref_token_loss(logp, old, adv, 0.2, 0.28, dual) + 0.05 * ref_kl(logp, ref, "k3")
    np.testing.assert_allclose(loss.value(), ref_aggregate(tok, mask, mode),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        aux["kl"].value(), ref_aggregate(ref_kl(logp, ref, "k3"), mask, "token-mean"),
        rtol=1e-5, atol=1e-6)
    pg_only = ref_aggregate(ref_token_loss(logp, old, adv, 0.2, 0.28, dual), mask, mode)
    np.testing.assert_allclose(aux["pg_loss"].value(), pg_only, rtol=1e-5, atol=1e-6)
    # approx KL: k3 estimate of KL(old || new) = mean(r - 1 - log r)
    r = np.exp(logp.astype(np.float64) - old)
    np.testing.assert_allclose(
        aux["approx_kl"].value(), ref_aggregate(r - 1 - np.log(r), mask, "token-mean"),
        rtol=1e-4, atol=1e-6)


def test_entropy_metric_and_token_level_advantages():
    logp, old, adv, mask, _ = random_batch(3)
    ent = np.abs(np.random.default_rng(0).normal(size=logp.shape)).astype(np.float32)
    adv_bt = np.broadcast_to(adv[:, None], logp.shape)
    l1, a1 = policy_loss(logp, old, adv, mask, entropy=ent)
    l2, _ = policy_loss(logp, old, adv_bt, mask)
    np.testing.assert_allclose(l1.value(), l2.value(), rtol=1e-6)
    np.testing.assert_allclose(a1["entropy"].value(),
                               ref_aggregate(ent, mask, "token-mean"), rtol=1e-5)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_jit_equals_eager(mode):
    logp, old, adv, mask, ref = random_batch(4)
    f = lambda *a: policy_loss(*a, agg=mode, dual_clip=3.0, logp_ref=ref, kl_coef=0.01)
    eager = f(logp, old, adv, mask)
    jitted = jax.jit(f)(logp, old, adv, mask)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-6)


def ref_grad_wrt_logp(logp, old, adv, mask, mode, clip_low=0.2, clip_high=0.2, dual=None):
    """Analytic d loss / d logp of the clipped surrogate (per-token weight times dl/dlogp)."""
    b, t = logp.shape
    g = np.zeros((b, t))
    for i in range(b):
        msum = mask[i].sum()
        for j in range(t):
            a, rho = adv[i], math.exp(logp[i, j] - old[i, j])
            un, cl = -a * rho, -a * min(max(rho, 1 - clip_low), 1 + clip_high)
            dl = -a * rho if un >= cl else 0.0  # clipped branch is flat in logp
            if dual is not None and a < 0 and -a * dual < max(un, cl):
                dl = 0.0
            if mask[i, j] == 0:
                w = 0.0
            elif mode == "token-mean":
                w = mask[i, j] / mask.sum()
            elif mode == "seq-mean-token-sum-norm":
                w = mask[i, j] / (b * t)
            else:
                nseq = (mask.sum(1) > 0).sum()
                w = mask[i, j] / nseq / (msum if mode == "seq-mean-token-mean" else 1.0)
            g[i, j] = w * dl
    return g


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("dual", [None, 3.0])
def test_gradient_matches_analytic(mode, dual):
    logp, old, adv, mask, _ = random_batch(5)
    logp = (old + np.random.default_rng(5).normal(0, 0.8, old.shape)).astype(np.float32)
    grad = jax.grad(lambda lp: policy_loss(lp, old, adv, mask, agg=mode,
                                           dual_clip=dual)[0].value())(jnp.asarray(logp))
    chex.assert_tree_all_finite(grad)
    np.testing.assert_allclose(grad, ref_grad_wrt_logp(logp, old, adv, mask, mode, dual=dual),
                               rtol=1e-4, atol=1e-6)


def test_gradient_matches_finite_difference_with_kl():
    logp, old, adv, mask, ref = random_batch(6, b=3, t=4)
    f = lambda lp: policy_loss(lp, old, adv, mask, logp_ref=ref, kl_coef=0.5,
                               kl_kind="k2")[0].value()
    lp64 = logp.astype(np.float64)
    g = np.asarray(jax.grad(f)(jnp.asarray(logp)))
    eps = 1e-3
    for i in range(3):
        for j in range(4):
            up, dn = lp64.copy(), lp64.copy()
            up[i, j] += eps
            dn[i, j] -= eps
            fd = (float(f(jnp.asarray(up, jnp.float32))) -
                  float(f(jnp.asarray(dn, jnp.float32)))) / (2 * eps)
            assert g[i, j] == pytest.approx(fd, abs=2e-3), (i, j)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_microbatch_sums_equal_full_batch(mode):
    logp, old, adv, mask, ref = random_batch(7, b=8, t=6)
    mask[5] = 0.0
    kw = dict(agg=mode, logp_ref=ref, kl_coef=0.1, dual_clip=3.0)
    full, full_aux = policy_loss(logp, old, adv, mask, **kw)
    parts = [policy_loss(logp[s], old[s], adv[s], mask[s], **kw | {"logp_ref": ref[s]})
             for s in (slice(0, 2), slice(2, 5), slice(5, 8))]
    total = parts[0][0] + parts[1][0] + parts[2][0]
    np.testing.assert_allclose(total.value(), full.value(), rtol=1e-5, atol=1e-7)
    # the same through the stacked reduction used by gradient accumulation (equal splits)
    split = [policy_loss(logp[s], old[s], adv[s], mask[s], **kw | {"logp_ref": ref[s]})
             for s in (slice(0, 4), slice(4, 8))]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *[a for _, a in split])
    red = aux_to_metrics(reduce_stacked_aux(stacked))
    want = aux_to_metrics(full_aux)
    for k in want:
        np.testing.assert_allclose(red[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_reduce_ignores_empty_microbatch_for_min_max():
    logp = jnp.log(jnp.array([[2.0, 3.0], [0.5, 0.1]]))
    old = jnp.zeros((2, 2))
    adv = jnp.ones(2)
    mask = jnp.array([[1.0, 1.0], [0.0, 0.0]])
    parts = [policy_loss(logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1])[1]
             for i in range(2)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *parts)
    red = reduce_stacked_aux(stacked)
    assert float(red["ratio_min"]) == pytest.approx(2.0, rel=1e-5)
    assert float(red["ratio_max"]) == pytest.approx(3.0, rel=1e-5)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_extreme_logp_and_masked_rows_are_finite(mode, kind):
    logp = jnp.array([[-1e4, 0.0, -1e4], [0.0, -1e4, 0.0], [-5.0, -1.0, 0.0]])
    old = jnp.array([[0.0, -1e4, -1e4], [-1e4, 0.0, 0.0], [-5.0, -1.0, 0.0]])
    ref = old[::-1]
    adv = jnp.array([1e3, -1e3, 0.0])
    mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    f = lambda lp: policy_loss(lp, old, adv, mask, agg=mode, dual_clip=3.0, logp_ref=ref,
                               kl_coef=0.001, kl_kind=kind, entropy=jnp.zeros((3, 3)))
    (loss, aux), = [f(logp)]
    chex.assert_tree_all_finite((loss, aux))
    chex.assert_tree_all_finite(jax.grad(lambda lp: f(lp)[0].value())(logp))
    none = policy_loss(logp, old, adv, jnp.zeros((3, 3)), agg=mode, logp_ref=ref,
                       kl_coef=0.1, kl_kind=kind)
    chex.assert_tree_all_finite(none)
    assert float(none[0].value()) == 0.0


@given(
    b=st.integers(1, 4), t=st.integers(1, 5), seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(AGG_MODES),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
)
def test_hypothesis_finite_and_matches_reference(b, t, seed, mode, scale):
    rng = np.random.default_rng(seed)
    logp = (-np.abs(rng.normal(size=(b, t))) * scale).astype(np.float32)
    old = (-np.abs(rng.normal(size=(b, t))) * scale).astype(np.float32)
    adv = (rng.normal(size=b) * scale).astype(np.float32)
    mask = (rng.uniform(size=(b, t)) < 0.6).astype(np.float32)
    loss, aux = policy_loss(logp, old, adv, mask, agg=mode, dual_clip=3.0)
    chex.assert_tree_all_finite((loss, aux))
    want = ref_aggregate(ref_token_loss(logp, old, adv, dual=3.0), mask, mode)
    np.testing.assert_allclose(loss.value(), want, rtol=2e-5, atol=1e-5 * max(1.0, abs(want)))
    assert isinstance(loss, LossTerms)
    chex.assert_tree_all_finite(aggregate_terms(np.full((b, t), scale, np.float32), mask, mode))


def test_per_row_kl_coefficient_matches_reference():
    """kl_coef as f32[B] (a scheduled coefficient, traced): each row's KL term has its own weight."""
    logp, old, adv, mask, ref = random_batch(4)
    coef_b = np.linspace(0.0, 0.3, logp.shape[0]).astype(np.float32)
    loss, _ = policy_loss(logp, old, adv, mask, logp_ref=ref, kl_coef=jnp.asarray(coef_b), agg="token-mean")
    tok = ref_token_loss(logp, old, adv) + coef_b[:, None] * ref_kl(logp, ref, "k3")
    np.testing.assert_allclose(loss.value(), ref_aggregate(tok, mask, "token-mean"), rtol=1e-5, atol=1e-6)
    scalar, _ = policy_loss(logp, old, adv, mask, logp_ref=ref, kl_coef=np.float32(0.05))  # a numpy scalar is a number
    tok = ref_token_loss(logp, old, adv) + 0.05 * ref_kl(logp, ref, "k3")
    np.testing.assert_allclose(scalar.value(), ref_aggregate(tok, mask, "token-mean"), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"kl_coef must be a number or f32\[B\]"):
        policy_loss(logp, old, adv, mask, logp_ref=ref, kl_coef=jnp.zeros(logp.shape[0] + 1))
    with pytest.raises(ValueError, match="kl_coef != 0 needs logp_ref"):
        policy_loss(logp, old, adv, mask, kl_coef=jnp.asarray(coef_b))
