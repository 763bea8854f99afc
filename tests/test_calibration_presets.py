"""Presets (spec 6): their fields, textbook GRPO / Dr. GRPO / GDPO, and input validation."""

import dataclasses

import jax
import numpy as np
import pytest

from recal_jax import calibration as cal

U, G, K, D, M = 8, 6, 5, 2, 3
CALIBRATE = jax.jit(cal.calibrate, static_argnames="config")
W = np.array([0.5, 1.0, 0.25, 0.25, 0.1])


def full_batch(seed):
    rng = np.random.default_rng(seed)
    r = rng.random((U, G, K)).astype(np.float32)
    r[..., 1] = rng.random((U, G)) > 0.5
    fmt = rng.random((U, G)) > 0.2
    return r, fmt, np.ones((U, G), bool), rng.integers(0, D, U).astype(np.int32)


def run(name, r, fmt, valid, ids, **overrides):
    cfg = cal.CalibrationConfig.preset(name, num_datasets=D, **overrides)
    return np.asarray(CALIBRATE(r, fmt, valid, ids, cfg, cal.init_state(cfg, M))[0])


def textbook_grpo(S, eps=1e-6):
    """GRPO as verl / TRL write it: (r - group mean) / (group std with n - 1 + eps)."""
    return (S - S.mean(1, keepdims=True)) / (S.std(1, ddof=1, keepdims=True) + eps)


def test_preset_fields_follow_the_spec_table():
    table = {  # gate, decompose, baseline, scale, reweight
        "grpo": (False, False, "mean", "group", "none"),
        "dr_grpo": (False, False, "mean", "none", "none"),
        "router_r1": (False, False, "mean", "group", "none"),
        "gdpo": (False, True, "mean", "group", "none"),
        "recal": (True, True, "mean", "dataset", "variance"),
        "recal_no_decomp": (True, False, "mean", "dataset", "variance"),
        "recal_no_dataset_norm": (True, True, "mean", "batch", "variance"),
        "recal_no_reweight": (True, True, "mean", "dataset", "none"),
        "recal_no_gate": (False, True, "mean", "dataset", "variance"),
    }
    assert set(table) == set(cal.PRESET_NAMES)
    for name, fields in table.items():
        cfg = cal.CalibrationConfig.preset(name, num_datasets=7)
        assert (cfg.gate, cfg.decompose, cfg.baseline, cfg.scale, cfg.reweight) == fields, name
        assert cfg.weights == tuple(W) and cfg.tau == 1.0 and cfg.eps == 1e-6 and cfg.min_count == 8
        assert (cfg.w_min, cfg.w_max, cfg.kappa, cfg.freq_decay, cfg.ema_decay) == (0.5, 2.0, 2.0, 0.1, 0.9)
        assert cfg.final_batch_norm == (name == "gdpo")
        assert cfg.scalar_reward == ("router_r1" if name == "router_r1" else "weighted")
        assert cfg.num_datasets == 7
        hash(cfg)
        assert cfg == cal.CalibrationConfig.preset(name, num_datasets=7)


def test_extension_presets_are_recal_with_one_change():
    assert not set(cal.EXTENSION_PRESET_NAMES) & set(cal.PRESET_NAMES)
    assert cal.ALL_PRESET_NAMES == cal.PRESET_NAMES + cal.EXTENSION_PRESET_NAMES
    recal = cal.CalibrationConfig.preset("recal", num_datasets=3)
    changes = {"recal_group_gate": ("gate_mode", "group_best"), "recal_ema": ("dataset_stats", "ema")}
    assert set(changes) == set(cal.EXTENSION_PRESET_NAMES)
    for name, (field, value) in changes.items():
        assert getattr(recal, field) != value, name
        assert cal.CalibrationConfig.preset(name, num_datasets=3) == dataclasses.replace(recal, **{field: value}), name
    assert recal.gate_mode == "threshold" and recal.tau_min == 0.5


@pytest.mark.parametrize("bad, match", [
    (dict(gate_mode="best"), "gate_mode"),
    (dict(gate_mode="group_best", tau_min=0.0), "tau_min"),
    (dict(gate_mode="group_best", tau=0.4), "tau_min"),
    (dict(tau_min=float("nan")), "tau_min"),
])
def test_gate_mode_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        cal.CalibrationConfig.preset("recal", **bad)
    cal.CalibrationConfig.preset("recal", tau=0.4)   # tau_min only matters for group_best


@pytest.mark.parametrize("seed", range(3))
def test_grpo_is_textbook_grpo(seed):
    r, fmt, valid, ids = full_batch(seed)
    np.testing.assert_allclose(run("grpo", r, fmt, valid, ids), textbook_grpo(r @ W), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_dr_grpo_is_mean_centred_reward(seed):
    r, fmt, valid, ids = full_batch(seed)
    S = r @ W
    np.testing.assert_allclose(run("dr_grpo", r, fmt, valid, ids), S - S.mean(1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_gdpo_is_its_definition(seed):
    r, fmt, valid, ids = full_batch(seed)
    summed = sum(W[k] * textbook_grpo(r[..., k].astype(np.float64)) for k in range(K))
    want = (summed - summed.mean()) / (summed.std() + 1e-6)
    np.testing.assert_allclose(run("gdpo", r, fmt, valid, ids), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_router_r1_is_grpo_on_router_r1_reward(alpha):
    r, fmt, valid, ids = full_batch(0)
    R = np.where(fmt, np.where(r[..., 1] > 0, (1 - alpha) * r[..., 1] + alpha * r[..., 3], 0.0), -1.0)
    np.testing.assert_allclose(run("router_r1", r, fmt, valid, ids, router_r1_alpha=alpha), textbook_grpo(R),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", cal.PRESET_NAMES)
def test_every_preset_runs_under_jit_with_state(name):
    stats = "ema" if name.startswith("recal") else "batch"
    cfg = cal.CalibrationConfig.preset(name, num_datasets=D, dataset_stats=stats, cost_ref=1.0, route_window=64)
    r, fmt, valid, ids = full_batch(1)
    state = cal.init_state(cfg, M)
    counts = np.ones((U, G, M), np.float32)
    for _ in range(2):
        adv, state, diag = CALIBRATE(r, fmt, valid, ids, cfg, state, call_counts_ugm=counts,
                                     cost_ug=np.full((U, G), 0.3, np.float32))
        assert adv.shape == (U, G) and np.all(np.isfinite(np.asarray(adv)))
    assert jax.tree.structure(state) == jax.tree.structure(cal.init_state(cfg, M))


# --- validation --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(scale="dataset_norm"), "scale"),
    (dict(baseline="median"), "baseline"),
    (dict(reweight="std"), "reweight"),
    (dict(weights=(1.0, 1.0)), "weights"),
    (dict(w_min=3.0), "w_min"),
    (dict(tau=float("nan")), "tau"),
    (dict(eps=0.0), "eps"),
    (dict(min_count=0), "min_count"),
    (dict(gate=1), "gate"),
    (dict(freq_decay=1.5), "freq_decay"),
    (dict(cost_ref=-1.0), "cost_ref"),
    (dict(scalar_reward="router_r1"), "decompose"),
])
def test_bad_config_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cal.CalibrationConfig.preset("recal", num_datasets=D, **kwargs)


def test_bad_preset_name_override_and_num_datasets_raise():
    with pytest.raises(ValueError, match="unknown calibration preset 'ppo'"):
        cal.CalibrationConfig.preset("ppo")
    with pytest.raises(ValueError, match="temperature"):
        cal.CalibrationConfig.preset("recal", temperature=1.0)
    with pytest.raises(ValueError, match="num_datasets"):
        cal.CalibrationConfig.preset("recal", num_datasets=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cal.CalibrationConfig().tau = 2.0


def test_bad_calibrate_inputs_raise():
    cfg = cal.CalibrationConfig.preset("recal", num_datasets=D)
    state = cal.init_state(cfg, M)
    r, fmt, valid, ids = full_batch(0)
    cases = [
        ((r[..., :4], fmt, valid, ids, cfg, state), {}, "K=5"),
        ((r[0], fmt, valid, ids, cfg, state), {}, "rewards"),
        ((r, fmt[:, :3], valid, ids, cfg, state), {}, "format_ok"),
        ((r, fmt, valid[:3], ids, cfg, state), {}, "valid"),
        ((r, fmt, valid, ids[:3], cfg, state), {}, "dataset_ids"),
        ((r, fmt, valid, ids + D, cfg, state), {}, r"\[0, 2\)"),
        ((r, fmt, valid, ids - 1 - D, cfg, state), {}, r"\[0, 2\)"),
        ((r, fmt, valid, ids.astype(np.float32), cfg, state), {}, "integers"),
        ((r, fmt, valid, ids, "recal", state), {}, "CalibrationConfig"),
        ((r, fmt, valid, ids, cfg, cal.init_state(cal.CalibrationConfig(num_datasets=5), M)), {}, "state.m2"),
        ((r, fmt, valid, ids, cfg, state), dict(call_counts_ugm=np.ones((U, G, M + 1))), "call_counts_ugm"),
        ((r, fmt, valid, ids, cfg, state), dict(cost_ug=np.ones((U, G))), "cost_ref"),
    ]
    for i, (args, kwargs, match) in enumerate(cases):
        with pytest.raises(ValueError, match=match):
            cal.calibrate(*args, **kwargs)
        if i not in (5, 6):   # ids are traced under jit: their range can only be checked eagerly
            with pytest.raises(ValueError, match=match):
                CALIBRATE(*args, **kwargs)


def test_out_of_range_ids_are_checked_only_when_concrete():
    cfg = cal.CalibrationConfig.preset("recal", num_datasets=D, min_count=1)
    r, fmt, valid, ids = full_batch(0)

    @jax.jit
    def traced(ids):
        return cal.calibrate(r, fmt, valid, ids, cfg, cal.init_state(cfg, M))[0]

    assert np.all(np.isfinite(np.asarray(traced(ids))))


def test_bad_function_arguments_raise():
    x, valid = np.zeros((2, 3)), np.ones((2, 3), bool)
    with pytest.raises(ValueError, match="baseline"):
        cal.group_advantages(x, valid, baseline="median")
    with pytest.raises(ValueError, match="dataset_scale"):
        cal.group_advantages(x, valid, scale="dataset")
    with pytest.raises(ValueError, match="shape|\\[U,G\\]"):
        cal.group_advantages(x, valid[:1])
    with pytest.raises(ValueError, match="w_min"):
        cal.variance_weights(x, valid, w_min=3.0, w_max=2.0, kappa=2.0)
    with pytest.raises(ValueError, match="cost_ref"):
        cal.route_reward_linear(x, 0.0)
    with pytest.raises(ValueError, match="freq"):
        cal.ema_frequencies(np.ones(3) / 3, np.ones(4), 0.1)
    with pytest.raises(ValueError, match="call_counts"):
        cal.balance_reward(np.ones((2, 3, 4)), valid, np.ones(3) / 3)
    with pytest.raises(ValueError, match="num_models"):
        cal.init_state(cal.CalibrationConfig(), 0)
