"""Plots of a run: reward components and per-dataset accuracy over steps; accuracy against cost."""

from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

from matplotlib.figure import Figure

from recal_jax.calibration.config import COMPONENTS


def plot_training_curves(rows: Sequence[Mapping], path: pathlib.Path) -> pathlib.Path | None:
    """rows: metrics.jsonl rows of phase 'train' with keys reward/<component> and
    accuracy/<dataset>. Returns the PNG path, or None when there is nothing to plot."""
    rows = [r for r in rows if "step" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(11, 4))  # no pyplot: the caller's backend stays as it is
    ax_r, ax_d = fig.subplots(1, 2)
    for key in COMPONENTS:
        name = f"reward/{key}"
        if any(name in r for r in rows):
            ax_r.plot(steps, [r.get(name, float("nan")) for r in rows], label=key)
    ax_r.set_title("training reward per component (before calibration)")
    ax_r.set_xlabel("GRPO step")
    ax_r.legend(fontsize=8)
    datasets = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("accuracy/")})
    for dataset in datasets:
        name = f"accuracy/{dataset}"
        ax_d.plot(steps, [r.get(name, float("nan")) for r in rows], label=dataset)
    ax_d.set_title("training answer reward per dataset")
    ax_d.set_xlabel("GRPO step")
    if datasets:
        ax_d.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_accuracy_vs_cost(points: Mapping[str, tuple[float, float]], path: pathlib.Path,
                          highlight: Sequence[str] = ()) -> pathlib.Path:
    """points: router name -> (cost per query in USD, accuracy). Highlighted names are drawn larger."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for name, (cost, acc) in points.items():
        big = name in highlight
        ax.scatter([cost], [acc], s=80 if big else 25, marker="*" if big else "o",
                   zorder=3 if big else 2)
        ax.annotate(name, (cost, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("cost per query (USD)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy against cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
