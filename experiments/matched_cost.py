"""Accuracy at matched cost: a router's accuracy-cost front and its accuracy at given costs.

A router gives a set of (cost per query, accuracy) points: the runs of one seed over the route
weight of a cost sweep, or a classical router's lambda sweep. Its front is the NON-DECREASING
UPPER CONCAVE ENVELOPE (upper convex hull) of those points, read as "the best accuracy reachable
with a cost per query of at most c":
- convex, because any point on the segment between two routers' points is reached by routing
  each query to one router or the other at random in the right proportion (expected cost and
  accuracy are linear in that proportion), so the hull is achievable, and nothing above it is;
  a monotone Pareto staircase or a piecewise-linear path through the Pareto points would
  understate what a mixture reaches, and would depend on which noisy points happen to exist;
- non-decreasing, because a budget of c allows any cheaper router: beyond the most accurate
  point the front stays flat at its accuracy;
- undefined (None) below the cheapest point: no mixture of the router's points costs less.
Accuracy at a level is then the linear interpolation between the two hull vertices around it.
Over seeds: one front per seed, its accuracy at each level, and the mean with the 95%
Student-t interval of `grid_stats.mean_ci95` over the seeds whose front reaches that level.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from experiments import grid_stats

LEVELS = (0.5, 0.7, 1.0)  # fractions of the best single model's cost per query


def _points(points: Iterable[Sequence[float]]) -> np.ndarray:
    pts_p2 = np.asarray([tuple(map(float, p)) for p in points], dtype=float).reshape(-1, 2)
    if len(pts_p2) == 0:
        raise ValueError("a front needs at least one (cost, accuracy) point")
    if not np.isfinite(pts_p2).all() or (pts_p2[:, 0] < 0).any():
        raise ValueError(f"front points must be finite with cost >= 0, got {pts_p2.tolist()}")
    return pts_p2


def front(points: Iterable[Sequence[float]]) -> list[tuple[float, float]]:
    """Vertices (cost, accuracy), cost and accuracy both strictly increasing, of the
    non-decreasing upper concave envelope of `points` (see the module docstring)."""
    pts = _points(points)
    order = np.lexsort((-pts[:, 1], pts[:, 0]))  # by cost, the most accurate first at equal cost
    pareto: list[tuple[float, float]] = []
    for c, a in pts[order]:
        if not pareto or a > pareto[-1][1]:  # strictly better than every cheaper point
            pareto.append((float(c), float(a)))
    hull: list[tuple[float, float]] = []
    for p in pareto:  # monotone chain: drop the last vertex while it lies on or below the chord
        while len(hull) >= 2:
            (c1, a1), (c2, a2) = hull[-2], hull[-1]
            if (a2 - a1) * (p[0] - c1) <= (p[1] - a1) * (c2 - c1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def accuracy_at(vertices: Sequence[tuple[float, float]], cost: float) -> float | None:
    """The front's accuracy at a cost per query: None below its cheapest vertex, the top
    accuracy beyond its last, else linear between the two vertices around `cost`."""
    if not vertices:
        raise ValueError("accuracy_at needs the vertices of a front")
    costs = [c for c, _ in vertices]
    if cost < costs[0]:
        return None
    return float(np.interp(cost, costs, [a for _, a in vertices]))


def accuracy_at_costs(points: Iterable[Sequence[float]], costs: Sequence[float]) -> list[float | None]:
    """accuracy_at of the front of `points` at each of `costs`."""
    vertices = front(points)
    return [accuracy_at(vertices, c) for c in costs]


def matched_cost_row(points_by_seed: Mapping[int, Sequence[Sequence[float]]], costs: Sequence[float]) -> list[dict]:
    """Per cost level: {"mean", "ci95_half", "n", "seeds"} over the seeds whose front reaches
    it (mean None when none does; ci95_half None with fewer than 2)."""
    if not points_by_seed:
        raise ValueError("matched_cost_row needs the points of at least one seed")
    per_seed = {seed: accuracy_at_costs(pts, costs) for seed, pts in sorted(points_by_seed.items())}
    out = []
    for i, _ in enumerate(costs):
        values = {seed: acc[i] for seed, acc in per_seed.items() if acc[i] is not None}
        mean, half = grid_stats.mean_ci95(values.values()) if values else (None, None)
        out.append({"mean": mean, "ci95_half": half, "n": len(values), "seeds": sorted(values)})
    return out


def level_costs(best_single_cost: float, levels: Sequence[float] = LEVELS) -> list[float]:
    """The cost levels: fractions of the best single model's cost per query."""
    if not (isinstance(best_single_cost, (int, float)) and math.isfinite(best_single_cost) and best_single_cost > 0):
        raise ValueError(f"the best single model's cost must be a positive number, got {best_single_cost!r}")
    return [float(f) * float(best_single_cost) for f in levels]


def mean_front(points_by_seed: Mapping[int, Sequence[Sequence[float]]],
               num: int = 50) -> tuple[list[float], list[float]]:
    """The pointwise mean over seeds of their fronts, on `num` costs from the largest of the
    seeds' cheapest costs (where every seed's front is defined) to the largest cost of any."""
    fronts = [front(p) for p in points_by_seed.values()]
    if not fronts:
        return [], []
    lo, hi = max(f[0][0] for f in fronts), max(f[-1][0] for f in fronts)
    grid = list(np.linspace(lo, hi, num)) if hi > lo else [lo]
    return [float(c) for c in grid], [float(np.mean([accuracy_at(f, c) for f in fronts])) for c in grid]
