"""Reference routers computed from a routing log: random, each single model, best single, oracle,
and the cheapest correct model per question; given the train split too, the trained classical
routers of `classical_routers` (knn, linear, softmax). They need no policy: only logged scores
and costs, and the questions for the classical routers."""

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
    # (lambda, cost per query, accuracy) of a cost-aware router's utility sweep (its
    # accuracy-cost front; this result is its lambda = 0 point); empty for the other routers.
    lambda_sweep: tuple = ()

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


def choice_result(log, name, scores_nm, costs_nm, choice_n) -> RouterResult:
    """The result of routing record i of `log` to model choice_n[i]."""
    rows = np.arange(len(log))
    counts = np.bincount(choice_n, minlength=len(log.model_names)) / max(len(log), 1)
    share = {m: float(c) for m, c in zip(log.model_names, counts)}
    return _result(log, name, scores_nm[rows, choice_n], costs_nm[rows, choice_n], share)


def reference_routers(log: RoutingLog, train_log: RoutingLog | None = None, *, seed: int = 0,
                      classical_config=None, cache_dir=None) -> dict[str, RouterResult]:
    """All reference routers on `log` (the evaluated split). `random` is the expectation over a
    uniform choice.

    `best_single` is the single model of the highest mean score on `train_log` (spec section
    10), reported on `log`; without `train_log`, the best on `log` itself (with hindsight: an
    upper bound for any fixed-model policy). With `train_log`, also the classical routers
    `knn`, `linear` and `softmax` fit on it (`classical_routers`, deterministic given `seed`;
    `classical_config` a ClassicalConfig, None for the defaults), except for a one-model pool
    or a train split of one record (nothing to route between, nothing to hold out).
    `cache_dir`: where fitted classical routers are cached (`classical_cache`; None: no cache)."""
    if len(log) == 0:
        raise ValueError(f"routing log {log.name!r} is empty: no reference routers to compute")
    scores, costs = score_and_cost_matrices(log)
    names = log.model_names
    m = len(names)
    results = {
        "random": _result(log, "random", scores.mean(1), costs.mean(1), {n: 1.0 / m for n in names})
    }
    for j, name in enumerate(names):
        results[f"single:{name}"] = choice_result(log, f"single:{name}", scores, costs, np.full(len(log), j))
    pick = scores if train_log is None else _train_scores(train_log, names)
    best = int(np.argmax(pick.mean(0)))
    results["best_single"] = dataclasses.replace(
        results[f"single:{names[best]}"], name=f"best_single ({names[best]})"
    )
    # The oracle takes the first best-scoring model in pool order, cost-blind.
    results["oracle"] = choice_result(log, "oracle", scores, costs, np.argmax(scores, axis=1))
    best_score = scores.max(1, keepdims=True)
    # Among the models that reach the best score of the question, the cheapest; with no correct
    # model (best score 0) that is simply the cheapest model.
    cheapest = np.argmin(np.where(scores >= best_score, costs, np.inf), axis=1)
    results["cheapest_correct"] = choice_result(log, "cheapest_correct", scores, costs, cheapest)
    if train_log is not None and m >= 2 and len(train_log) >= 2:
        from recal_jax.evaluation import classical_cache, classical_routers as cr  # they import this module

        config = classical_config or cr.ClassicalConfig()
        results.update(classical_cache.cached(lambda: cr.classical_routers(train_log, log, seed=seed, config=config),
                                              cache_dir, train_log, log, seed, config))
    return results


def _train_scores(train_log: RoutingLog, names: tuple[str, ...]) -> np.ndarray:
    if train_log.model_names != names:
        raise ValueError(f"train log pool {train_log.model_names} differs from the evaluated log's {names}")
    if len(train_log) == 0:
        raise ValueError(f"train log {train_log.name!r} is empty: cannot pick the best single model")
    return score_and_cost_matrices(train_log)[0]
