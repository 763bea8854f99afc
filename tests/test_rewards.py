"""Reward components against hand-computed values (spec section 3): the environment's
stateless components and raw facts, and route / balance computed from those facts by
calibration (their one owner)."""

import dataclasses

import chex
import numpy as np
import pytest

from recal_jax.calibration import (
    balance_reward, init_route_window, route_reward_linear, route_reward_router_r1)
from recal_jax.data.schema import ModelInfo, RoutingLog, RoutingRecord
from recal_jax.routing.protocol import parse
from recal_jax.routing.rewards import compute_components, default_cost_ref

MODELS = ["cheap", "mid", "big"]
FREQ = np.array([0.5, 0.3, 0.2])  # balance per model: clip(1 - 3p) = [-0.5, 0.1, 0.4]
BAL = {"cheap": -0.5, "mid": 0.1, "big": 0.4}

REC = RoutingRecord(
    id="q1", dataset="d", question="capital of france?", golden_answers=("Paris", "City of Paris"),
    scores={"cheap": 0.0, "mid": 1.0, "big": 1.0},
    responses={"cheap": "Lyon", "mid": "It is Paris.", "big": "paris"},
)
SCORE_ONLY = RoutingRecord(id="q2", dataset="d", question="2+2?", golden_answers=("4",),
                           scores={"cheap": 0.0, "mid": 0.5, "big": 1.0})


def mt(calls, answer):
    text = "<think>t</think>"
    for m, q in calls:
        text += f"<search>{m} : {q}</search><information>r</information><think>t</think>"
    return text + f"<answer>{answer}</answer>"


@dataclasses.dataclass
class FakeReply:  # PoolReply-like: no .model
    text: str
    cost_usd: float
    ok: bool = True


def route_and_balance(out, cost_ref):
    """Components 3 and 4 as calibrate computes them from the facts (freq FREQ before the batch)."""
    route = np.where(out.valid_ug, np.asarray(route_reward_linear(out.cost_ug, cost_ref)), 0.0)
    balance = np.asarray(balance_reward(out.call_counts_ugm, out.valid_ug, FREQ))
    return np.concatenate([out.stateless_ugk, route[..., None], balance[..., None]], axis=-1)


def test_multi_turn_hand_computed():
    texts = [
        mt([("cheap", "q"), ("mid", "q")], "Paris"),  # answer EM 1; info max(0, 1)=1
        mt([], "Lyon"),  # no calls
        "<answer>paris</answer>",  # format fails; answer still scored
    ]
    parsed = [[parse(t, MODELS) for t in texts]]
    replies = [[
        [("cheap", 0.1, "Lyon"), ("mid", 0.3, "It is Paris.")],
        [],
        [],
    ]]
    out = compute_components(parsed, [REC], replies, protocol="multi_turn", answer_metric="em",
                             model_names=MODELS)
    chex.assert_shape(out.stateless_ugk, (1, 3, 3))
    assert out.stateless_ugk.dtype == np.float32
    expected = np.array([
        [1, 1, 1, 1 - 0.4 / 0.8, (BAL["cheap"] + BAL["mid"]) / 2],
        [1, 0, 0, 1, 0],
        [0, 1, 0, 1, 0],
    ], np.float32)
    np.testing.assert_allclose(route_and_balance(out, 0.8)[0], expected, atol=1e-6)
    np.testing.assert_array_equal(out.format_ok_ug, [[True, True, False]])
    np.testing.assert_array_equal(out.call_counts_ugm[0], [[1, 1, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(out.cost_ug, [[0.4, 0.0, 0.0]], atol=1e-7)
    np.testing.assert_array_equal(out.answer_ug, out.stateless_ugk[..., 1])


def test_f1_and_route_cap_and_ragged_groups():
    parsed = [
        [parse(mt([("big", "q"), ("big", "q")], "paris city"), MODELS)],  # F1 vs 'city of paris' = 1.0
        [parse(mt([("mid", "q")], "the city"), MODELS), parse(mt([], "x"), MODELS)],
    ]
    replies = [
        [[FakeReply("paris", 2.0), FakeReply("paris", 2.0)]],  # models taken from the parsed calls
        [[FakeReply("[error]", 0.0, ok=False)], []],
    ]
    out = compute_components(parsed, [REC, REC], replies, protocol="multi_turn", answer_metric="f1",
                             model_names=MODELS)
    chex.assert_shape(out.stateless_ugk, (2, 2, 3))
    np.testing.assert_array_equal(out.valid_ug, [[True, False], [True, True]])
    rewards = route_and_balance(out, 1.0)
    # 'paris city' vs 'city of paris' -> tokens {paris, city} vs {city, of, paris}: P=1, R=2/3, F1=0.8
    np.testing.assert_allclose(rewards[0, 0], [1, 0.8, 1, 0, BAL["big"]], atol=1e-6)
    np.testing.assert_allclose(rewards[0, 1], 0.0)  # padding
    # 'the city' -> 'city' vs 'city of paris': P=1, R=1/3 -> 0.5; failed call: info 0
    np.testing.assert_allclose(rewards[1, 0], [1, 0.5, 0, 1, BAL["mid"]], atol=1e-6)
    np.testing.assert_array_equal(out.call_counts_ugm[0, 0], [0, 0, 2])


def test_single_call_score_only():
    parsed = [[parse(t, MODELS, protocol="single_call") for t in
               ["<search>mid</search>", "<think>hm</think><search>big</search>", "<search>cheap</search> junk", "nothing"]]]
    replies = [[[("mid", 0.2, "4")], [("big", 0.5, "4")], [("cheap", 0.1, "5")], []]]
    out = compute_components(parsed, [SCORE_ONLY], replies, protocol="single_call", answer_metric="score",
                             model_names=MODELS)
    expected = np.array([
        [1, 0.5, 0.5, 1 - 0.2 / 0.5, BAL["mid"]],
        [1, 1.0, 1.0, 0.0, BAL["big"]],
        [0, 0.0, 0.0, 1 - 0.1 / 0.5, BAL["cheap"]],
        [0, 0, 0, 1, 0],
    ], np.float32)
    np.testing.assert_allclose(route_and_balance(out, 0.5)[0], expected, atol=1e-6)


def test_single_call_em_on_reply_text():
    parsed = [[parse("<search>mid</search>", MODELS, protocol="single_call")]]
    out = compute_components(parsed, [REC], [[[("mid", 0.2, "It is Paris.")]]], protocol="single_call",
                             answer_metric="em", model_names=MODELS)
    # EM of 'it is paris' vs golds = 0, sub-EM (info) = 1 (REC has responses, so not score-only)
    np.testing.assert_allclose(out.stateless_ugk[0, 0], [1, 0, 1])


def test_route_and_balance_from_the_facts_against_loops():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 3, size=(4, 5, 3)).astype(np.int32)
    valid = rng.uniform(size=(4, 5)) < 0.8
    freq = rng.dirichlet(np.ones(3)).astype(np.float32)
    got = np.asarray(balance_reward(counts, valid, freq))
    for u in range(4):
        for g in range(5):
            calls = [m for m in range(3) for _ in range(counts[u, g, m])]
            want = np.mean([np.clip(1 - 3 * freq[m], -1, 1) for m in calls]) if calls and valid[u, g] else 0.0
            assert got[u, g] == pytest.approx(want, abs=1e-6)
    cost = rng.uniform(0, 2, size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(route_reward_linear(cost, 1.0), [[1 - min(c, 1) for c in row] for row in cost],
                               atol=1e-6)


def test_bad_inputs():
    parsed = [[parse(mt([], "x"), MODELS)]]
    kw = dict(protocol="multi_turn", answer_metric="em", model_names=MODELS)
    with pytest.raises(ValueError, match="not valid for protocol"):
        compute_components(parsed, [REC], [[[]]], **{**kw, "answer_metric": "score"})
    with pytest.raises(ValueError, match="cost must be finite"):
        compute_components(parsed, [REC], [[[("cheap", float("nan"), "x")]]], **kw)
    with pytest.raises(ValueError, match="unknown model"):
        compute_components(parsed, [REC], [[[("ghost", 0.1, "x")]]], **kw)
    with pytest.raises(ValueError, match="records"):
        compute_components(parsed, [REC, REC], [[[]]], **kw)
    with pytest.raises(ValueError, match="no logged score"):
        rec = dataclasses.replace(SCORE_ONLY, scores={"cheap": 1.0})
        compute_components([[parse("<search>mid</search>", MODELS, protocol="single_call")]], [rec],
                           [[[("mid", 0.1, "4")]]], **{**kw, "protocol": "single_call", "answer_metric": "score"})


def test_default_cost_ref():
    models = {m: ModelInfo(m, p, p) for m, p in zip(MODELS, (0.1, 1.0, 4.0))}
    recs = [dataclasses.replace(REC, id=f"r{i}", costs={"cheap": 0.01, "mid": 0.2 * i, "big": 0.1}) for i in range(3)]
    log = RoutingLog(records=recs, models=models, datasets=("d",))
    assert default_cost_ref(log) == pytest.approx(max(0.01, (0 + 0.2 + 0.4) / 3, 0.1))


def test_router_r1_route_rule_from_the_facts():
    parsed = [[parse(mt([("cheap", "q")], "Paris"), MODELS), parse(mt([("big", "q")], "Paris"), MODELS)]]
    replies = [[[("cheap", 0.01, "Lyon")], [("big", 0.04, "paris")]]]
    out = compute_components(parsed, [REC], replies, protocol="multi_turn", answer_metric="em", model_names=MODELS)
    route, window = route_reward_router_r1(out.cost_ug, out.valid_ug, init_route_window(10))
    # rollout 1 alone in the window: percentiles coincide -> 0.5; rollout 2 is the window's
    # most expensive of two -> x above the 95% point -> 0.
    np.testing.assert_allclose(route[0], [0.5, 0.0], atol=1e-6)
    assert int(window.size) == 2


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(
    st.lists(st.lists(st.lists(st.tuples(st.sampled_from(MODELS), st.floats(0, 5)), max_size=3), min_size=1, max_size=3),
             min_size=1, max_size=3),
    st.sampled_from(["em", "f1"]),
)
def test_ranges_and_finiteness(groups, metric):
    parsed, replies, records = [], [], []
    for group in groups:
        parsed.append([parse(mt([(m, "q") for m, _ in calls], "paris"), MODELS) for calls in group])
        replies.append([[(m, c, "paris") for m, c in calls] for calls in group])
        records.append(REC)
    out = compute_components(parsed, records, replies, protocol="multi_turn", answer_metric=metric,
                             model_names=MODELS)
    r = route_and_balance(out, 2.0)
    assert np.all(np.isfinite(r))
    assert np.all((r[..., :4] >= 0) & (r[..., :4] <= 1)) and np.all(np.abs(r[..., 4]) <= 1)
    assert np.all(r[~out.valid_ug] == 0)
    np.testing.assert_array_equal(out.call_counts_ugm.sum(-1)[out.valid_ug],
                                  [len(calls) for group in groups for calls in group])
