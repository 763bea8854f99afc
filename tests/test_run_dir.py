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
