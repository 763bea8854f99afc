"""multi_hop_summary: question-weighted means over the multi-hop datasets and the rest."""
import pytest

from recal_jax.evaluation.multi_hop import multi_hop_summary


def test_group_means_weight_datasets_by_their_questions():
    counts = {"a": 10, "b": 30, "c": 20}  # b and c are multi-hop
    policy = {"per_dataset": {"a": 0.5, "b": 0.2, "c": 0.8},
              "calls_per_dataset": {"a": 1.0, "b": 2.0, "c": 1.5},
              "multi_call_share_per_dataset": {"a": 0.0, "b": 1.0, "c": 0.5}}
    refs = {"oracle": {"per_dataset": {"a": 1.0, "b": 0.5, "c": 0.0}}}
    out = multi_hop_summary(policy, refs, ["b", "c"], counts)
    assert out["multi_hop"]["datasets"] == ["b", "c"] and out["one_hop"]["datasets"] == ["a"]
    # by hand: (30 * 0.2 + 20 * 0.8) / 50 = 0.44; calls (60 + 30) / 50 = 1.8; share (30 + 10) / 50 = 0.8
    assert out["multi_hop"]["accuracy"] == pytest.approx(0.44)
    assert out["multi_hop"]["calls_per_question"] == pytest.approx(1.8)
    assert out["multi_hop"]["multi_call_share"] == pytest.approx(0.8)
    assert out["multi_hop"]["references"]["oracle"] == pytest.approx(0.3)
    assert out["one_hop"]["accuracy"] == pytest.approx(0.5) and out["one_hop"]["references"]["oracle"] == 1.0


def test_a_group_without_questions_is_none():
    out = multi_hop_summary({"per_dataset": {"a": 1.0}}, {}, [], {"a": 3})
    assert out["multi_hop"]["accuracy"] is None and out["multi_hop"]["calls_per_question"] is None
