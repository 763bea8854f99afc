"""Trained classical reference routers (kNN, linear, softmax) against hand-built logs and
independent references."""

from __future__ import annotations

import math
import zlib

import chex
import numpy as np
import pytest

from launch.configs.base import SHARED_DATA
from recal_jax.data.schema import ModelInfo, RoutingLog, RoutingRecord
from recal_jax.evaluation import classical_routers as cr
from recal_jax.evaluation.reference_routers import reference_routers
from recal_jax.evaluation.router_result import score_and_cost_matrices

WORDS = {"alpha": "a", "beta": "b", "gamma": "c"}  # the word in the question -> the only right model
FILLER = [f"w{i}" for i in range(5000)]  # rare filler words: the similarity is the key word's


def _word_log(n: int, seed: int, costs=None, name="log") -> RoutingLog:
    """Each question holds one of WORDS among 2 random filler words; only WORDS[word] scores 1."""
    rng = np.random.default_rng(seed)
    costs = costs or {"a": 3.0, "b": 1.0, "c": 0.5}
    models = {m: ModelInfo(m) for m in ("a", "b", "c")}
    records = []
    for i in range(n):
        word = list(WORDS)[i % 3]
        text = list(rng.choice(FILLER, size=2)) + [word]
        rng.shuffle(text)
        scores = {m: float(m == WORDS[word]) for m in models}
        records.append(RoutingRecord(f"{name}{i}", "d0", " ".join(text), ("x",), scores, costs=dict(costs)))
    return RoutingLog(records, models, ("d0",), name=name)


def _oracle(log: RoutingLog) -> float:
    return float(np.mean([max(r.scores.values()) for r in log.records]))


SMALL = cr.ClassicalConfig(num_features=4096, k_grid=(1, 3, 5), l2_grid=(1e-3, 1e-2), max_iter=60)


def test_every_router_learns_the_word_rule():
    train, test = _word_log(60, 0, name="train"), _word_log(30, 1, name="test")
    out = cr.classical_routers(train, test, config=SMALL)
    assert set(out) == {"knn", "linear", "softmax"}
    assert _oracle(test) == 1.0
    for key, result in out.items():
        assert result.accuracy >= 0.95, (key, result.accuracy)
        assert result.lambda_sweep[0] == (0.0, pytest.approx(result.cost_per_query), pytest.approx(result.accuracy))
        assert [p[0] for p in result.lambda_sweep] == list(SMALL.lambdas)
    # near-oracle routing sends each word to its model: a third of the questions each
    assert out["knn"].route_share == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, abs=0.05)


def test_lambda_sweep_cost_is_non_increasing():
    train, test = _word_log(60, 2, name="train"), _word_log(30, 3, name="test")
    out = cr.classical_routers(train, test, config=SMALL)
    for key, result in out.items():
        costs = [c for _, c, _ in result.lambda_sweep]
        assert all(b <= a + 1e-12 for a, b in zip(costs, costs[1:])), (key, costs)
        assert costs[-1] < costs[0]  # lambda = 2 prices the 3.0 model out: the sweep moves


@pytest.mark.parametrize("seed", range(5))
def test_route_cost_per_question_is_non_increasing_in_lambda(seed):
    rng = np.random.default_rng(seed)
    pred_qm = rng.integers(0, 4, size=(200, 5)) / 3.0  # many exact ties
    cost_m = rng.choice([0.1, 0.5, 0.5, 1.0], size=5)
    lambdas = np.linspace(0, 3, 31)
    chosen_cost_lq = np.stack([cost_m[cr.route(pred_qm, cost_m, lam)] for lam in lambdas])
    chex.assert_shape(chosen_cost_lq, (31, 200))
    assert (np.diff(chosen_cost_lq, axis=0) <= 0).all()
    # independent rule: at every lambda no model has a higher utility, nor the same utility and a lower cost
    for lam, choice in ((0.7, cr.route(pred_qm, cost_m, 0.7)), (0.0, cr.route(pred_qm, cost_m, 0.0))):
        for q in range(200):
            util = [pred_qm[q, m] - lam * cost_m[m] for m in range(5)]
            best = max(util)
            ties = [m for m in range(5) if util[m] >= best - 1e-9]
            assert choice[q] == min(ties, key=lambda m: (cost_m[m], m))


def test_lambda_zero_picks_the_best_model_whatever_its_cost():
    pred_qm = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.25]])
    cost_m = np.array([1e9, 1.0, 0.0])
    assert cr.route(pred_qm, cost_m, 0.0).tolist() == [0, 1]
    assert cr.route(pred_qm, cost_m, 1e-9).tolist() == [1, 1]  # a price of 1 on model 0 moves question 0
    huge = {"a": 100.0, "b": 1.0, "c": 0.5}  # 100 USD: the dearest call a log may hold (schema)
    train, test = _word_log(60, 4, costs=huge, name="train"), _word_log(30, 5, costs=huge, name="test")
    out = cr.classical_routers(train, test, config=SMALL)
    for key, result in out.items():
        assert result.route_share["a"] == pytest.approx(1 / 3, abs=0.05), key  # the alpha questions
        assert result.accuracy >= 0.95, key
        lam, cost, acc = result.lambda_sweep[-1]  # lambda = 2 x the largest cost: a is never worth it
        assert cost < 1.0 and acc == pytest.approx(2 / 3, abs=0.05)


def test_bad_logs_are_clear_errors():
    train, test = _word_log(12, 0, name="train"), _word_log(6, 1, name="test")
    with pytest.raises(ValueError, match="train log 'empty' is empty"):
        cr.classical_routers(train.subset([], name="empty"), test, config=SMALL)
    with pytest.raises(ValueError, match="test log 'empty' is empty"):
        cr.classical_routers(train, test.subset([], name="empty"), config=SMALL)
    records = [RoutingRecord("0", "d0", "q", ("x",), {"a": 1.0}), RoutingRecord("1", "d0", "r", ("x",), {"a": 0.0})]
    one = RoutingLog(records, {"a": ModelInfo("a")}, ("d0",), name="one")
    with pytest.raises(ValueError, match=">= 2 models"):
        cr.classical_routers(one, one, config=SMALL)
    other = RoutingLog(test.records, {"c": ModelInfo("c"), "b": ModelInfo("b"), "a": ModelInfo("a")}, ("d0",))
    with pytest.raises(ValueError, match="pools differ"):
        cr.classical_routers(train, other, config=SMALL)
    with pytest.raises(ValueError, match="lambdas"):
        cr.ClassicalConfig(lambdas=(0.1, 0.2))
    with pytest.raises(ValueError, match="kind"):
        cr.fit_linear(cr.featurize(train, test, SMALL)[0], np.zeros((12, 3)), 0.1, "ridge", SMALL)


def _brute_force_knn(train_texts, train_scores, query_text, k):
    """Cosine similarity on raw word counts weighted by the smoothed idf, written out by hand."""
    docs = [t.split() for t in train_texts]
    df = {w: sum(w in d for d in docs) for d in docs for w in d}
    idf = lambda w: math.log((1 + len(docs)) / (1 + df.get(w, 0))) + 1  # noqa: E731

    def vec(words):
        v = {w: (1 + math.log(words.count(w))) * idf(w) for w in set(words)}
        norm = math.sqrt(sum(x * x for x in v.values()))
        return {w: x / norm for w, x in v.items()}

    q = vec(query_text.split())
    sims = [sum(q.get(w, 0.0) * x for w, x in vec(d).items()) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: (-round(sims[i], 6), i))[:k]
    return [sum(train_scores[i][m] for i in order) / k for m in range(len(train_scores[0]))]


def test_knn_matches_a_brute_force_reference():
    texts = ["red apple", "green apple pie", "red car", "fast red car", "apple", "blue sky", "red red apple"]
    scores = [[1, 0], [1, 1], [0, 1], [0, 1], [1, 0], [0, 0], [1, 1]]
    queries = ["red apple pie", "car", "sky blue sky", "nothing known"]
    models = {"m0": ModelInfo("m0"), "m1": ModelInfo("m1")}

    def mk(texts_, sc, name):
        records = [RoutingRecord(f"{name}{i}", "d", t, ("x",), {"m0": s[0], "m1": s[1]})
                   for i, (t, s) in enumerate(zip(texts_, sc))]
        return RoutingLog(records, models, ("d",), name=name)

    config = cr.ClassicalConfig(num_features=1 << 20)  # no hash collisions among these words
    words = {w for t in texts + queries for w in t.split()}
    assert len({zlib.crc32(w.encode()) % config.num_features for w in words}) == len(words)
    x_train, x_query = cr.featurize(mk(texts, scores, "t"), mk(queries, [[0, 0]] * 4, "q"), config)
    chex.assert_shape(x_train, (7, config.num_features))
    np.testing.assert_allclose(np.asarray(x_train.multiply(x_train).sum(1)).ravel(), 1.0, rtol=1e-6)
    for k in (1, 2, 3, 7):
        order = cr.neighbour_order(x_query, x_train, k)
        got = cr.knn_predictions(order, np.array(scores, float), [k])[k]
        want = [_brute_force_knn(texts, scores, q, k) for q in queries]
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"k={k}")


def test_linear_objective_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    train = _word_log(9, 0)
    x_nf = cr.featurize(train, train, cr.ClassicalConfig(num_features=16))[0].astype(np.float64)
    soft = rng.uniform(size=(9, 3))
    onehot = cr.softmax_targets(rng.integers(0, 2, size=(9, 3)).astype(float), np.ones((9, 3)))
    for kind, target in (("logistic", soft), ("softmax", onehot)):
        theta = rng.normal(size=16 * 3 + 3)
        _, grad = cr._linear_objective(theta, x_nf, target, 0.3, kind)
        eps = 1e-6
        for i in rng.choice(len(theta), size=12, replace=False):
            e = np.zeros_like(theta)
            e[i] = eps
            num = (cr._linear_objective(theta + e, x_nf, target, 0.3, kind)[0]
                   - cr._linear_objective(theta - e, x_nf, target, 0.3, kind)[0]) / (2 * eps)
            assert grad[i] == pytest.approx(num, rel=1e-4, abs=1e-7), (kind, i)


def test_fit_linear_reaches_the_optimum():
    # both objectives are convex, so a point of (near) zero gradient is their minimum
    train = _word_log(60, 0, name="train")
    x_nf = cr.featurize(train, train, SMALL)[0]
    scores, costs = score_and_cost_matrices(train)
    for kind, target in (("logistic", scores), ("softmax", cr.softmax_targets(scores, costs))):
        for l2 in SMALL.l2_grid:
            w_fm, b_m = cr.fit_linear(x_nf, target, l2, kind, SMALL)
            theta = np.concatenate([w_fm.ravel(), b_m])
            loss, grad = cr._linear_objective(theta, x_nf.astype(np.float64), target, l2, kind)
            assert np.abs(grad).max() < 1e-5, (kind, l2)
            assert loss < cr._linear_objective(np.zeros_like(theta), x_nf.astype(np.float64), target, l2, kind)[0]


def test_labels_are_the_cheapest_best_model_and_ties_everywhere_are_left_out():
    scores = np.array([[1, 1, 0], [0, 0, 0], [0.5, 0.2, 0.5], [1, 1, 1]])
    costs = np.array([[3, 1, 2], [3, 1, 2], [1, 1, 2], [3, 1, 2]], float)
    assert cr.best_model_labels(scores, costs).tolist() == [1, 1, 0, 1]
    np.testing.assert_array_equal(cr.softmax_targets(scores, costs),
                                  [[0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])


def test_reference_routers_with_the_train_split():
    train, test = _word_log(60, 6, name="train"), _word_log(30, 7, name="test")
    refs = reference_routers(test, train, classical_config=SMALL)
    assert {"knn", "linear", "softmax", "random", "oracle", "best_single"} <= set(refs)
    assert refs["knn"].name.startswith("knn (k=") and refs["knn"].to_json()["lambda_sweep"]
    assert "knn" not in reference_routers(test)
    # best_single comes from the train split: make the test split disagree with it
    flip = test.subset([r for r in test.records if r.scores["c"] == 1.0] + list(test.records[:2]))
    assert reference_routers(flip)["best_single"].name == "best_single (c)"
    train_best = max("abc", key=lambda m: np.mean([r.scores[m] for r in train.records]))
    assert reference_routers(flip, train, classical_config=SMALL)["best_single"].name == f"best_single ({train_best})"


def test_deterministic_given_the_seed():
    train, test = _word_log(45, 8, name="train"), _word_log(15, 9, name="test")
    a = cr.classical_routers(train, test, seed=3, config=SMALL)
    b = cr.classical_routers(train, test, seed=3, config=SMALL)
    assert {k: v.to_json() for k, v in a.items()} == {k: v.to_json() for k, v in b.items()}


DCROUTER = SHARED_DATA / "llmrouter"


@pytest.mark.slow
@pytest.mark.skipif(not (DCROUTER / "dcrouter_train.json").is_file(),
                    reason=f"dcrouter data not found at {DCROUTER} (shared data absent)")
def test_dcrouter_classical_routers_beat_the_best_single_model():
    from recal_jax.data.loaders import load_dcrouter

    suite = load_dcrouter(SHARED_DATA)
    refs = reference_routers(suite.test, suite.train)
    best_single = refs["best_single"]
    assert best_single.accuracy == pytest.approx(0.563, abs=1e-3)
    assert refs["linear"].accuracy > best_single.accuracy
    assert refs["knn"].accuracy > 0.55
    for key in cr.CLASSICAL_NAMES:
        costs = [c for _, c, _ in refs[key].lambda_sweep]
        assert all(b <= a + 1e-15 for a, b in zip(costs, costs[1:])), key
