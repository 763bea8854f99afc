"""experiments/matched_cost.py: fronts and accuracy at matched cost, by hand and against a
brute-force optimum over mixtures of two routers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from experiments import matched_cost as mc


def test_front_by_hand():
    pts = [(1, 0.5), (2, 0.6), (3, 0.9), (4, 0.85), (2.5, 0.55), (1, 0.4)]
    # Pareto: (1, .5), (2, .6), (3, .9); (2, .6) lies under the chord (1, .5)-(3, .9) (0.7 at cost 2)
    assert mc.front(pts) == [(1.0, 0.5), (3.0, 0.9)]
    assert mc.accuracy_at_costs(pts, [0.5, 1, 2, 2.5, 3, 10]) == [None, 0.5, pytest.approx(0.7), pytest.approx(0.8),
                                                                   0.9, 0.9]
    assert mc.front([(0, 0), (1, 0.6), (2, 0.8)]) == [(0.0, 0.0), (1.0, 0.6), (2.0, 0.8)]  # concave: kept
    assert mc.accuracy_at_costs([(0, 0), (1, 0.6), (2, 0.8)], [1.5]) == [pytest.approx(0.7)]
    assert mc.front([(0, 0), (1, 0.5), (2, 1)]) == [(0.0, 0.0), (2.0, 1.0)]  # collinear middle point dropped
    assert mc.front([(1, 0.5), (2, 0.5)]) == [(1.0, 0.5)]  # dearer and no better: not on the front
    assert mc.accuracy_at_costs([(2, 0.5)], [1, 2, 5]) == [None, 0.5, 0.5]


def test_bad_points_are_clear_errors():
    for bad in ([], [(1, float("nan"))], [(-1, 0.5)], [(float("inf"), 0.5)]):
        with pytest.raises(ValueError, match="front"):
            mc.front(bad)
    with pytest.raises(ValueError, match="best single"):
        mc.level_costs(0.0)
    with pytest.raises(ValueError, match="at least one"):
        mc.matched_cost_row({}, [1.0])


def _best_mixture(points, budget):
    """Brute force: the best accuracy of a random mixture of at most two of the points with an
    expected cost <= budget (a linear program with one constraint: two points suffice)."""
    best = None
    for ci, ai in points:
        if ci > budget:
            continue
        value = ai
        for cj, aj in points:
            if cj > budget:  # spend the rest of the budget on the dearer point j
                value = max(value, ai + (aj - ai) * (budget - ci) / (cj - ci))
            else:
                value = max(value, aj)
        best = value if best is None else max(best, value)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_front_matches_the_best_mixture(seed):
    rng = np.random.default_rng(seed)
    points = [(float(c), float(a)) for c, a in zip(rng.uniform(0, 1, 7), rng.uniform(0, 1, 7))]
    for budget in np.linspace(-0.1, 1.2, 27):
        got = mc.accuracy_at(mc.front(points), float(budget))
        want = _best_mixture(points, float(budget))
        assert (got is None) == (want is None), budget
        if want is not None:
            assert got == pytest.approx(want, abs=1e-12), budget


def test_matched_cost_row_over_seeds_by_hand():
    by_seed = {0: [(1, 0.5), (3, 0.9)], 1: [(1, 0.6), (3, 0.8)], 2: [(2, 0.7)]}
    row = mc.matched_cost_row(by_seed, [1.5, 2.0, 3.0])
    # seed 0: .6, .7, .9; seed 1: .65, .7, .8; seed 2: none at 1.5, then .7, .7
    assert row[0]["n"] == 2 and row[0]["seeds"] == [0, 1] and row[0]["mean"] == pytest.approx(0.625)
    half = stats.t.ppf(0.975, 1) * np.std([0.6, 0.65], ddof=1) / math.sqrt(2)
    assert row[0]["ci95_half"] == pytest.approx(half)
    assert row[1]["mean"] == pytest.approx(0.7) and row[1]["ci95_half"] == pytest.approx(0.0, abs=1e-12)
    assert row[2]["mean"] == pytest.approx(0.8)
    assert row[2]["ci95_half"] == pytest.approx(stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    assert mc.matched_cost_row({0: [(5, 0.5)]}, [1.0]) == [{"mean": None, "ci95_half": None, "n": 0, "seeds": []}]
    assert mc.level_costs(0.2) == pytest.approx([0.1, 0.14, 0.2])


def test_mean_front_averages_the_seeds_fronts():
    xs, ys = mc.mean_front({0: [(1, 0.5), (3, 0.9)], 1: [(2, 0.6), (3, 0.7)]}, num=3)
    assert xs == [2.0, 2.5, 3.0]  # from where every front is defined
    assert ys == pytest.approx([(0.7 + 0.6) / 2, (0.8 + 0.65) / 2, (0.9 + 0.7) / 2])
