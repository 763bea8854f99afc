"""Config and data errors: each names its flag (or file and line); the launcher prints it as
one line on stderr, with no traceback, and exits with status 2."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from launch.configs import dcrouter, jsonl, nq_pool6, qa7_live, quickstart, synthetic, synthetic_multi_turn
from recal_jax.training.run_config import ConfigError, RunConfig, parse_config

REPO = pathlib.Path(__file__).resolve().parents[1]


SHIPPED = [quickstart, synthetic, synthetic_multi_turn, dcrouter, nq_pool6, qa7_live, jsonl]


@pytest.mark.parametrize("module", SHIPPED, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_shipped_configs_parse_and_round_trip(module, tmp_path):
    """Every shipped config parses, and its typed sections survive config.json and back."""
    c = module.get_config()
    if c.suite != "synthetic":
        c.data_dir = str(tmp_path)  # the check needs a directory, not the data
    cfg = parse_config(c)
    assert isinstance(cfg, RunConfig) and cfg.run.suite == c.suite
    assert cfg.grpo.group_size == c.grpo.group_size and cfg.sft.steps == c.sft.steps
    assert cfg.calibration.preset == c.calibration.preset
    back = parse_config(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


def validate_config(c):
    parse_config(c)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("grpo.group_size", 1, "GRPO needs two or more rollouts per group"),
        ("grpo.steps", -1, "must be >= 0"),
        ("sft.steps", -3, "must be >= 0"),
        ("grpo.instances_per_step", 0, "must be >= 1"),
        ("max_train_instances", -5, "must be >= 0"),
        ("max_test_instances", -1, "must be >= 0"),
        ("grpo.temperature", 0.0, "must be a finite number > 0"),
        ("grpo.temperature", math.inf, "must be a finite number > 0"),
        ("grpo.temperature", math.nan, "must be a finite number > 0"),
        ("grpo.top_p", 0.0, r"must lie in \(0, 1\]"),
        ("grpo.top_p", 1.5, r"must lie in \(0, 1\]"),
        ("suite", "nope", "unknown suite"),
        ("protocol", "chat", "unknown protocol"),
        ("calibration.preset", "recall", "unknown preset"),
        ("reward.answer_metric", "bleu", "unknown answer metric"),
        ("grpo.microbatches", 3, "must divide the 64 rollouts"),
        ("log_every", 0, "must be >= 1"),
        ("calibration.ema_decay", 1.5, r"ema_decay must lie in \[0, 1\]"),
        ("calibration.weights", (1.0, 2.0), "weights must be 5 finite numbers"),
        ("calibration.w_min", 3.0, "needs 0 < w_min <= w_max"),
        ("calibration.baseline", "median", "baseline must be one of"),
        ("sft.think", "bogus", "expected one of"),
        ("sft.routing", "best", "expected one of"),
        ("sft.until_copy_accuracy", 1.5, r"must lie in \[0, 1\]"),
        ("model.remat", "some", "expected one of"),
        ("model.attention_impl", "flash", "expected one of"),
        ("tokenizer.question_cut", "middle", "expected one of"),
        ("grpo.kl_schedule", "exponential", "expected one of"),
        ("grpo.kl_coef_final", -0.1, "must be a finite number >= 0"),
    ],
)
def test_each_error_names_its_flag(flag, value, message):
    c = quickstart.get_config()
    section, _, name = flag.rpartition(".")
    (c[section] if section else c)[name] = value
    with pytest.raises(ConfigError, match=message) as err:
        validate_config(c)
    assert str(err.value).startswith(f"--config.{flag}=")


def test_cross_checks():
    c = synthetic_multi_turn.get_config()
    c.reward.answer_metric = "score"  # the logged score exists under single_call only
    with pytest.raises(ConfigError, match=r"^--config.reward.answer_metric='score': 'score' needs the single_call"):
        validate_config(c)
    c = quickstart.get_config()
    c.sft.until_copy_accuracy = 0.9  # single_call has no answer to copy
    with pytest.raises(ConfigError, match=r"^--config.sft.until_copy_accuracy=0.9: the held-out criterion"):
        validate_config(c)
    c = quickstart.get_config()
    c.grpo.kl_schedule, c.grpo.kl_coef = "cosine", 0.0  # nothing to decay from, and no reference model
    with pytest.raises(ConfigError, match=r"^--config.grpo.kl_schedule='cosine': starts at grpo.kl_coef"):
        validate_config(c)
    c = jsonl.get_config()
    with pytest.raises(ConfigError, match=r"^--config.data_dir='': suite 'jsonl' reads logged data"):
        validate_config(c)
    c.data_dir = "/nonexistent/routing-log"
    with pytest.raises(ConfigError, match="no such directory"):
        validate_config(c)


def launch(*args, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "launch.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), lines
    assert sum(line.startswith("error: ") for line in lines) == 1
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def test_launcher_config_error_is_one_line(tmp_path):
    result = launch("--config.grpo.group_size=1", f"--workdir={tmp_path / 'run'}")
    assert_one_line_error(result, "--config.grpo.group_size=1", "two or more rollouts per group")
    assert not (tmp_path / "run").exists()  # rejected before any work started


def test_launcher_calibration_error_names_the_field(tmp_path):
    result = launch("--config.calibration.tau_min=2.0", "--config.calibration.gate_mode=group_best",
                    f"--workdir={tmp_path / 'run'}")
    assert_one_line_error(result, "--config.calibration.tau_min=2.0", "tau_min <= tau")


def test_launcher_data_error_names_file_and_line(tmp_path):
    data = tmp_path / "log"
    data.mkdir()
    (data / "pool.json").write_text('{"a": {"price_in": 1, "price_out": 1}, "b": {"price_in": 2, "price_out": 2}}')
    record = '{{"id": "{}", "dataset": "d", "question": "q{}?", "golden_answers": [], "scores": {{"a": 1, "b": {}}}}}'
    (data / "train.jsonl").write_text("\n".join([record.format(1, 1, 0), record.format(2, 2, 0),
                                                 record.format(1, 3, 1)]) + "\n")
    (data / "test.jsonl").write_bytes(record.format(9, 9, 0).encode() + b"\n" + b'{"id": "\xff"}\n')
    result = launch("--config=launch/configs/jsonl.py", f"--config.data_dir={data}", f"--workdir={tmp_path / 'run'}")
    assert_one_line_error(result, f"{data / 'test.jsonl'}:2:", "invalid UTF-8")
    (data / "test.jsonl").write_text(record.format(9, 9, 0) + "\n")
    result = launch("--config=launch/configs/jsonl.py", f"--config.data_dir={data}", f"--workdir={tmp_path / 'run'}")
    assert_one_line_error(result, f"{data / 'train.jsonl'}:3:", "duplicate id '1'", "first at")


def test_bad_split_pattern_is_a_config_error():
    from launch.configs import compose

    cfg = compose.get_config()
    cfg.tokenizer.split_pattern = "(unclosed"
    with pytest.raises(ConfigError, match="tokenizer.split_pattern"):
        parse_config(cfg)
