"""Crash-safe resume: `python -m launch.main` killed with SIGKILL (during SFT, evaluation, GRPO
or a checkpoint save) and started again with the same --workdir completes, with one
metrics row per (phase, step), the after-SFT results in its summary, and (the slow test)
the parameters of an uninterrupted run."""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GRPO_STEPS = 4
TINY = [
    "--config=launch/configs/quickstart.py", "--no_progress",
    "--config.synthetic.n_train_per_family=6", "--config.synthetic.n_test_per_family=2",
    "--config.tokenizer.vocab_size=400", "--config.model.num_layers=1", "--config.model.hidden_size=32",
    "--config.sft.steps=3", "--config.sft.batch_size=8", f"--config.grpo.steps={GRPO_STEPS}",
    "--config.grpo.instances_per_step=4", "--config.grpo.group_size=2",
    "--config.grpo.max_new_tokens_per_turn=12", "--config.grpo.max_total_tokens=12",
    "--config.grpo.max_info_tokens=6", "--config.eval.batch_size=14", "--config.eval.every=2",
    "--config.checkpoint.every=1", "--config.checkpoint.keep=2",
]


def _env(cache_dir: pathlib.Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    # restarts reuse the compiled programs (the test measures resumption, not compilation)
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return env


def start(workdir: pathlib.Path, cache_dir: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launch.main", *TINY, f"--workdir={workdir}"], cwd=REPO,
                            env=_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_to_completion(workdir, cache_dir) -> str:
    proc = start(workdir, cache_dir)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return err


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def rows(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def check_consistent(workdir) -> dict:
    """One metrics row per (phase, step); every GRPO step logged; the summary complete."""
    keys = [(r["phase"], r["step"]) for r in rows(workdir)]
    assert len(keys) == len(set(keys)), sorted(keys)
    assert sorted(s for p, s in keys if p == "train") == list(range(GRPO_STEPS))
    assert sorted(s for p, s in keys if p == "eval") == [1]  # eval.every=2: after step 1 (not the last)
    assert ("eval_sft", 0) in keys and ("sft", 0) in keys
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["grpo_steps"] == GRPO_STEPS and "sft_policy" in summary and "policy" in summary
    assert (workdir / "eval_rollouts" / "dataset_info.json").exists()
    return summary


def wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_kill_after_a_checkpoint_then_resume(tmp_path):
    """Fast variant: SIGKILL right after GRPO step 2's checkpoint, then the same command again."""
    workdir, cache = tmp_path / "run", tmp_path / "jax_cache"
    proc = start(workdir, cache)
    wait_for(workdir / "checkpoints" / "2" / "metadata", proc)
    kill(proc)
    stderr = run_to_completion(workdir, cache)
    assert "resumed from" in stderr and "at GRPO step" in stderr  # visible at the default verbosity
    summary = check_consistent(workdir)
    assert summary["sft_policy"]["greedy"] is True


def _params(workdir):
    from flax import nnx

    from recal_jax.models import from_pretrained

    model, _ = from_pretrained(workdir / "export")
    return [np.asarray(x) for x in __import__("jax").tree.leaves(nnx.state(model, nnx.Param))]


def _has_row(phase: str, step: int | None = None):
    def seen(workdir: pathlib.Path) -> bool:
        path = workdir / "metrics.jsonl"
        if not path.exists():
            return False
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("phase") == phase and (step is None or row.get("step") == step):
                return True
        return False
    return seen


def _saving(workdir: pathlib.Path) -> bool:
    """An orbax save in progress (its temporary step directory exists)."""
    return any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").glob("*"))


# (where the kill lands, what shows that the run got there); each restart resumes the last.
KILL_POINTS = [
    ("SFT", _has_row("sft", 0)),
    ("evaluation after SFT", _has_row("sft", 2)),
    ("GRPO", _has_row("train", 0)),
    ("checkpoint save", _saving),
    ("GRPO evaluation / later steps", _has_row("train", 1)),
    ("final evaluation and export", lambda w: (w / "checkpoints" / str(GRPO_STEPS)).exists()),
]


def kill_when(workdir, cache, reached, jitter: float) -> bool:
    """Starts the run, SIGKILLs it `jitter` seconds after `reached(workdir)`; False when the run
    ended first."""
    proc = start(workdir, cache)
    while not reached(workdir):
        if proc.poll() is not None:
            proc.communicate()
            return False
        time.sleep(0.01)
    time.sleep(jitter)
    alive = proc.poll() is None
    kill(proc)
    return alive


@pytest.mark.slow
def test_kills_at_random_points_match_an_uninterrupted_run(tmp_path):
    cache = tmp_path / "jax_cache"
    straight = tmp_path / "straight"
    run_to_completion(straight, cache)
    rng = random.Random(int(os.environ.get("RECAL_KILL_SEED", "0")))
    workdir = tmp_path / "killed"
    killed = [name for name, reached in KILL_POINTS
              if kill_when(workdir, cache, reached, rng.uniform(0.0, 0.4))]
    assert len(killed) >= 3, killed  # most kills land before the run ends
    run_to_completion(workdir, cache)
    summary, reference = check_consistent(workdir), check_consistent(straight)
    assert sorted((r["phase"], r["step"]) for r in rows(workdir)) == \
        sorted((r["phase"], r["step"]) for r in rows(straight))
    pick = lambda d: [{k: v for k, v in r.items() if not k.startswith("perf/")}  # noqa: E731
                      for r in sorted(rows(d), key=lambda r: (r["phase"], r["step"])) if r["phase"] == "train"]
    assert pick(workdir) == pick(straight)
    assert summary["sft_policy"] == reference["sft_policy"] and summary["policy"] == reference["policy"]
    for a, b in zip(_params(workdir), _params(straight), strict=True):
        np.testing.assert_array_equal(a, b)
