"""Evaluate a policy on a split: per-dataset accuracy, cost, routing distribution, format rate,
next to the reference routers computed from the same log."""

from __future__ import annotations

import collections
from typing import Any

import jax
import numpy as np

from recal_jax.data.schema import RoutingLog
from recal_jax.evaluation.classical_routers import CLASSICAL_NAMES
from recal_jax.evaluation.per_dataset import per_dataset_mean
from recal_jax.evaluation.router_result import RouterResult
from recal_jax.rollout.runner import RolloutRunner, dataset_ids
from recal_jax.rollout.sampler import GREEDY, SamplingOptions


def _evaluation_rollouts(runner: RolloutRunner, params, log: RoutingLog, key, *, batch_size: int,
                         sampling: SamplingOptions, on_batch=None) -> dict[str, np.ndarray]:
    """One rollout per record of `log`, in batches -> answer f32[N], cost f32[N], format_ok
    bool[N], calls_nm i32[N,M] (calls per model), dataset_id i32[N]."""
    parts: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for start in range(0, len(log), batch_size):
        records = log.records[start:start + batch_size]
        key, sub = jax.random.split(key)
        rollout, rewards = runner.run(params, records, 1, sub, sampling=sampling)
        if on_batch is not None:
            on_batch(records, rollout, rewards)
        parts["answer"].append(rewards.answer_ug[:, 0])
        parts["cost"].append(rewards.cost_ug[:, 0])
        parts["format_ok"].append(rewards.format_ok_ug[:, 0])
        parts["calls_nm"].append(rewards.call_counts_ugm[:, 0])
        parts["dataset_id"].append(dataset_ids(log, records))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def evaluate_policy(runner: RolloutRunner, params, log: RoutingLog, key, *,
                    batch_size: int = 128, sampling: SamplingOptions = GREEDY, on_batch=None) -> dict[str, Any]:
    """One rollout per test record, greedy by default (spec section 10: the result does not
    depend on `key`); any other `sampling` is a sampled evaluation. Uses only what the
    environment reports (answer, cost, format, calls): no calibration state. Returns a
    JSON-able dict: accuracy, per_dataset, cost_total, cost_per_query, format_valid,
    route_share (overall and per dataset), calls_per_query, calls_per_dataset and
    multi_call_share_per_dataset (questions answered with two or more calls). `on_batch(records, rollout,
    rewards)`, when given, sees every batch (rollout_export.RolloutCollector keeps them)."""
    if len(log) == 0:
        raise ValueError(f"cannot evaluate on the empty log {log.name!r}")
    names = log.model_names
    out = _evaluation_rollouts(runner, params, log, key, batch_size=batch_size, sampling=sampling,
                               on_batch=on_batch)
    answer, cost, ids_all = out["answer"], out["cost"], out["dataset_id"]
    calls_n = out["calls_nm"].sum(-1)
    counts_dm = np.zeros((len(log.datasets), len(names)))
    np.add.at(counts_dm, ids_all, out["calls_nm"])
    per_dataset = per_dataset_mean(answer, ids_all, log.datasets)
    total_calls = counts_dm.sum()
    share = {m: float(counts_dm[:, j].sum() / total_calls) if total_calls else 0.0 for j, m in enumerate(names)}
    share_by_dataset = {
        log.datasets[d]: {m: float(counts_dm[d, j] / counts_dm[d].sum()) for j, m in enumerate(names)}
        for d in range(len(log.datasets)) if counts_dm[d].sum() > 0
    }
    return {
        "greedy": bool(sampling.greedy),
        "accuracy": float(answer.mean()),
        "per_dataset": per_dataset,
        "cost_total": float(cost.sum()),
        "cost_per_query": float(cost.mean()),
        "format_valid": float(out["format_ok"].mean()),
        "calls_per_query": float(out["calls_nm"].sum(-1).mean()),
        # the multi-turn behaviour: mean calls, and the share of questions asked in two or more calls
        "calls_per_dataset": per_dataset_mean(calls_n.astype(np.float64), ids_all, log.datasets),
        "multi_call_share_per_dataset": per_dataset_mean((calls_n >= 2).astype(np.float64), ids_all, log.datasets),
        "route_share": share,
        "route_share_by_dataset": share_by_dataset,
    }


def results_table(policy: dict[str, Any], references: dict[str, RouterResult], datasets, policy_name: str) -> str:
    """A markdown table: the trained policy, then the reference routers (accuracy per dataset,
    cost): random, best single, oracle, cheapest correct, the classical routers at lambda = 0
    (knn, linear, softmax; present when the references were fit on a train split), then each
    single model."""
    short = list(datasets)
    head = "| router | avg acc | " + " | ".join(short) + " | cost/query (USD) | format ok |"
    sep = "|" + "---|" * (len(datasets) + 4)
    rows = [head, sep]

    def row(name, acc, per, cost, fmt):
        cells = " | ".join(f"{per[d]:.3f}" if d in per else "-" for d in datasets)
        return f"| {name} | {acc:.3f} | {cells} | {cost:.3g} | {fmt} |"

    rows.append(row(policy_name, policy["accuracy"], policy["per_dataset"], policy["cost_per_query"],
                    f"{policy['format_valid']:.3f}"))
    for key in ("random", "best_single", "oracle", "cheapest_correct", *CLASSICAL_NAMES):
        if key in references:
            r = references[key]
            rows.append(row(r.name, r.accuracy, r.per_dataset, r.cost_per_query, "-"))
    for key, r in references.items():
        if key.startswith("single:"):
            rows.append(row(r.name, r.accuracy, r.per_dataset, r.cost_per_query, "-"))
    return "\n".join(rows)


def route_summary(policy: dict[str, Any]) -> str:
    """One line per dataset: the policy's routing distribution (top models), and its calls per
    question where some question took two or more."""
    lines = []
    calls, multi = policy.get("calls_per_dataset", {}), policy.get("multi_call_share_per_dataset", {})
    for dataset, share in policy["route_share_by_dataset"].items():
        top = collections.Counter(share).most_common(3)
        line = f"  {dataset}: " + ", ".join(f"{m} {p:.0%}" for m, p in top if p > 0)
        if any(multi.values()) and dataset in calls:
            line += f"  ({calls[dataset]:.2f} calls per question, {multi[dataset]:.0%} with two or more)"
        lines.append(line)
    return "\n".join(lines)


__all__ = ["evaluate_policy", "results_table", "route_summary"]
