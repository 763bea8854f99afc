"""The whole job on a tiny synthetic suite: outputs, exact resume, and the reference routers."""
import json

import jax
import numpy as np
import pytest

from launch.configs import quickstart
from recal_jax.training.pipeline import train_and_evaluate


def tiny_config(**grpo):
    c = quickstart.get_config()
    c.synthetic.n_train_per_family = 6
    c.synthetic.n_test_per_family = 2
    c.tokenizer.vocab_size = 400
    c.model.num_layers = 1
    c.model.hidden_size = 32
    c.sft.steps = 3
    c.sft.batch_size = 8
    c.grpo.instances_per_step = 4
    c.grpo.group_size = 2
    c.grpo.max_new_tokens_per_turn = 12
    c.grpo.max_total_tokens = 40
    c.grpo.max_info_tokens = 6
    c.eval.batch_size = 14
    c.eval.after_sft = False
    for k, v in grpo.items():
        c.grpo[k] = v
    return c


def _params(workdir):
    from recal_jax.models import from_pretrained

    model, _ = from_pretrained(workdir / "export")
    from flax import nnx

    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_run_writes_its_outputs(tmp_path):
    result = train_and_evaluate(tiny_config(steps=2), tmp_path, progress=False)
    for name in ("config.json", "metrics.jsonl", "summary.json", "training_curves.png", "accuracy_vs_cost.png"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "export" / "config.json").exists()
    assert list((tmp_path / "tensorboard").iterdir())
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["grpo_steps"] == 2
    assert 0.0 <= saved["policy"]["accuracy"] <= 1.0
    assert set(saved["policy"]["per_dataset"]) <= set(saved["references"]["random"]["per_dataset"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["phase"] == "train"]
    assert [r["step"] for r in train] == [0, 1]
    for r in train:
        assert all(np.isfinite(v) for v in r.values() if isinstance(v, float))
    # the state is placed on the train step's shardings before step 0: a later step of the same
    # shapes compiles nothing (step 0 compiles the sampler, log-probs, calibrate and the step)
    assert train[0]["perf/compiles"] > 0 and train[1]["perf/compiles"] == 0
    assert result.finished and result.policy == saved["policy"] and result.grpo_steps == 2
    assert set(result.references) == set(saved["references"])
    # the breakdown covers the wall time: the phases sum to it, and "other" stays small
    t = saved["timings"]
    assert sum(t["phases"].values()) == pytest.approx(t["total_seconds"], rel=1e-3)
    assert t["other_share"] < 0.05, t
    assert t["compiles"]["count"] > 0


def test_resume_is_exact(tmp_path):
    """2 GRPO steps straight == 1 step, stop, resume, 1 step: same params and metrics, bit for bit."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_and_evaluate(tiny_config(steps=2), straight, progress=False)
    first = train_and_evaluate(tiny_config(steps=2, stop_at_step=1), split, progress=False)
    assert first.stopped_at_step == 1 and not first.finished
    assert not (split / "summary.json").exists()
    train_and_evaluate(tiny_config(steps=2), split, progress=False)
    for a, b in zip(_params(straight), _params(split), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    pick = lambda d: [{k: v for k, v in r.items() if not k.startswith("perf/")}  # noqa: E731
                      for r in rows(d) if r["phase"] == "train"]
    assert pick(straight) == pick(split)


def test_unknown_suite_is_a_clear_error(tmp_path):
    c = tiny_config()
    c.suite = "nope"
    with pytest.raises(ValueError, match="--config.suite='nope': unknown suite"):
        train_and_evaluate(c, tmp_path, progress=False)


def test_real_suite_without_data_dir_is_a_clear_error(tmp_path):
    c = tiny_config()
    c.suite = "dcrouter"
    c.data_dir = ""
    with pytest.raises(ValueError, match="data_dir"):
        train_and_evaluate(c, tmp_path, progress=False)
