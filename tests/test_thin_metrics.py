"""experiments.thin_metrics: which rows and keys stay, written by hand."""

import json

import pytest

from experiments.thin_metrics import thin_file, thin_rows


def _rows():
    sft = [{"step": s, "phase": "sft", "loss": 1.0} for s in range(3)]
    train = [{"step": s, "phase": "train", "reward/answer": s / 10, "calibration/dataset_scale/3": 2.0,
              "calibration/dataset_reward_mean/12": 0.5, "calibration/adv_std_k/1": 0.7} for s in range(1, 8)]
    evals = [{"step": 7, "phase": "eval", "accuracy": 0.5}]
    return sft + train + evals


def test_keeps_other_phases_every_kth_and_the_last_train_step():
    kept = thin_rows(_rows(), every=3)
    assert [(r["phase"], r["step"]) for r in kept] == [
        ("sft", 0), ("sft", 1), ("sft", 2), ("train", 3), ("train", 6), ("train", 7), ("eval", 7)]
    train = [r for r in kept if r["phase"] == "train"]
    assert all(set(r) == {"step", "phase", "reward/answer", "calibration/adv_std_k/1"} for r in train)
    assert [r["reward/answer"] for r in train] == [0.3, 0.6, 0.7]


def test_every_one_keeps_every_row_and_a_bad_every_is_refused():
    assert len(thin_rows(_rows(), every=1)) == len(_rows())
    with pytest.raises(ValueError, match="--every must be >= 1"):
        thin_rows(_rows(), every=0)


def test_a_file_is_thinned_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    assert thin_file(path, every=2)
    first = path.read_text()
    # sft 0 1 2, train 2 4 6 and the last 7, eval
    assert "8 of 11 rows kept" in (tmp_path / "metrics.jsonl.thinned").read_text()
    assert not thin_file(path, every=5) and path.read_text() == first


def test_a_cut_line_and_a_step_logged_twice_are_read_as_a_run_reads_them(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = _rows()
    redone = {**rows[4], "reward/answer": 0.99}  # train step 2 again, after a restart
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps(redone) + "\n" + '{"step": 9, "pha')
    assert thin_file(path, every=2)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    train = [r for r in kept if r["phase"] == "train"]
    assert [(r["step"], r["reward/answer"]) for r in train] == [(4, 0.4), (6, 0.6), (7, 0.7), (2, 0.99)]
