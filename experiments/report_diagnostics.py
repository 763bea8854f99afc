"""The part of RESULTS.md that explains the main table: paired accuracy differences and the
calibration diagnostics of spec section 5, per row (preset, route weight), means over seeds.

Paired differences: every preset run of a seed starts from the same SFT export, so the
difference to that start, and to the `grpo` and `recal` runs of the same seed, removes the between-seed
variance of the warm start (which dominates the unpaired CI of the main table).

Diagnostics, per run over its GRPO steps, then averaged over seeds:
- informative: mean fraction of instances whose group has a spread in the weighted reward
  (sigma_u > 1e-6; spec 5c); only these carry gradient.
- weight range: min and max of the variance weights v_u over training (1/1 without reweighting).
- adv std: per-component advantage std (format/answer/info/route/balance) for decomposed
  presets, or the one scalar advantage std.
- aux share: the share of sum_k (w_k * std_k)^2 that comes from info, route and balance: how
  much of the update is driven by components other than format and answer (decomposed only).
- answer gain: mean training answer reward over the last third of steps minus the first third.
- cost ratio: mean cost per rollout over the last third of steps / the first third.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from experiments import grid_stats
from experiments.grid_layout import preset_weights
from experiments.grid_stats import finite_mean
from recal_jax.calibration import COMPONENTS

DASH = "—"
AUX = ("info", "route", "balance")
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
            aux_share = sum(parts[COMPONENTS.index(c)] for c in AUX) / total
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


def _paired(members: dict[int, float], reference: dict[int, float]) -> dict[str, Any]:
    seeds = sorted(set(members) & set(reference))
    if not seeds:
        return {"mean": None, "ci95_half": None, "n": 0}
    mean, half = grid_stats.mean_ci95([members[s] - reference[s] for s in seeds])
    return {"mean": mean, "ci95_half": half, "n": len(seeds)}


def aggregate_diagnostics(groups: Mapping[tuple, Sequence], label: Callable) -> list[dict[str, Any]]:
    """One row per (preset, route weight) key of `groups` (report.group_runs: key -> its
    report.RunResult runs), in the order of `groups`."""
    accuracy = {key: {r.seed: r.summary["policy"]["accuracy"] for r in members} for key, members in groups.items()}
    out = []
    for key, members in groups.items():
        starts = {r.seed: r.summary["sft_policy"]["accuracy"] for r in members if "sft_policy" in r.summary}
        per_run = [run_diagnostics(key[0], key[1], r.train_rows) for r in members]
        num_k = max(len(d["adv_std"]) for d in per_run)
        out.append({
            "label": label(*key),
            "vs_start": _paired(accuracy[key], starts),
            "vs_grpo": _paired(accuracy[key], accuracy[BASELINE]) if BASELINE in groups and key != BASELINE else None,
            "vs_recal": _paired(accuracy[key], accuracy[RECAL]) if RECAL in groups and key != RECAL else None,
            "informative": finite_mean(d["informative"] for d in per_run),
            "weight_min": finite_mean(d["weight_min"] for d in per_run),
            "weight_max": finite_mean(d["weight_max"] for d in per_run),
            "adv_std": [finite_mean(d["adv_std"][k] for d in per_run if len(d["adv_std"]) > k) for k in range(num_k)],
            "aux_share": finite_mean(d["aux_share"] for d in per_run),
            "answer_gain": finite_mean(d["answer_gain"] for d in per_run),
            "cost_ratio": finite_mean(d["cost_ratio"] for d in per_run),
        })
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
            "informative", "weight min/max", "adv std (" + "/".join(COMPONENTS) + " or scalar)", "aux share", "answer gain (train)",
            "cost ratio (train)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        stds = "/".join(_num(s, ".2f") for s in r["adv_std"]) or DASH
        cells = [r["label"], _delta(r["vs_start"]), _delta(r["vs_grpo"]), _delta(r["vs_recal"]),
                 _num(r["informative"], ".2f"),
                 f"{_num(r['weight_min'], '.2f')}/{_num(r['weight_max'], '.2f')}", stds,
                 _num(r["aux_share"], ".2f"), _num(r["answer_gain"], "+.3f"), _num(r["cost_ratio"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
