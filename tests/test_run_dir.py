import fcntl
import json
import math
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from recal_jax.evaluation import run_dir
from recal_jax.evaluation.stability import stability
from recal_jax.evaluation.run_dir import RunDir, RunDirLocked, RunLock, config_differences, flatten_metrics


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


# ---------------------------------------------------------------- one run per directory

# A second process that takes the lock; run_dir.py is loaded by path (no JAX import: fast).
HOLDER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("run_dir", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
mod.RunLock(sys.argv[2]).acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def free_for_others(workdir) -> bool:
    """Whether a fresh open file description can take the lock (as another process would)."""
    fd = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_run_lock_refuses_a_second_process_until_the_holder_dies(tmp_path):
    workdir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, run_dir.__file__, str(workdir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked) as err:
            RunLock(workdir).acquire()
        assert str(workdir) in str(err.value) and f"pid {holder.pid} " in str(err.value)
        assert run_dir.lock_holder(workdir) == holder.pid
    finally:
        holder.kill()  # a crash: the OS drops the lock
        holder.wait(timeout=10)
    with RunLock(workdir) as lock:
        assert lock.held and not free_for_others(workdir)
        assert run_dir.lock_holder(workdir) == os.getpid()
    assert not lock.held and free_for_others(workdir)


def test_run_lock_is_reentrant_in_one_process(tmp_path):
    outer = RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # e.g. the grid worker, then the pipeline it calls
        assert not free_for_others(tmp_path)
    assert not free_for_others(tmp_path)  # the outer holder still has it
    outer.release()
    outer.release()  # a second release is a no-op
    assert free_for_others(tmp_path)


SAFE = ("grpo.steps", "grpo.stop_at_step", "eval.", "checkpoint.")


def test_config_differences_names_the_dotted_keys():
    stored = {"seed": 0, "grpo": {"steps": 10, "learning_rate": 3e-4, "kl_coef": 0.0},
              "calibration": {"preset": "recal", "weights": [0.5, 1.0]}, "eval": {"every": 5}}
    new = {"seed": 0, "grpo": {"steps": 20, "learning_rate": 0.1, "kl_coef": 0.0, "steps_per_eval": 2},
           "calibration": {"preset": "grpo", "weights": (0.5, 1.0)}, "eval": {"every": 7, "after_sft": True},
           "checkpoint": {"keep": 3}}
    assert config_differences(stored, new, SAFE) == ["calibration.preset", "grpo.learning_rate",
                                                     "grpo.steps_per_eval"]
    assert config_differences(stored, stored, SAFE) == []
    assert config_differences(stored, new, ()) == sorted(
        ["calibration.preset", "checkpoint.keep", "eval.after_sft", "eval.every", "grpo.learning_rate",
         "grpo.steps", "grpo.steps_per_eval"])


def test_a_field_added_since_the_stored_run_differs_only_off_its_default():
    """A config.json written before grpo.kl_schedule existed: the new field at its default is
    what that run did, so it resumes; at another value it is another run."""
    stored = {"grpo": {"steps": 10, "kl_coef": 0.1}}
    defaults = {"grpo": {"steps": 100, "kl_coef": 0.001, "kl_schedule": "constant"}}
    at_default = {"grpo": {"steps": 10, "kl_coef": 0.1, "kl_schedule": "constant"}}
    assert config_differences(stored, at_default, (), defaults=defaults) == []
    assert config_differences(stored, at_default, ()) == ["grpo.kl_schedule"]
    changed = {"grpo": {"steps": 10, "kl_coef": 0.1, "kl_schedule": "cosine"}}
    assert config_differences(stored, changed, (), defaults=defaults) == ["grpo.kl_schedule"]
    # a field the stored run has and the new config lacks still differs
    assert config_differences(at_default, stored, (), defaults=defaults) == ["grpo.kl_schedule"]


def test_config_differences_compares_as_config_json_stores():
    new = ml_collections.ConfigDict({"grpo": {"max_grad_norm": math.inf, "weights": (1, 2)}, "pool": {}})
    stored = json.loads(json.dumps(run_dir._to_jsonable(new.to_dict())))  # inf -> null, tuple -> list
    assert config_differences(stored, new, ()) == []
    stored["pool"] = {"endpoints": "e.json"}
    del stored["grpo"]["weights"]
    assert config_differences(stored, new, ()) == ["grpo.weights", "pool", "pool.endpoints"]
