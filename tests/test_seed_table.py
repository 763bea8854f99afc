"""The per-seed table of main-job runs: numbers from summary.json, hand-checked promises."""
import json
import math

import pytest

from experiments import seed_table


def _summary(router, sft, best, random, fmt=1.0):
    refs = {"best_single": {"accuracy": best}, "random": {"accuracy": random}, "oracle": {"accuracy": 0.9}}
    return {"policy": {"accuracy": router, "format_valid": fmt, "cost_per_query": 1e-5},
            "sft_policy": {"accuracy": sft}, "references": refs, "timings": {"total_seconds": 300.0}}


def test_promises_by_hand():
    ok = seed_table.promise_checks(seed_table.seed_row(_summary(0.62, 0.60, 0.62, 0.4)))
    assert ok == {"> random": True, ">= best single": True, ">= SFT + 0.02": True, "format >= 0.95": True}
    bad = seed_table.promise_checks(seed_table.seed_row(_summary(0.61, 0.60, 0.62, 0.7, fmt=0.9)))
    assert bad == {"> random": False, ">= best single": False, ">= SFT + 0.02": False, "format >= 0.95": False}


def test_table_reads_runs_and_aggregates(tmp_path):
    for seed, acc in ((0, 0.6), (3, 0.7)):
        (tmp_path / f"seed-{seed}").mkdir()
        (tmp_path / f"seed-{seed}" / "summary.json").write_text(json.dumps(_summary(acc, 0.4, 0.55, 0.4)))
    rows = seed_table.read_runs(tmp_path)
    assert sorted(rows) == [0, 3]
    table = seed_table.seed_table(rows).splitlines()
    assert len(table) == 2 + 2 + 2
    mean = table[-2].split("|")
    assert mean[1].strip() == "mean" and math.isclose(float(mean[2]), 0.65)
    assert table[-1].split("|")[2].strip() == "0.600"
    with pytest.raises(ValueError, match="no runs"):
        seed_table.seed_table({})


def _compose_summary(router, sft, linear, multi, oracle_multi, fmt=1.0):
    group = lambda acc, refs: {"accuracy": acc, "calls_per_question": 2.0, "multi_call_share": 1.0,  # noqa: E731
                               "references": refs}
    refs = {"linear": {"accuracy": linear}, "best_single": {"accuracy": 0.7}}
    return {"policy": {"accuracy": router, "format_valid": fmt, "cost_per_query": 1e-5},
            "sft_policy": {"accuracy": sft}, "references": refs, "timings": {"total_seconds": 600.0},
            "multi_turn": {"multi_hop": group(multi, {"oracle": oracle_multi, "decomposer_best_per_hop": 0.9}),
                           "one_hop": group(0.9, {"oracle": 1.0})}}


def test_compose_goals_by_hand():
    ok = seed_table.compose_checks(seed_table.compose_row(_compose_summary(0.80, 0.70, 0.74, 0.70, 0.65)))
    assert ok == {"multi-hop > oracle": True, "> linear": True, ">= SFT + 0.05": True, "format >= 0.95": True}
    bad = seed_table.compose_checks(seed_table.compose_row(_compose_summary(0.74, 0.70, 0.74, 0.65, 0.65, fmt=0.9)))
    assert bad == {"multi-hop > oracle": False, "> linear": False, ">= SFT + 0.05": False, "format >= 0.95": False}


def test_compose_table_has_its_columns(tmp_path):
    (tmp_path / "seed-0").mkdir()
    (tmp_path / "seed-0" / "summary.json").write_text(json.dumps(_compose_summary(0.8, 0.7, 0.74, 0.7, 0.65)))
    table = seed_table.seed_table(seed_table.read_runs(tmp_path, "compose"), "compose").splitlines()
    header = [c.strip() for c in table[0].split("|")[1:-1]]
    assert header[:2] == ["seed", "router"] and "multi_hop_oracle" in header and "multi-hop > oracle" in header


def _routing_summary(router, cost, best=0.56, best_cost=2e-4):
    # the linear router's lambda sweep: (lambda, cost, accuracy); its front at cost 1e-4 is, by hand,
    # halfway along the hull segment (0.5e-4, 0.50) -> (1.5e-4, 0.60): 0.55
    sweep = [[0.0, 1.5e-4, 0.60], [0.1, 1.0e-4, 0.52], [0.5, 0.5e-4, 0.50]]
    refs = {"best_single": {"accuracy": best, "cost_per_query": best_cost},
            "linear": {"accuracy": 0.60, "cost_per_query": 1.5e-4, "lambda_sweep": sweep}}
    return {"policy": {"accuracy": router, "format_valid": 1.0, "cost_per_query": cost},
            "sft_policy": {"accuracy": 0.3}, "references": refs, "timings": {"total_seconds": 60.0}}


def test_routing_goals_by_hand():
    row = seed_table.routing_row(_routing_summary(0.585, 1e-4))
    assert math.isclose(row["linear_at_cost"], 0.55) and math.isclose(row["cost_share"], 0.5)
    assert seed_table.routing_checks(row) == {">= best single + 0.02": True, "cost <= 70%": True,
                                              ">= linear front - 0.03": True}
    # at 75% of the best single model's cost, and 0.025 below the linear front there (within 0.03)
    row = seed_table.routing_row(_routing_summary(0.575, 1.5e-4))
    assert seed_table.routing_checks(row) == {">= best single + 0.02": False, "cost <= 70%": False,
                                              ">= linear front - 0.03": True}
    row = seed_table.routing_row(_routing_summary(0.56, 1.5e-4))
    assert not seed_table.routing_checks(row)[">= linear front - 0.03"]
    # below the linear router's cheapest point its front is undefined: NaN, and the check fails (conservative)
    row = seed_table.routing_row(_routing_summary(0.5, 1e-5))
    assert math.isnan(row["linear_at_cost"]) and not seed_table.routing_checks(row)[">= linear front - 0.03"]
