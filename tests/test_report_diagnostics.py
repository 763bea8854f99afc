"""experiments/report_diagnostics.py against hand-computed cases."""

from __future__ import annotations

import dataclasses
import math

import pytest
from scipy import stats

from experiments import report_diagnostics as rd


@dataclasses.dataclass
class _Run:
    preset: str
    route_weight: float | None
    seed: int
    summary: dict
    train_rows: list


def _rows(answer, cost, std=1.0, informative=(1.0,), wmin=1.0, wmax=1.0, decomposed=True):
    out = []
    for i, (a, c) in enumerate(zip(answer, cost)):
        row = {"reward/answer": a, "cost_per_rollout": c,
               "calibration/informative_frac": informative[i % len(informative)],
               "calibration/weight_min": wmin - 0.1 * i, "calibration/weight_max": wmax + 0.1 * i}
        for k in range(5 if decomposed else 1):
            row[f"calibration/adv_std_k/{k}"] = std
        out.append(row)
    return out


def test_run_diagnostics_hand_computed():
    d = rd.run_diagnostics("recal", None, _rows([0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 2, 2],
                                                informative=(0.5, 1.0), wmin=0.8, wmax=1.5))
    # recal weights (format 0.5, answer 1, info 0.25, route 0.25, balance 0.1), all stds 1
    assert d["aux_share"] == pytest.approx((0.0625 + 0.0625 + 0.01) / (0.25 + 1 + 0.0625 + 0.0625 + 0.01))
    assert d["answer_gain"] == pytest.approx(1.0)  # last third mean 1, first third 0
    assert d["cost_ratio"] == pytest.approx(2.0)
    assert d["informative"] == pytest.approx(0.75)
    assert d["weight_min"] == pytest.approx(0.8 - 0.5) and d["weight_max"] == pytest.approx(1.5 + 0.5)
    assert d["adv_std"] == [1.0] * 5


def test_route_weight_changes_the_aux_share_and_scalar_presets_have_none():
    d = rd.run_diagnostics("recal", 1.0, _rows([0, 1, 1], [1, 1, 1]))
    assert d["aux_share"] == pytest.approx((0.0625 + 1 + 0.01) / (0.25 + 1 + 0.0625 + 1 + 0.01))
    scalar = rd.run_diagnostics("grpo", None, _rows([0, 1, 1], [1, 1, 1], decomposed=False))
    assert scalar["aux_share"] is None and scalar["adv_std"] == [1.0]
    empty = rd.run_diagnostics("grpo", None, [])
    assert empty["answer_gain"] is None and empty["cost_ratio"] is None and empty["informative"] is None


def test_paired_differences_match_a_t_interval():
    runs = [_Run("grpo", None, 0, {"policy": {"accuracy": 0.4}, "sft_policy": {"accuracy": 0.3}}, []),
            _Run("grpo", None, 1, {"policy": {"accuracy": 0.5}, "sft_policy": {"accuracy": 0.3}}, []),
            _Run("recal", None, 0, {"policy": {"accuracy": 0.5}, "sft_policy": {"accuracy": 0.3}}, []),
            _Run("recal", None, 1, {"policy": {"accuracy": 0.7}, "sft_policy": {"accuracy": 0.3}}, [])]
    groups = {}
    for r in runs:
        groups.setdefault((r.preset, r.route_weight), []).append(r)
    rows = rd.aggregate_diagnostics(groups, label=lambda p, w: p)
    recal = next(r for r in rows if r["label"] == "recal")
    diffs = [0.1, 0.2]
    sd = math.sqrt(sum((x - 0.15) ** 2 for x in diffs) / 1)
    assert recal["vs_grpo"]["mean"] == pytest.approx(0.15)
    assert recal["vs_grpo"]["ci95_half"] == pytest.approx(stats.t.ppf(0.975, 1) * sd / math.sqrt(2))
    assert recal["vs_start"]["mean"] == pytest.approx(0.3) and recal["vs_start"]["n"] == 2
    grpo = next(r for r in rows if r["label"] == "grpo")
    assert grpo["vs_grpo"] is None and recal["vs_recal"] is None
    assert grpo["vs_recal"]["mean"] == pytest.approx(-0.15)
    table = rd.diagnostics_table(rows)
    assert "+0.150 ±" in table and table.count("\n") == 3
