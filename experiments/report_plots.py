"""Plots of the aggregated grid results (report.py draws them next to RESULTS.md). Every plot of
routers against cost also draws the classical routers' lambda-sweep fronts (`fronts`: router
key -> [[lambda, cost, accuracy], ...], dashed lines)."""

from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import matched_cost  # noqa: E402


def _finish(fig, ax, path: pathlib.Path, title: str, xlabel: str, ylabel: str) -> pathlib.Path:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _colors(n: int) -> list:
    """n distinct colours (tab10 up to 10 series, tab20 up to 20, then a continuous map)."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("viridis")(i / (n - 1)) for i in range(n)]


def classical_lines(ax, fronts: Mapping[str, Sequence[Sequence[float]]] | None) -> None:
    """The classical routers' lambda sweeps as dashed lines through their (cost, accuracy)
    points, in cost order, the lambda = 0 end marked with a star."""
    styles = {"knn": "tab:brown", "linear": "tab:olive", "softmax": "tab:cyan"}
    for key, sweep in (fronts or {}).items():
        pts = sorted((float(c), float(a), float(lam)) for lam, c, a in sweep)
        color = styles.get(key, "dimgrey")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", marker=".", color=color, lw=1, zorder=2,
                label=f"{key} (lambda sweep)")
        zero = [p for p in pts if p[2] == 0.0]
        if zero:
            ax.scatter([zero[0][0]], [zero[0][1]], marker="*", s=60, color=color, zorder=3)


def accuracy_vs_cost(rows: Sequence[Mapping], references: Mapping[str, Mapping], path, suite: str,
                     fronts: Mapping[str, Sequence[Sequence[float]]] | None = None) -> pathlib.Path:
    """rows: aggregated policy rows (label, cost_per_query, accuracy, ci95_half); references:
    label -> {cost_per_query, accuracy}. Policies get CI bars and a legend entry each,
    references are grey labelled points, classical routers' fronts dashed lines."""
    fig, ax = plt.subplots(figsize=(9, 5))
    classical_lines(ax, fronts)
    for row, color in zip(rows, _colors(len(rows))):
        yerr = row["ci95_half"] if row["ci95_half"] is not None else 0.0
        ax.errorbar([row["cost_per_query"]], [row["accuracy"]], yerr=[yerr], fmt="o", capsize=3, zorder=3,
                    color=color, label=row["label"])
    for label, ref in references.items():
        ax.scatter([ref["cost_per_query"]], [ref["accuracy"]], color="grey", marker="s", s=18, zorder=2)
        ax.annotate(label, (ref["cost_per_query"], ref["accuracy"]), fontsize=6, color="grey",
                    xytext=(3, -8), textcoords="offset points")
    if rows or fronts:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _finish(fig, ax, pathlib.Path(path), f"{suite}: test accuracy against cost (95% CI over seeds)",
                   "cost per query (USD)", "test accuracy")


def pareto_fronts(rows: Sequence[Mapping], references: Mapping[str, Mapping], path, suite: str,
                  fronts: Mapping[str, Sequence[Sequence[float]]] | None = None) -> pathlib.Path:
    """One line per swept preset through its route-weight points (in route-weight order; the
    plain preset run is the point at the preset's own route weight), the classical routers'
    lambda sweeps, plus the single models and the oracle as points."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    classical_lines(ax, fronts)
    presets = sorted({r["preset"] for r in rows if r["route_weight"] is not None})
    for preset in presets:
        pts = sorted((r for r in rows if r["preset"] == preset), key=lambda r: r["route_weight_used"])
        xs = [r["cost_per_query"] for r in pts]
        ys = [r["accuracy"] for r in pts]
        errs = [r["ci95_half"] or 0.0 for r in pts]
        ax.errorbar(xs, ys, yerr=errs, fmt="-o", capsize=3, label=preset, zorder=3)
        for r in pts:
            ax.annotate(f"w={r['route_weight_used']:g}", (r["cost_per_query"], r["accuracy"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    for label, ref in references.items():
        if label.startswith("single:") or label == "oracle":
            ax.scatter([ref["cost_per_query"]], [ref["accuracy"]], color="black", marker="x", s=25, zorder=2)
            ax.annotate(label.removeprefix("single:"), (ref["cost_per_query"], ref["accuracy"]), fontsize=6,
                        xytext=(3, -8), textcoords="offset points")
    ax.legend(fontsize=7)
    return _finish(fig, ax, pathlib.Path(path), f"{suite}: accuracy-cost fronts over the route weight",
                   "cost per query (USD)", "test accuracy")


def matched_cost_fronts(points: Mapping[str, Mapping[int, Sequence[Sequence[float]]]], level_costs: Sequence[float],
                        references: Mapping[str, Mapping], path, suite: str,
                        dashed: Sequence[str] = ()) -> pathlib.Path:
    """All routers' fronts together (experiments/matched_cost.py): per router (points: label ->
    seed -> (cost, accuracy) points), the mean over seeds of its per-seed fronts (solid; dashed
    for the labels in `dashed`, the classical routers) over
    its faint per-seed points; dotted verticals at the matched cost levels; single models and
    the oracle as black crosses."""
    fig, ax = plt.subplots(figsize=(9, 5))
    for (label, by_seed), color in zip(points.items(), _colors(len(points))):
        xs, ys = matched_cost.mean_front(by_seed)
        style = "--" if label in dashed else "-"
        ax.plot(xs, ys, style, color=color, label=label, zorder=3)
        pts = np.asarray([p for seed_pts in by_seed.values() for p in seed_pts], float).reshape(-1, 2)
        ax.scatter(pts[:, 0], pts[:, 1], color=color, s=8, alpha=0.35, zorder=2)
    for cost in level_costs:
        ax.axvline(cost, color="grey", ls=":", lw=1)
    for label, ref in references.items():
        if label.startswith("single:") or label == "oracle":
            ax.scatter([ref["cost_per_query"]], [ref["accuracy"]], color="black", marker="x", s=25, zorder=2)
            ax.annotate(label.removeprefix("single:"), (ref["cost_per_query"], ref["accuracy"]), fontsize=6,
                        xytext=(3, -8), textcoords="offset points")
    if points:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    title = f"{suite}: accuracy-cost fronts (mean over seeds; dotted: matched costs)"
    return _finish(fig, ax, pathlib.Path(path), title,
                   "cost per query (USD)", "test accuracy")


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """Mean of each value and the (window - 1) before it (fewer at the start)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    return [sum(values[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def training_curves(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path, suite: str,
                    window: int = 5) -> pathlib.Path:
    """curves: row label -> (steps, mean over seeds of reward/answer), drawn as a trailing mean
    over `window` logged steps: every preset of a seed sees the same batches, so the raw curves
    share a batch-difficulty zigzag that hides the differences between presets."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for (label, (steps, values)), color in zip(curves.items(), _colors(len(curves))):
        ax.plot(steps, trailing_mean(list(values), window), label=label, color=color)
    if curves:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    title = f"{suite}: training answer reward (mean over seeds, trailing mean of {window} steps)"
    return _finish(fig, ax, pathlib.Path(path), title, "GRPO step", "reward/answer")
