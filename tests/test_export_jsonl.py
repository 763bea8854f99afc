"""experiments.export_jsonl: a suite round-trips through the own-log directory format."""

from experiments.classical_baselines import load
from experiments.export_jsonl import export_suite
from recal_jax.data.loaders import load_jsonl_dir


def test_synthetic_suite_round_trips(tmp_path):
    original = load("synthetic", "", seed=3)
    back = load_jsonl_dir(export_suite("synthetic", "", tmp_path / "log", seed=3))
    for a, b in ((original.train, back.train), (original.test, back.test)):
        assert len(a.records) == len(b.records)
        assert a.datasets == b.datasets
        assert dict(a.models) == dict(b.models)
        assert a.protocol == b.protocol
        for ra, rb in zip(a.records, b.records):
            assert (ra.id, ra.dataset, ra.question) == (rb.id, rb.dataset, rb.question)
            assert dict(ra.scores) == dict(rb.scores)


def test_protocol_override_is_what_the_directory_declares(tmp_path):
    assert load("synthetic", "", seed=0).train.protocol == "multi_turn"
    back = load_jsonl_dir(export_suite("synthetic", "", tmp_path / "log", seed=0, protocol="single_call"))
    assert back.train.protocol == back.test.protocol == "single_call"
