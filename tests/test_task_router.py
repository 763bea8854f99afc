"""experiments.task_router: the per-task router against a hand-computed log."""

import pytest

from experiments.task_router import task_predictions, task_router
from recal_jax.data.schema import ModelInfo, RoutingLog, RoutingRecord

MODELS = {m: ModelInfo(m) for m in ("cheap", "big")}
COSTS = {"cheap": 1.0, "big": 4.0}


def _log(rows, name):
    records = [RoutingRecord(f"{name}{i}", d, f"q{i}", ("x",), {"cheap": c, "big": b}, costs=dict(COSTS))
               for i, (d, c, b) in enumerate(rows)]
    return RoutingLog(records, MODELS, ("math", "chat"), name=name)


# by hand: on train, math means cheap 0.5, big 1.0;
# chat means cheap 1.0, big 0.5
TRAIN = _log([("math", 1, 1), ("math", 0, 1), ("chat", 1, 1), ("chat", 1, 0)], "train")
TEST = _log([("math", 0, 1), ("chat", 1, 0), ("chat", 1, 1)], "test")


def test_predictions_are_the_train_means_per_task():
    pred = task_predictions(TRAIN, TEST)
    assert pred.tolist() == [[0.5, 1.0], [1.0, 0.5], [1.0, 0.5]]


def test_routing_and_its_lambda_sweep_by_hand():
    result = task_router(TRAIN, TEST, lambdas=(0.0, 1.0))
    # lambda 0: math -> big, chat -> cheap: scores 1, 1, 1; costs 4, 1, 1
    assert result.accuracy == pytest.approx(1.0)
    assert result.cost_per_query == pytest.approx(2.0)
    # lambda 1 (relative costs 0.25 and 1): math 0.5 - 0.25 = 0.25 > 1.0 - 1 = 0 -> cheap: scores 0, 1, 1
    (_, c0, a0), (_, c1, a1) = result.lambda_sweep
    assert (a1, c1) == pytest.approx((2 / 3, 1.0))
