"""Reference routers on a hand-made log whose answers are worked out by hand below."""
import pytest

from recal_jax.data.schema import ModelInfo, RoutingLog, RoutingRecord
from recal_jax.evaluation.reference_routers import reference_routers


def _log():
    models = {"a": ModelInfo("a"), "b": ModelInfo("b"), "c": ModelInfo("c")}
    rec = lambda i, d, s, c: RoutingRecord(str(i), d, f"q{i}", ("x",), s, costs=c)
    records = [
        rec(0, "d0", {"a": 1, "b": 1, "c": 0}, {"a": 3.0, "b": 1.0, "c": 0.5}),
        rec(1, "d0", {"a": 0, "b": 0, "c": 0}, {"a": 3.0, "b": 1.0, "c": 0.5}),
        rec(2, "d1", {"a": 1, "b": 0, "c": 1}, {"a": 3.0, "b": 1.0, "c": 0.5}),
        rec(3, "d1", {"a": 1, "b": 0, "c": 0}, {"a": 3.0, "b": 1.0, "c": 0.5}),
    ]
    return RoutingLog(records, models, ("d0", "d1"))


def test_reference_routers_by_hand():
    r = reference_routers(_log())
    # random: per-question mean scores 2/3, 0, 2/3, 1/3 -> mean 5/12; cost per query (3+1+.5)/3 = 1.5
    assert r["random"].accuracy == pytest.approx(5 / 12)
    assert r["random"].cost_per_query == pytest.approx(1.5)
    # single models: a 3/4, b 1/4, c 1/4
    assert r["single:a"].accuracy == pytest.approx(0.75)
    assert r["single:a"].per_dataset == {"d0": pytest.approx(0.5), "d1": pytest.approx(1.0)}
    assert r["best_single"].accuracy == pytest.approx(0.75)
    assert r["best_single"].name.endswith("(a)")
    # oracle: 1, 0, 1, 1 -> 3/4, picks a, a (all zero -> first), a, a -> cost 12
    assert r["oracle"].accuracy == pytest.approx(0.75)
    assert r["oracle"].cost_total == pytest.approx(12.0)
    # cheapest correct: b (1.0), c (0.5, none correct -> cheapest), c (0.5), a (3.0)
    assert r["cheapest_correct"].accuracy == pytest.approx(0.75)
    assert r["cheapest_correct"].cost_total == pytest.approx(5.0)
    assert r["cheapest_correct"].route_share == {"a": 0.25, "b": 0.25, "c": 0.5}


def test_empty_log_is_a_clear_error():
    log = _log().subset([], name="empty")
    with pytest.raises(ValueError, match="empty"):
        reference_routers(log)


def test_best_single_is_chosen_on_the_train_split():
    test = _log()
    # on train, c is right everywhere: best_single is c, reported with c's test numbers (1/4, cost 0.5)
    train = RoutingLog([RoutingRecord(f"t{i}", "d0", f"train question {i}", ("x",), {"a": 0, "b": 0, "c": 1},
                                      costs={"a": 3.0, "b": 1.0, "c": 0.5}) for i in range(6)],
                       test.models, ("d0", "d1"), name="train")
    r = reference_routers(test, train)
    assert r["best_single"].name == "best_single (c)"
    assert r["best_single"].accuracy == pytest.approx(0.25) and r["best_single"].cost_per_query == pytest.approx(0.5)
    assert {"knn", "linear", "softmax"} <= set(r)
    assert reference_routers(test)["best_single"].name == "best_single (a)"  # hindsight on the test split
    with pytest.raises(ValueError, match="empty"):
        reference_routers(test, train.subset([], name="empty"))


def test_one_model_pool_has_no_classical_routers():
    one = RoutingLog([RoutingRecord(str(i), "d0", f"q{i}", ("x",), {"a": i % 2}) for i in range(4)],
                     {"a": ModelInfo("a")}, ("d0",))
    assert set(reference_routers(one, one)) == {"random", "single:a", "best_single", "oracle", "cheapest_correct"}


def test_results_table_lists_the_classical_routers():
    from recal_jax.evaluation.evaluate import results_table

    test = _log()
    refs = reference_routers(test, test)
    policy = {"accuracy": 0.5, "per_dataset": {"d0": 0.5}, "cost_per_query": 1.0, "format_valid": 1.0}
    lines = results_table(policy, refs, test.datasets, "policy").splitlines()
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    assert labels[:5] == ["policy", "random", "best_single (a)", "oracle", "cheapest_correct"]
    assert [label.split(" ")[0] for label in labels[5:8]] == ["knn", "linear", "softmax"]
    assert labels[8:] == ["single:a", "single:b", "single:c"]
    knn = next(line for line in lines if line.startswith("| knn"))
    assert f"| {refs['knn'].accuracy:.3f} |" in knn
