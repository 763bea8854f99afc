"""experiments.routing_gap: the per-task gap to a classical router, against hand-computed logs."""

import numpy as np
import pytest

from experiments.routing_gap import gap_table, nearest_lambda, policy_rows, router_choices, run_gap
from tests.test_task_router import TRAIN, _log  # train means: math cheap 0.5 / big 1.0, chat cheap 1.0 / big 0.5

TEST = _log([("math", 0, 1), ("math", 1, 1), ("chat", 1, 0), ("chat", 0, 1)], "test")


def _rollout(i, model, accuracy, cost):
    return {"id": f"test{i}", "dataset": TEST.records[i].dataset, "routed_models": [model] if model else [],
            "reward_answer": accuracy, "cost_usd": cost}


# the policy: every question to cheap, except test3 (chat) to big; test1 sampled twice
ROLLOUTS = [_rollout(0, "cheap", 0.0, 1.0), _rollout(1, "cheap", 1.0, 1.0), _rollout(1, "cheap", 0.0, 1.0),
            _rollout(2, "cheap", 1.0, 1.0), _rollout(3, "big", 1.0, 4.0)]


def test_policy_rows_average_the_rollouts_of_a_question():
    rows = policy_rows(ROLLOUTS, TEST).set_index("id")
    assert rows.loc["test1", "accuracy"] == pytest.approx(0.5)
    assert rows.loc["test3", "models"] == "big"
    assert len(rows) == 4


def test_gap_table_by_hand():
    # the per-task router at lambda 0: math -> big, chat -> cheap
    pred_qm, cost_m = router_choices(TRAIN, TEST, "task", seed=0)
    choice = np.argmax(pred_qm, axis=1)
    table = gap_table(policy_rows(ROLLOUTS, TEST), TEST, choice)
    # math: policy 0 and 0.5 (mean 0.25); router big: 1 and 1 -> gap (2 - 0.5) / 4
    assert table.loc["math", "policy_accuracy"] == pytest.approx(0.25)
    assert table.loc["math", "router_accuracy"] == pytest.approx(1.0)
    assert table.loc["math", "gap"] == pytest.approx(1.5 / 4)
    # chat: policy 1 and 1; router cheap: 1 and 0 -> gap -1 / 4
    assert table.loc["chat", "gap"] == pytest.approx(-1 / 4)
    assert table.loc["all", "gap"] == pytest.approx(table.loc["math", "gap"] + table.loc["chat", "gap"])
    assert table.loc["all", "policy_cost"] == pytest.approx((1 + 1 + 1 + 4) / 4)
    assert table.loc["all", "router_cost"] == pytest.approx((4 + 4 + 1 + 1) / 4)
    assert table.loc["chat", "policy_models"] == "cheap 50%, big 50%"
    assert table.loc["math", "router_models"] == "big 100%"


def test_nearest_lambda_picks_the_sweep_point_of_the_cost():
    pred_qm, cost_m = router_choices(TRAIN, TEST, "task", seed=0)
    # lambda 0 costs (4 + 4 + 1 + 1) / 4 = 2.5; lambda 1 sends math to cheap too (0.5 - 0.25 > 0): cost 1
    assert nearest_lambda(pred_qm, cost_m, TEST, 2.4, lambdas=(0.0, 1.0)) == 0.0
    assert nearest_lambda(pred_qm, cost_m, TEST, 1.2, lambdas=(0.0, 1.0)) == 1.0


def test_rollouts_of_another_split_are_refused():
    stray = [dict(ROLLOUTS[0], id="elsewhere7")]
    with pytest.raises(ValueError, match="elsewhere7.*not of this split"):
        policy_rows(stray, TEST)
    with pytest.raises(ValueError, match="no evaluation rollouts"):
        policy_rows([], TEST)


def test_unknown_router_and_missing_run_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown router 'oracle'"):
        router_choices(TRAIN, TEST, "oracle", seed=0)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        run_gap(tmp_path)
    for broken in ('{"suite": "dcrouter"', '{"suite": "dcrouter", "data_dir": ""}', '[1, 2]'):
        (tmp_path / "config.json").write_text(broken)
        with pytest.raises(ValueError, match="is not a run's config"):
            run_gap(tmp_path)
    (tmp_path / "config.json").write_text('{"suite": "dcrouter", "data_dir": "", "seed": 0}')
    with pytest.raises(FileNotFoundError, match="no eval_rollouts"):
        run_gap(tmp_path)
