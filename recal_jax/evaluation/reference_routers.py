"""Reference routers computed from a routing log: random, each single model, best single, oracle,
and the cheapest correct model per question; given the train split too, the trained classical
routers of `classical_routers` (knn, linear, softmax). They need no policy: only logged scores
and costs, and the questions for the classical routers."""

from __future__ import annotations

import dataclasses

import numpy as np

from recal_jax.data.schema import RoutingLog
from recal_jax.evaluation import classical_cache
from recal_jax.evaluation import classical_routers as cr
from recal_jax.evaluation.router_result import RouterResult, choice_result, router_result, score_and_cost_matrices


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
        "random": router_result(log, "random", scores.mean(1), costs.mean(1), {n: 1.0 / m for n in names})
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
