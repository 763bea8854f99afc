"""What every reference router reports (`RouterResult`) and how a routing of a log's records
becomes one: the logged score and call cost of the routed model per record. Shared by the
reference routers, the classical routers and their cache, so none of them imports another
for it."""

from __future__ import annotations

import dataclasses

import numpy as np

from recal_jax.data.schema import RoutingLog
from recal_jax.evaluation.per_dataset import per_dataset_mean


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

    @classmethod
    def from_json(cls, row: dict) -> "RouterResult":
        """The inverse of to_json (JSON turns the sweep's tuples into lists)."""
        row = dict(row)
        row["lambda_sweep"] = tuple(tuple(point) for point in row.get("lambda_sweep", ()))
        return cls(**row)


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


def log_dataset_ids(log: RoutingLog) -> np.ndarray:
    """i64[N]: each record's dataset index in log.datasets."""
    return np.array([log.dataset_id(r) for r in log.records], np.int64)


def router_result(log: RoutingLog, name: str, scores_n, costs_n, share: dict[str, float]) -> RouterResult:
    """The result of a router that scores scores_n and costs costs_n on the records of `log`."""
    n = max(len(log), 1)
    return RouterResult(
        name=name,
        accuracy=float(scores_n.mean()) if len(log) else 0.0,
        per_dataset=per_dataset_mean(scores_n, log_dataset_ids(log), log.datasets),
        cost_total=float(costs_n.sum()),
        cost_per_query=float(costs_n.sum() / n),
        route_share=share,
    )


def choice_result(log: RoutingLog, name: str, scores_nm, costs_nm, choice_n) -> RouterResult:
    """The result of routing record i of `log` to model choice_n[i]."""
    rows = np.arange(len(log))
    counts = np.bincount(choice_n, minlength=len(log.model_names)) / max(len(log), 1)
    share = {m: float(c) for m, c in zip(log.model_names, counts)}
    return router_result(log, name, scores_nm[rows, choice_n], costs_nm[rows, choice_n], share)


__all__ = ["RouterResult", "choice_result", "log_dataset_ids", "router_result", "score_and_cost_matrices"]
