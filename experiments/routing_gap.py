"""Where a trained router loses to a classical one: per task, at the same cost.

    python -m experiments.routing_gap --run_dir=experiments/results_greedy/dcrouter-recipe/recal-rw0.1-s0

The run's greedy evaluation rollouts (eval_rollouts/) are set against a classical router of the
same split (the run's suite and seed, from its config.json) at the point of its lambda sweep
whose cost per query is nearest the run's own, or at `--lam`. Per test dataset: the questions,
each router's accuracy and cost per query, what the dataset adds to the accuracy gap
(classical minus policy, summed over the dataset's questions and divided by all of them, so the
rows add up to the total gap), and the models each router sends it to most.

The policy's accuracy per question is its rollouts' `reward_answer` (what the evaluation scores),
its cost their `cost_usd`; the classical router's are the log's score and call cost of the model it
picks (the reference routers' rule). `--router=task` is the per-task router
(experiments/task_router.py): each test question to its dataset's best train model.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pandas as pd

from recal_jax.data.jsonl import quiet_datasets
from recal_jax.data.schema import RoutingLog
from recal_jax.evaluation.classical_routers import (CLASSICAL_NAMES, DEFAULT_LAMBDAS, classical_predictions,
                                                    relative_costs, route, sweep_result)
from recal_jax.evaluation.router_result import score_and_cost_matrices

ROUTERS = CLASSICAL_NAMES + ("task",)


def policy_rows(rollouts, test: RoutingLog) -> pd.DataFrame:
    """One row per test question the rollouts cover: id, dataset, accuracy, cost, models (the
    models of its first rollout's calls, " + "-joined; "none" without a call). Several rollouts of
    a question (sampled evaluation) are averaged."""
    known = {r.id for r in test.records}
    rows = []
    for r in rollouts:
        if r["id"] not in known:
            raise ValueError(f"rollout of question {r['id']!r}, which the test split of this run's suite "
                             f"does not have: the rollouts are not of this split (suite, seed or data_dir differ)")
        rows.append({"id": r["id"], "dataset": r["dataset"], "accuracy": float(r["reward_answer"]),
                     "cost": float(r["cost_usd"]), "models": " + ".join(r["routed_models"]) or "none"})
    if not rows:
        raise ValueError("the run has no evaluation rollouts")
    frame = pd.DataFrame(rows)
    return frame.groupby("id", sort=False).agg(dataset=("dataset", "first"), accuracy=("accuracy", "mean"),
                                               cost=("cost", "mean"), models=("models", "first")).reset_index()


def router_choices(train: RoutingLog, test: RoutingLog, router: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pred_qm f64[Q, M], cost_m f64[M]) of `router` on `test`, fit on `train`."""
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; expected one of {ROUTERS}")
    if router == "task":
        from experiments.task_router import task_predictions

        _, costs_nm = score_and_cost_matrices(train)
        return task_predictions(train, test), relative_costs(costs_nm)
    p = classical_predictions(train, test, seed=seed)
    return p.pred_qm[router], p.cost_m


def nearest_lambda(pred_qm, cost_m, test: RoutingLog, target_cost: float, lambdas=DEFAULT_LAMBDAS) -> float:
    """The lambda of the sweep whose routing costs nearest `target_cost` per query (the smaller
    lambda, the more accurate end, on ties)."""
    sweep = sweep_result(test, "nearest", pred_qm, cost_m, lambdas).lambda_sweep  # (lambda, cost, accuracy)
    lam, _, _ = min(sweep, key=lambda point: abs(point[1] - target_cost))
    return lam


def _top(models: pd.Series, k: int = 3) -> str:
    counts = collections.Counter(models)
    return ", ".join(f"{m} {c / len(models):.0%}" for m, c in counts.most_common(k))


def gap_table(policy: pd.DataFrame, test: RoutingLog, choice_q: np.ndarray) -> pd.DataFrame:
    """Per dataset (then "all"): n, policy / router accuracy and cost per query, gap (router
    minus policy accuracy, summed over the dataset and divided by all questions), top models."""
    scores_qm, costs_qm = score_and_cost_matrices(test)
    index = {r.id: i for i, r in enumerate(test.records)}
    models = list(test.models)
    q = policy["id"].map(index).to_numpy()
    frame = policy.assign(router_accuracy=scores_qm[q, choice_q[q]], router_cost=costs_qm[q, choice_q[q]],
                          router_models=[models[m] for m in choice_q[q]])
    total = len(frame)

    def summarise(part: pd.DataFrame) -> dict:
        return {"n": len(part), "policy_accuracy": part.accuracy.mean(), "router_accuracy": part.router_accuracy.mean(),
                "gap": (part.router_accuracy - part.accuracy).sum() / total,
                "policy_cost": part.cost.mean(), "router_cost": part.router_cost.mean(),
                "policy_models": _top(part.models), "router_models": _top(part.router_models)}

    rows = {name: summarise(part) for name, part in frame.groupby("dataset")}
    rows["all"] = summarise(frame)
    return pd.DataFrame.from_dict(rows, orient="index")


def run_gap(run_dir: Path, router: str = "linear", lam: float | None = None, data_dir: str | None = None):
    """(table, lambda): the gap table of the run in `run_dir` against `router` at `lam` (None:
    the sweep's lambda nearest the run's cost)."""
    import datasets

    from experiments.classical_baselines import load

    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.json")
    try:
        config = json.loads(config_path.read_text())
        suite, seed = config["suite"], int(config["seed"])
        run_data_dir = config.get("data_dir", "")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{config_path} is not a run's config (JSON with suite, seed and data_dir): "
                         f"{type(e).__name__}: {e}") from None
    rollouts_dir = run_dir / "eval_rollouts"
    if not rollouts_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} has no eval_rollouts/: the run has not finished its evaluation")
    data = load(suite, data_dir or run_data_dir, seed)
    with quiet_datasets():
        policy = policy_rows(datasets.load_from_disk(str(rollouts_dir)), data.test)
    pred_qm, cost_m = router_choices(data.train, data.test, router, seed)
    if lam is None:
        lam = nearest_lambda(pred_qm, cost_m, data.test, policy.cost.mean())
    return gap_table(policy, data.test, route(pred_qm, cost_m, lam)), lam


def main(argv):
    del argv
    table, lam = run_gap(Path(_RUN_DIR.value), _ROUTER.value, _LAM.value, _DATA_DIR.value)
    print(f"{_ROUTER.value} router at lambda {lam:g} against {_RUN_DIR.value}")
    print(table.to_markdown(floatfmt=".3g"))


if __name__ == "__main__":
    from absl import app, flags

    _RUN_DIR = flags.DEFINE_string("run_dir", None, "A finished run's directory (config.json, eval_rollouts/).",
                                   required=True)
    _ROUTER = flags.DEFINE_enum("router", "linear", ROUTERS, "The router to compare with.")
    _LAM = flags.DEFINE_float("lam", None, "Its lambda; default: the sweep's lambda nearest the run's cost.")
    _DATA_DIR = flags.DEFINE_string("data_dir", None, "The suite's data; default: the run's config.data_dir.")
    app.run(main)
