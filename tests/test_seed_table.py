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
