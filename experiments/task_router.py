"""The per-task router: each test question goes to the model with the best mean train score on
its task (dataset), less lambda x its relative cost (the classical routers' cost rule and lambda
sweep). What the quickstart-style RL recipe can at best learn when it routes by the task it
names in <think>, with no per-question reading.

    python -m experiments.task_router --suite=dcrouter --data_dir=../shared/data
"""

from __future__ import annotations

import numpy as np

from recal_jax.data.schema import RoutingLog
from recal_jax.evaluation.classical_routers import DEFAULT_LAMBDAS, relative_costs, sweep_result
from recal_jax.evaluation.router_result import RouterResult, score_and_cost_matrices


def task_predictions(train: RoutingLog, test: RoutingLog) -> np.ndarray:
    """f64[Q, M]: per test question, each model's mean train score on the question's dataset
    (the overall train mean for a dataset absent from train)."""
    scores_nm, _ = score_and_cost_matrices(train)
    datasets_n = np.array([r.dataset for r in train.records])
    overall_m = scores_nm.mean(axis=0)
    by_dataset = {d: scores_nm[datasets_n == d].mean(axis=0) for d in set(datasets_n.tolist())}
    return np.stack([by_dataset.get(r.dataset, overall_m) for r in test.records])


def task_router(train: RoutingLog, test: RoutingLog, lambdas=DEFAULT_LAMBDAS) -> RouterResult:
    """The per-task router on `test` at lambda = 0, with its lambda sweep."""
    _, costs_nm = score_and_cost_matrices(train)
    return sweep_result(test, "task", task_predictions(train, test), relative_costs(costs_nm), lambdas)


def main(argv):
    del argv
    from experiments.classical_baselines import load

    data = load(_SUITE.value, _DATA_DIR.value, _SEED.value)
    result = task_router(data.train, data.test)
    for lam, cost, acc in result.lambda_sweep:
        print(f"lambda {lam:g}: accuracy {acc:.3f} @ {cost:.3g} USD per query")


if __name__ == "__main__":
    from absl import app, flags

    _SUITE = flags.DEFINE_string("suite", "dcrouter", "A registered suite.")
    _DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "The suite's data (for suites that read logs).")
    _SEED = flags.DEFINE_integer("seed", 0, "The seed of the split (suites that draw one).")
    app.run(main)
