"""The part of RESULTS.md that explains the main table: paired accuracy differences and the
calibration diagnostics of spec section 5, per row (preset, route weight), means over seeds.

Paired differences: every preset run of a seed starts from the same SFT export, so the
difference to that start, and to the `grpo` and `recal` runs of the same seed, removes the between-seed
variance of the warm start (which dominates the unpaired CI of the main table).

Diagnostics, per run over its GRPO steps, then averaged over seeds:
- informative: mean fraction of instances whose group has a spread in the weighted reward
  (sigma_u > 1e-6; spec 5c); only these carry gradient.
- weight range: min and max of the variance weights v_u over training (1/1 without reweighting).
- adv std: per-component advantage std (calibration.COMPONENTS, in their order) for
  decomposed presets, or the one scalar advantage std.
- aux share: the share of sum_k (w_k * std_k)^2 that comes from calibration.AUX_COMPONENTS
  (the gated ones): how much of the update is driven by components other than format and
  answer (decomposed only).
- answer gain: mean training answer reward over the last third of steps minus the first third.
- cost ratio: mean cost per rollout over the last third of steps / the first third.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from experiments import grid_stats, tables
from experiments.grid_layout import preset_weights
from experiments.grid_stats import finite_mean, finite_or_none
from recal_jax.calibration.config import AUX_COMPONENTS, COMPONENTS

DASH = "—"
BASELINE = ("grpo", None)
RECAL = ("recal", None)


def _finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _thirds(rows: Sequence[dict], key: str) -> tuple[float | None, float | None]:
    third = max(1, len(rows) // 3)
    return finite_mean(r.get(key) for r in rows[:third]), finite_mean(r.get(key) for r in rows[-third:])


def run_diagnostics(preset: str, route_weight: float | None, rows: Sequence[dict]) -> dict[str, Any]:
    """Diagnostics of one run from its train rows (metrics.jsonl, phase 'train')."""
    num_k = sum(1 for k in range(len(COMPONENTS)) if any(f"calibration/adv_std_k/{k}" in r for r in rows))
    adv_std = [finite_mean(r.get(f"calibration/adv_std_k/{k}") for r in rows) for k in range(num_k)]
    aux_share = None
    if num_k == len(COMPONENTS) and all(s is not None for s in adv_std):
        weights = preset_weights(preset, route_weight)
        parts = [(w * s) ** 2 for w, s in zip(weights, adv_std)]
        total = sum(parts)
        if total > 0:
            aux_share = sum(parts[COMPONENTS.index(c)] for c in AUX_COMPONENTS) / total
    answer_first, answer_last = _thirds(rows, "reward/answer")
    cost_first, cost_last = _thirds(rows, "cost_per_rollout")
    mins = _finite(r.get("calibration/weight_min") for r in rows)
    maxs = _finite(r.get("calibration/weight_max") for r in rows)
    return {
        "informative": finite_mean(r.get("calibration/informative_frac") for r in rows),
        "weight_min": min(mins) if mins else None,
        "weight_max": max(maxs) if maxs else None,
        "adv_std": adv_std,
        "aux_share": aux_share,
        "answer_gain": None if answer_first is None or answer_last is None else answer_last - answer_first,
        "cost_ratio": (cost_last / cost_first if cost_first and cost_last is not None and cost_first > 0
                       else None),
    }


SCALARS = ("informative", "weight_min", "weight_max", "aux_share", "answer_gain", "cost_ratio")
ADV_STD = "adv_std/"  # column prefix of component k's advantage std in the aggregation frame


def _paired(members: pd.Series, reference: pd.Series) -> dict[str, Any]:
    """Mean and 95% t-interval of members - reference over the seeds (the index) both have."""
    diff = (members - reference).dropna().sort_index()
    if diff.empty:
        return {"mean": None, "ci95_half": None, "n": 0}
    mean, half = grid_stats.mean_ci95(diff)
    return {"mean": mean, "ci95_half": half, "n": len(diff)}


def _run_columns(key: tuple, run) -> dict[str, Any]:
    """One run's row of the aggregation frame: accuracy, its SFT start and its diagnostics."""
    d = run_diagnostics(key[0], key[1], run.train_rows)
    return {"seed": run.seed, "accuracy": run.summary["policy"]["accuracy"],
            "start": run.summary.get("sft_policy", {}).get("accuracy", math.nan),
            "num_k": len(d["adv_std"]), **{c: d[c] for c in SCALARS},
            **{f"{ADV_STD}{k}": v for k, v in enumerate(d["adv_std"])}}


def aggregate_diagnostics(groups: Mapping[tuple, Sequence], label: Callable) -> list[dict[str, Any]]:
    """One row per (preset, route weight) key of `groups` (report.group_runs: key -> its
    report.RunResult runs), in the order of `groups`: finite means over the runs, and paired
    differences over the seeds."""
    labels = {key: label(*key) for key in groups}
    frame = pd.DataFrame([{"label": labels[key], **_run_columns(key, r)} for key, members in groups.items()
                          for r in members])
    accuracy = frame.pivot(index="seed", columns="label", values="accuracy")
    adv_cols = [c for c in frame.columns if c.startswith(ADV_STD)]
    means = frame.groupby("label", sort=False).agg(num_k=("num_k", "max"),
                                                  **{c: (c, finite_mean) for c in (*SCALARS, *adv_cols)})
    out = []
    for key, lab in labels.items():
        row, own = means.loc[lab], frame[frame["label"] == lab].set_index("seed")
        vs = {name: _paired(accuracy[lab], accuracy[labels[ref]]) if ref in groups and key != ref else None
              for name, ref in (("vs_grpo", BASELINE), ("vs_recal", RECAL))}
        out.append({"label": lab, "vs_start": _paired(own["accuracy"], own["start"]), **vs,
                    **{c: finite_or_none(row[c]) for c in SCALARS},
                    "adv_std": [finite_or_none(row[f"{ADV_STD}{k}"]) for k in range(int(row["num_k"]))]})
    return out


def _num(value, fmt: str = ".3f") -> str:
    return DASH if value is None or not math.isfinite(value) else format(value, fmt)


def _delta(d: dict | None) -> str:
    if d is None or d["mean"] is None:
        return DASH
    half = "" if d["ci95_half"] is None else f" ± {d['ci95_half']:.3f}"
    return f"{d['mean']:+.3f}{half} (n={d['n']})"


def diagnostics_table(rows: Sequence[dict]) -> str:
    head = ["router", "Δ acc vs its SFT start", "Δ acc vs grpo (paired)", "Δ acc vs recal (paired)",
            "informative", "weight min/max", "adv std (" + "/".join(COMPONENTS) + " or scalar)", "aux share",
            "answer gain (train)", "cost ratio (train)"]
    cells = [[r["label"], _delta(r["vs_start"]), _delta(r["vs_grpo"]), _delta(r["vs_recal"]),
              _num(r["informative"], ".2f"), f"{_num(r['weight_min'], '.2f')}/{_num(r['weight_max'], '.2f')}",
              "/".join(_num(s, ".2f") for s in r["adv_std"]) or DASH,
              _num(r["aux_share"], ".2f"), _num(r["answer_gain"], "+.3f"), _num(r["cost_ratio"], ".2f")]
             for r in rows]
    return tables.markdown(cells, head)
