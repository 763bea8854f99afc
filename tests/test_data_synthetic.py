"""The seeded synthetic suite and dataset-stratified batching."""

import collections

import numpy as np
import pytest

from recal_jax.data import RoutingLog, make_synthetic, random_split, stratified_batches
from recal_jax.data.synthetic import ACCURACY, FAMILIES, MODELS
from recal_jax.routing.answers import exact_match, normalize_answer, sub_exact_match


@pytest.fixture(scope="module")
def suite():
    return make_synthetic(seed=0, n_train_per_family=300, n_test_per_family=40)


def test_shape_and_determinism(suite):
    assert suite.train.datasets == FAMILIES and len(FAMILIES) == 7 and len(MODELS) == 6
    assert len(suite.train) == 7 * 300 and len(suite.test) == 7 * 40
    assert make_synthetic(seed=0, n_train_per_family=300, n_test_per_family=40) == suite
    other = make_synthetic(seed=1, n_train_per_family=300, n_test_per_family=40)
    assert [r.scores for r in other.train.records] != [r.scores for r in suite.train.records]
    assert suite.train.protocol == "multi_turn"


def test_small_surface_for_tiny_policies(suite):
    records = suite.train.records + suite.test.records
    answers = {r.golden_answers[0] for r in records}
    assert len(answers) < 200
    for r in records:
        assert len(r.question.split()) <= 12, r.question
        assert len(r.golden_answers) == 1 and len(r.golden_answers[0].split()) == 1
        for m, reply in r.responses.items():
            assert len(reply.split()) <= 4, reply
            # the score is the reply's correctness, and sub-EM reads it exactly
            assert sub_exact_match(reply, r.golden_answers) == r.scores[m], (r.question, m, reply)
            answer_word = reply.split()[-1]
            assert exact_match(answer_word, r.golden_answers) == r.scores[m]


def test_outcomes_keyed_by_question(suite):
    seen = {}
    for r in suite.train.records + suite.test.records:
        key = r.question
        if key in seen:
            assert seen[key] == (r.golden_answers, dict(r.scores), dict(r.responses))
        seen[key] = (r.golden_answers, dict(r.scores), dict(r.responses))
    train_q = {r.question for r in suite.train.records}
    assert not train_q & {r.question for r in suite.test.records}


def test_costs_follow_prices(suite):
    order = sorted(MODELS, key=lambda m: MODELS[m].price_in)
    for r in suite.train.records[:50]:
        costs = [r.costs[m] for m in order]
        assert all(c > 0 for c in costs)
        assert costs[0] < costs[-1]


def stats(log: RoutingLog):
    s = np.array([[r.scores[m] for m in MODELS] for r in log.records])
    return s.mean(0).max(), s.mean(), s.max(1).mean()


def test_routing_matters(suite):
    best, random, oracle = stats(suite.train)
    assert 0.53 <= best <= 0.67
    assert 0.35 <= random <= 0.47
    assert 0.80 <= oracle <= 0.92
    assert oracle - best > 0.15
    # the best model differs across families
    fam = np.array([r.dataset for r in suite.train.records])
    s = np.array([[r.scores[m] for m in MODELS] for r in suite.train.records])
    best_per_family = {f: int(s[fam == f].mean(0).argmax()) for f in FAMILIES}
    assert len(set(best_per_family.values())) >= 4


def test_marginal_accuracy_matches_table():
    big = make_synthetic(seed=3, n_train_per_family=1, n_test_per_family=55)  # distinct questions only
    fam = np.array([r.dataset for r in big.test.records])
    s = np.array([[r.scores[m] for m in MODELS] for r in big.test.records])
    diffs = [abs(s[fam == f, j].mean() - ACCURACY[f][j]) for f in FAMILIES for j in range(len(MODELS))]
    assert np.mean(diffs) < 0.06


def test_bad_sizes():
    with pytest.raises(ValueError, match="n_test_per_family"):
        make_synthetic(n_test_per_family=10_000)
    with pytest.raises(ValueError, match="n_train_per_family"):
        make_synthetic(n_train_per_family=0)


def test_stratified_batches_proportional(suite):
    log = suite.train.subset(suite.train.records[:300] + suite.train.records[600:700])  # 300 lookup, 100 arith
    it = stratified_batches(log, 10, np.random.default_rng(0))
    counts = collections.Counter()
    for _ in range(200):
        batch = next(it)
        assert len(batch) == 10
        c = collections.Counter(r.dataset for r in batch)
        # floor allocation: 7.5 -> 7 or 8 lookups, 2.5 -> 2 or 3 arith
        assert c["lookup"] in (7, 8) and c["arith"] in (2, 3)
        counts.update(c)
    assert counts["lookup"] / 2000 == pytest.approx(0.75, abs=0.03)


def test_stratified_batches_epochs_and_uniform(suite):
    log = suite.test  # 7 families x 40
    it = stratified_batches(log, 14, np.random.default_rng(1), weighting="uniform")
    seen = collections.Counter()
    for _ in range(20):  # 280 records = exactly one epoch: each record once
        batch = next(it)
        assert collections.Counter(r.dataset for r in batch) == {f: 2 for f in FAMILIES}
        seen.update(r.id for r in batch)
    assert len(seen) == 280 and set(seen.values()) == {1}
    a = [r.id for r in next(stratified_batches(log, 5, np.random.default_rng(7)))]
    b = [r.id for r in next(stratified_batches(log, 5, np.random.default_rng(7)))]
    assert a == b
    with pytest.raises(ValueError, match="batch_size"):
        next(stratified_batches(log, 0, np.random.default_rng(0)))


def test_random_split(suite):
    s = random_split(suite.train, 100, 50, seed=0)
    assert len(s.train) == 100 and len(s.test) == 50
    assert not {r.id for r in s.train.records} & {r.id for r in s.test.records}
    with pytest.raises(ValueError, match="cannot split"):
        random_split(suite.test, 200, 100, seed=0)


def test_vocab_normalises_cleanly(suite):
    for r in suite.test.records:
        assert normalize_answer(r.golden_answers[0]) != ""
