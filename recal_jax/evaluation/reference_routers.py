"""Reference routers computed from a routing log: random, each single model, best single, oracle,
and the cheapest correct model per question. They need no policy: only logged scores and costs."""

from __future__ import annotations

import dataclasses

import numpy as np

from recal_jax.data.schema import RoutingLog


@dataclasses.dataclass(frozen=True)
class RouterResult:
    """Accuracy (mean score) overall and per dataset, and cost in USD (total and per query)."""

    name: str
    accuracy: float
    per_dataset: dict[str, float]
    cost_total: float
    cost_per_query: float
    route_share: dict[str, float]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def score_and_cost_matrices(log: RoutingLog) -> tuple[np.ndarray, np.ndarray]:
    """scores_nm, costs_nm over the log's records and models (a model a record lacks scores 0)."""
    names = log.model_names
    scores = np.zeros((len(log), len(names)), np.float64)
    costs = np.zeros((len(log), len(names)), np.float64)
    for i, record in enumerate(log.records):
        for j, name in enumerate(names):
            scores[i, j] = float(record.scores.get(name, 0.0))
            costs[i, j] = log.call_cost(record, name)
    return scores, costs


def _per_dataset(log: RoutingLog, values_n: np.ndarray) -> dict[str, float]:
    ids = np.array([log.dataset_id(r) for r in log.records], np.int64)
    out = {}
    for d, name in enumerate(log.datasets):
        sel = ids == d
        if sel.any():
            out[name] = float(values_n[sel].mean())
    return out


def _result(log, name, scores_n, costs_n, share) -> RouterResult:
    n = max(len(log), 1)
    return RouterResult(
        name=name,
        accuracy=float(scores_n.mean()) if len(log) else 0.0,
        per_dataset=_per_dataset(log, scores_n),
        cost_total=float(costs_n.sum()),
        cost_per_query=float(costs_n.sum() / n),
        route_share=share,
    )


def _choice_result(log, name, scores_nm, costs_nm, choice_n) -> RouterResult:
    rows = np.arange(len(log))
    counts = np.bincount(choice_n, minlength=len(log.model_names)) / max(len(log), 1)
    share = {m: float(c) for m, c in zip(log.model_names, counts)}
    return _result(log, name, scores_nm[rows, choice_n], costs_nm[rows, choice_n], share)


def reference_routers(log: RoutingLog) -> dict[str, RouterResult]:
    """All reference routers on `log`. `random` is the expectation over a uniform choice.

    `best_single` picks the single model with the highest mean score on this log (an upper
    bound for any fixed-model policy, chosen with hindsight on the evaluated split)."""
    if len(log) == 0:
        raise ValueError(f"routing log {log.name!r} is empty: no reference routers to compute")
    scores, costs = score_and_cost_matrices(log)
    names = log.model_names
    m = len(names)
    results = {
        "random": _result(log, "random", scores.mean(1), costs.mean(1), {n: 1.0 / m for n in names})
    }
    for j, name in enumerate(names):
        results[f"single:{name}"] = _choice_result(log, f"single:{name}", scores, costs, np.full(len(log), j))
    best = int(np.argmax(scores.mean(0)))
    results["best_single"] = dataclasses.replace(
        results[f"single:{names[best]}"], name=f"best_single ({names[best]})"
    )
    # The oracle takes the first best-scoring model in pool order, cost-blind.
    results["oracle"] = _choice_result(log, "oracle", scores, costs, np.argmax(scores, axis=1))
    best_score = scores.max(1, keepdims=True)
    # Among the models that reach the best score of the question, the cheapest; with no correct
    # model (best score 0) that is simply the cheapest model.
    cheapest = np.argmin(np.where(scores >= best_score, costs, np.inf), axis=1)
    results["cheapest_correct"] = _choice_result(log, "cheapest_correct", scores, costs, cheapest)
    return results
