"""experiments/bench_loop.py: the bandwidth bound by hand, the XLA flags, the options, and
the whole benchmark at tiny sizes on CPU (the command line, as CI runs it)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import bench_loop
from experiments.bench_loop import (
    BenchOptions, DecodeCall, apply_options, command_buffer_mode_from_argv, decode_bound_summary,
    decode_bound_tokens_per_s, decode_call_bytes, decode_step_bytes, kv_bytes_per_position, xla_flags_for,
)
from launch.gpu_check import memory_bandwidth_per_device

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the bound, by hand

def test_decode_step_bytes_and_bound_by_hand():
    # 1000 parameter bytes + 4 rows x 25 positions x 10 bytes = 2000 bytes per step;
    # at 1e6 B/s that is 500 steps/s of 4 tokens = 2000 tokens/s
    assert decode_step_bytes(1000, 10, rows=4, live_len=25) == 2000
    assert decode_bound_tokens_per_s(4, 1e6, 2000) == pytest.approx(2000)


def test_kv_bytes_per_position_by_hand():
    # Qwen2.5-0.5B in bf16: K and V x 24 layers x 2 KV heads x 64 dims x 2 bytes
    assert kv_bytes_per_position(24, 2, 64, 2) == 2 * 24 * 2 * 64 * 2 == 12288


def test_decode_call_bytes_sums_the_steps():
    # prompt 3, two steps: live lengths 4 and 5 -> (1000 + 4*4*10) + (1000 + 4*5*10) = 1160 + 1200
    assert decode_call_bytes(1000, 10, rows=4, prompt_len=3, steps=2) == 2360
    assert decode_call_bytes(1000, 10, rows=4, prompt_len=3, steps=0) == 0


def test_decode_bound_summary_by_hand():
    call = DecodeCall(rows=4, prompt_len=3, steps=2, generated=8, seconds=0.01)
    out = decode_bound_summary([call], param_bytes=1000, kv_bytes_per_pos=10, bandwidth=1e6)
    assert out["decode_tokens"] == 8 and out["decode_steps"] == 2
    assert out["bytes_per_step"] == pytest.approx(2360 / 2)
    assert out["mean_live_len"] == pytest.approx(4.5)
    assert out["tokens_per_s_bound"] == pytest.approx(4 * 1e6 / 1180)
    assert out["decode_tokens_per_s"] == pytest.approx(800)
    # the fraction is also the bandwidth-bound time over the measured time: 2360 B / 1e6 B/s / 0.01 s
    assert out["achieved_fraction"] == pytest.approx(2360 / 1e6 / 0.01)
    # calls of 2 and 4 rows, one step each from an empty prompt: 1020 + 1040 bytes for 6 tokens
    calls = [DecodeCall(2, 0, 1, 2, 0.5), DecodeCall(4, 0, 1, 4, 0.5)]
    out = decode_bound_summary(calls, param_bytes=1000, kv_bytes_per_pos=10, bandwidth=1e6)
    assert out["rows"] == pytest.approx(3)
    assert out["tokens_per_s_bound"] == pytest.approx(6 * 1e6 / 2060)
    unknown = decode_bound_summary([call], param_bytes=1000, kv_bytes_per_pos=10, bandwidth=None)
    assert unknown["tokens_per_s_bound"] is None and unknown["achieved_fraction"] is None
    assert unknown["bytes_per_step"] == pytest.approx(1180)


def test_memory_bandwidth_table():
    assert memory_bandwidth_per_device("NVIDIA H200") == 4.8e12
    assert memory_bandwidth_per_device("NVIDIA H100 80GB HBM3") == 3.35e12
    assert memory_bandwidth_per_device("NVIDIA H100 PCIe") == 2.0e12
    assert memory_bandwidth_per_device("NVIDIA GH200 480GB") == 4.0e12
    assert memory_bandwidth_per_device("cpu") is None


# ------------------------------------------------------------------ flags and options

def test_xla_flags_for_command_buffers():
    current = "--xla_force_host_platform_device_count=8 --xla_gpu_enable_command_buffer=FUSION"
    assert xla_flags_for("keep", current) == current
    assert xla_flags_for("loops", current) == ("--xla_force_host_platform_device_count=8 "
                                               "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL")
    assert xla_flags_for("off", "") == "--xla_gpu_enable_command_buffer="
    with pytest.raises(ValueError, match="xla_command_buffers"):
        xla_flags_for("graphs", "")
    assert command_buffer_mode_from_argv(["prog", "--xla_command_buffers=loops"]) == "loops"
    assert command_buffer_mode_from_argv(["prog", "--xla_command_buffers", "off"]) == "off"
    assert command_buffer_mode_from_argv(["prog", "--rows=8"]) == "keep"


def test_rows_set_instances_times_group_size():
    config = {"grpo": {"group_size": 8, "instances_per_step": 8}, "model": {"preset": "tiny", "num_layers": 2}}
    for rows in (64, 512, 1024):
        grpo = apply_options(config, BenchOptions(rows=rows))["grpo"]
        assert grpo["instances_per_step"] * grpo["group_size"] == rows and grpo["group_size"] == 8
    tiny = apply_options(config, BenchOptions(rows=4, iterations=3))
    assert (tiny["grpo"]["instances_per_step"], tiny["grpo"]["group_size"], tiny["grpo"]["steps"]) == (1, 4, 3)
    with pytest.raises(ValueError, match="multiple of grpo.group_size"):
        apply_options(config, BenchOptions(rows=12))
    preset = apply_options(config, BenchOptions(model_preset="qwen2.5-0.5b"))["model"]
    assert (preset["preset"], preset["num_layers"], preset["hidden_size"]) == ("qwen2.5-0.5b", 0, 0)
    assert config["model"]["num_layers"] == 2  # the caller's config is left alone


def test_bad_options_raise():
    with pytest.raises(ValueError, match="warmup"):
        BenchOptions(iterations=2, warmup=2)
    with pytest.raises(ValueError, match="reference"):
        BenchOptions(reference="both")
    with pytest.raises(ValueError, match="rows"):
        BenchOptions(rows=1)


# ------------------------------------------------------------------ the scripted rollouts

def _script(protocol, **kwargs):
    from recal_jax.models.tokenizer import protocol_special_tokens, train_bpe

    names = ["small-model", "big-model"]
    tok = train_bpe(["pick a model done unknown the question x"] * 4, vocab_size=300,
                    special_tokens=protocol_special_tokens(names))
    return bench_loop.RolloutScript(tok, names, protocol, seed=0, **kwargs), tok


def _sampled(rows, width):
    import numpy as np

    from recal_jax.rollout.sampler import SampleOutput

    logp = -np.arange(1, rows * width + 1, dtype=np.float32).reshape(rows, width)
    return SampleOutput(np.ones((rows, width), np.int32), logp, np.full((rows,), width, np.int32))


def test_script_searches_then_answers():
    import numpy as np

    script, tok = _script("multi_turn", searches=2, segment_tokens=0)
    first = script.replace(_sampled(3, 64), first_round=True, budget=64)
    texts = [tok.decode(np.asarray(first.tokens_bn)[i, :n]) for i, n in enumerate(first.lengths_b)]
    assert all("<search>" in t and t.endswith("</search>") and ": the question" in t for t in texts)
    # the sampler's log-probs are kept under the segment
    n = int(first.lengths_b[0])
    assert np.array_equal(np.asarray(first.logprobs_bn)[0, :n], np.asarray(_sampled(3, 64).logprobs_bn)[0, :n])
    second = script.replace(_sampled(3, 64), first_round=False, budget=64)
    assert "</search>" in tok.decode(np.asarray(second.tokens_bn)[0, :int(second.lengths_b[0])])
    third = script.replace(_sampled(3, 64), first_round=False, budget=64)
    assert tok.decode(np.asarray(third.tokens_bn)[0, :int(third.lengths_b[0])]).endswith("</answer>")
    cut = script.replace(_sampled(3, 64), first_round=True, budget=5)
    assert list(cut.lengths_b) == [5, 5, 5]


def test_script_pads_segments_and_routes_once_in_single_call():
    script, tok = _script("single_call", searches=1, segment_tokens=0)
    plain = len(script.search_ids[0])
    assert "</search>" in tok.decode(script.search_ids[0]) and ":" not in tok.decode(script.search_ids[0])
    padded, _ = _script("single_call", searches=1, segment_tokens=plain + 20)
    assert plain + 20 - len(padded._filler) < len(padded.search_ids[0]) <= plain + 20
    out = script.replace(_sampled(2, 32), first_round=False, budget=32)  # single_call: always the search
    assert "</search>" in tok.decode(out.tokens_bn[0, :int(out.lengths_b[0])])


# ------------------------------------------------------------------ the whole benchmark

TINY_FLAGS = [
    "--config=launch/configs/synthetic_multi_turn.py",
    "--config.model.num_layers=1", "--config.tokenizer.vocab_size=512",
    "--config.synthetic.n_train_per_family=10", "--config.synthetic.n_test_per_family=2",
    "--config.grpo.max_total_tokens=64", "--config.grpo.max_new_tokens_per_turn=24",
    "--config.grpo.max_info_tokens=8",
    "--rows=4", "--iterations=2", "--warmup=1",
]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_loop") / "report.json"
    bandwidth = 1e11  # given, as CPU has no entry in the table
    cmd = [sys.executable, "-m", "experiments.bench_loop", *TINY_FLAGS, "--xla_command_buffers=loops",
           f"--memory_bandwidth={bandwidth}", f"--out={out}"]
    # one CPU device (conftest's XLA_FLAGS force 8 for the sharding tests), a flag of our own kept
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == report  # the same JSON on stdout
    return report, bandwidth


def test_tiny_run_reports_every_key(tiny_report):
    report, _ = tiny_report
    for key in ("device_kind", "device_count", "model", "rows", "seconds_per_iteration",
                "e2e_tokens_per_s_per_device", "rollout_generated_tokens_per_s", "train_step", "mfu",
                "breakdown", "warmup", "compiles", "decode_bound", "workload", "per_iteration", "xla_flags"):
        assert key in report, key
    assert report["device_kind"] == "cpu" and report["device_count"] == 1
    assert report["rows"] == 4 and report["instances_per_step"] * report["group_size"] == 4
    assert report["iterations"] == 2 and report["warmup_iterations"] == 1 and report["steady_iterations"] == 1
    for key in ("seconds_per_iteration", "e2e_tokens_per_s_per_device", "rollout_generated_tokens_per_s"):
        assert _positive(report[key]), (key, report[key])
    assert _positive(report["model"]["params"]) and _positive(report["model"]["param_bytes"])
    step = report["train_step"]
    assert _positive(step["tokens"]) and _positive(step["seconds"]) and _positive(step["flops_per_token"])
    assert report["mfu"] is None and step["mfu"] is None and "n/a" in step["mfu_note"]  # no CPU peak
    assert report["compiles"]["total"] >= report["compiles"]["warmup"] > 0
    assert _positive(report["warmup"]["compile_seconds"])
    # the command-buffer flag reached the program's XLA_FLAGS, the caller's own flag kept
    assert report["xla_flags"].split() == ["--xla_cpu_enable_fast_math=false",
                                           "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"]


def test_tiny_run_is_multi_turn_with_pool_calls(tiny_report):
    report, _ = tiny_report
    work = report["workload"]
    assert report["protocol"] == "multi_turn" and work["scripted"]
    assert work["pool_calls_per_rollout"] > 0 and work["turns_per_rollout"] > 1
    assert work["sampler_calls_per_iteration"] >= 2
    assert report["breakdown"]["phases"]["pool_calls"] > 0 and report["breakdown"]["phases"]["scoring"] > 0


def test_breakdown_parts_do_not_exceed_the_total(tiny_report):
    report, _ = tiny_report
    breakdown = report["breakdown"]
    phases = breakdown["phases"]
    assert set(phases) == set(bench_loop.PHASES)
    assert all(v >= 0 for v in phases.values())
    measured = sum(v for k, v in phases.items() if k != "other")
    assert measured <= breakdown["total_seconds"] * (1 + 1e-6)
    assert sum(phases.values()) == pytest.approx(breakdown["total_seconds"], rel=1e-6)
    for key in ("generation", "train_step", "calibration", "reference_logprobs"):
        assert phases[key] > 0, key
    for it in report["per_iteration"]:
        assert sum(v for k, v in it["phases"].items() if k != "other") <= it["seconds"] * (1 + 1e-6)


def test_train_flops_follow_gpu_check(tiny_report):
    from launch.gpu_check import train_flops_per_token
    from recal_jax.models.config import ModelConfig

    report, _ = tiny_report
    m = report["model"]
    config = ModelConfig.preset(m["preset"], num_layers=m["num_layers"], vocab_size=m["vocab_size"])
    (steady,) = [it for it in report["per_iteration"] if not it["warmup"]]
    # shared-prompt layout (the default): the prompts once per group, then the completions,
    # which attend to prompt + completion
    (prompts, prompt_width, prompt_attended), (rows, width, attended) = steady["train_pieces"]
    assert prompt_attended == prompt_width and attended == prompt_width + width
    assert report["shared_prompt"] and rows == prompts * report["group_size"]
    tokens = prompts * prompt_width + rows * width
    flops = (prompts * prompt_width * train_flops_per_token(config, prompt_width, reference_forward=False)
             + rows * width * train_flops_per_token(config, attended, reference_forward=False))  # reference=separate
    assert report["train_step"]["flops_per_token"] == pytest.approx(flops / tokens)
    assert report["train_step"]["tokens"] == tokens


def test_decode_bound_of_the_run(tiny_report):
    report, bandwidth = tiny_report
    bound = report["decode_bound"]
    m = report["model"]
    assert bound["bandwidth_bytes_per_s"] == bandwidth and bound["bandwidth_source"] == "--memory_bandwidth"
    assert bound["param_bytes"] == m["param_bytes"]  # float32, tied embeddings
    assert bound["kv_bytes_per_position"] == kv_bytes_per_position(m["num_layers"], m["num_kv_heads"],
                                                                   m["head_dim"], 4)
    calls = [DecodeCall(**c) for it in report["per_iteration"] if not it["warmup"] for c in it["decode_calls"]]
    total_bytes = sum(decode_call_bytes(bound["param_bytes"], bound["kv_bytes_per_position"], c.rows,
                                        c.prompt_len, c.steps) for c in calls)
    decode_tokens = sum(c.rows * c.steps for c in calls)
    assert bound["decode_tokens"] == decode_tokens > 0
    assert bound["tokens_per_s_bound"] == pytest.approx(decode_tokens * bandwidth / total_bytes)
    assert bound["achieved_fraction"] == pytest.approx(bound["decode_tokens_per_s"] / bound["tokens_per_s_bound"])
    assert _positive(bound["achieved_fraction"])
