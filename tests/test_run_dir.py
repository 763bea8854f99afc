import json
import math

import numpy as np

from recal_jax.evaluation.stability import stability
from recal_jax.evaluation.run_dir import RunDir, flatten_metrics


def test_flatten_metrics_nests_and_expands_arrays():
    flat = flatten_metrics({"a": {"b": np.float32(1.5), "c": np.array([1, 2])}, "s": "text", "d": 3})
    assert flat == {"a/b": 1.5, "a/c/0": 1.0, "a/c/1": 2.0, "d": 3.0}


def test_metrics_roundtrip_and_truncate_on_resume(tmp_path):
    rd = RunDir(tmp_path, tensorboard=False)
    for step in range(4):
        rd.log(step, {"x": float(step), "bad": float("nan")})
    rd.truncate_metrics(2)
    rows = rd.read_metrics("train")
    assert [r["step"] for r in rows] == [0, 1]
    assert rows[1]["x"] == 1.0 and rows[1]["bad"] is None  # NaN is written as JSON null
    rd.write_summary({"acc": np.float64(0.5), "inf": math.inf})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"acc": 0.5, "inf": None}


def test_stability_figures_by_hand():
    rows = [{"reward/answer": a, "format_valid": f, "loss/grad_norm": g}
            for a, f, g in [(0.1, 0.9, 1.0), (0.2, 0.4, 1.0), (0.3, 0.9, 1.0), (0.5, 1.0, 9.0), (0.7, 1.0, 1.0),
                            (0.9, 1.0, 1.0)]]
    s = stability(rows)
    assert math.isclose(s["reward_std_last_third"], np.std([0.7, 0.9]))
    assert s["grad_norm_spikes"] == 1  # 9 > 5 x median 1
    assert s["collapsed"] is True and s["min_format_valid"] == 0.4


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_grpo_resume_keeps_sft_rows(tmp_path):
    rd = RunDir(tmp_path, tensorboard=False)
    for step in range(6):
        rd.log(step, {"loss": float(step)}, phase="sft")
    rd.log(0, {"eval": {"accuracy": 0.5}}, phase="eval_sft")
    for step in range(4):
        rd.log(step, {"x": float(step)}, phase="train")
    rd.log(3, {"eval": {"accuracy": 0.7}}, phase="eval")
    rd.truncate_metrics(2)  # resume from GRPO step 2
    assert [r["step"] for r in rd.read_metrics("sft")] == [0, 1, 2, 3, 4, 5]
    assert [r["step"] for r in rd.read_metrics("train")] == [0, 1]
    assert rd.read_metrics("eval") == [] and len(rd.read_metrics("eval_sft")) == 1


def test_rows_are_unique_per_phase_and_step_after_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "phase": "sft", "loss": 1.0}, {"step": 1, "phase": "sft", "loss": 2.0},
            {"step": 0, "phase": "train", "x": 1.0}, {"step": 0, "phase": "sft", "loss": 9.0}]
    # the last line was cut by a kill in the middle of its write
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 1, "phase": "tr')
    rd = RunDir(tmp_path, tensorboard=False)
    on_disk = _lines(path)  # compacted when opened: no cut line, one row per (phase, step)
    assert [(r["phase"], r["step"]) for r in on_disk] == [("sft", 1), ("train", 0), ("sft", 0)]
    assert on_disk[-1]["loss"] == 9.0  # the last row written wins
    rd.log(1, {"x": 5.0}, phase="train")
    rd.log(1, {"x": 6.0}, phase="train")  # a redone step
    assert [r["x"] for r in rd.read_metrics("train")] == [1.0, 6.0]
    rd.close()
    keys = [(r["phase"], r["step"]) for r in _lines(path)]
    assert len(keys) == len(set(keys)) == 4


def test_fresh_start_and_sft_eval(tmp_path):
    rd = RunDir(tmp_path, tensorboard=False)
    assert rd.read_sft_eval() is None
    rd.log(0, {"loss": 1.0}, phase="sft")
    rd.log(0, {"x": 1.0}, phase="train")
    rd.write_sft_eval({"accuracy": np.float32(0.25), "per_dataset": {"a": 0.5}})
    assert RunDir(tmp_path, tensorboard=False).read_sft_eval() == {"accuracy": 0.25, "per_dataset": {"a": 0.5}}
    rd.start_fresh()
    assert rd.read_sft_eval() is None
    assert [r["phase"] for r in rd.read_metrics()] == ["sft"]
