"""The one per-dataset mean (evaluation, reference routers, GRPO metrics), against hand-computed cases."""

import numpy as np
import pytest

from recal_jax.evaluation.per_dataset import per_dataset_mean


def test_means_by_hand_and_absent_datasets_left_out():
    values = np.array([1.0, 0.0, 0.5, 1.0, 0.25])
    ids = np.array([2, 0, 2, 2, 0])
    got = per_dataset_mean(values, ids, ("a", "b", "c"))
    assert got == {"a": pytest.approx(0.125), "c": pytest.approx(2.5 / 3)}  # "b" has no entry
    assert list(got) == ["a", "c"]  # in the datasets' order, not the entries'
    assert all(type(v) is float for v in got.values())
    assert per_dataset_mean(np.zeros(0), np.zeros(0, int), ("a",)) == {}


def test_rows_of_a_masked_batch_match_the_grpo_selection():
    # training: answer_ug[valid] with each instance's dataset id repeated over its group
    rng = np.random.default_rng(0)
    answer_ug = rng.random((6, 4)).astype(np.float32)
    valid_ug = rng.random((6, 4)) > 0.3
    ids_u = np.array([0, 1, 0, 2, 1, 0])
    ids_ug = np.broadcast_to(ids_u[:, None], valid_ug.shape)
    got = per_dataset_mean(answer_ug[valid_ug], ids_ug[valid_ug], ("x", "y", "z"))
    for d, name in enumerate("xyz"):
        sel = [answer_ug[u, g] for u in range(6) for g in range(4) if valid_ug[u, g] and ids_u[u] == d]
        assert got[name] == pytest.approx(sum(sel) / len(sel), rel=1e-6)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="1-D"):
        per_dataset_mean(np.zeros(3), np.zeros(2, int), ("a",))
    with pytest.raises(ValueError, match="1-D"):
        per_dataset_mean(np.zeros((2, 2)), np.zeros((2, 2), int), ("a",))
