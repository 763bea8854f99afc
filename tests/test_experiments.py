"""Experiment tooling: grid expansion, run naming, skip-if-done, dry run, and the report's math."""

from __future__ import annotations

import json
import math
import os
import pathlib
import types
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from scipy import stats

from experiments import grid_layout, grid_stats, report, report_plots, run_grid
from launch.configs import base as base_config
from launch.configs.base import score_log_recipe
from recal_jax.calibration import CalibrationConfig
from recal_jax.calibration.config import ROUTE

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- naming and grid expansion


def test_run_names_round_trip():
    assert grid_layout.run_name("grpo", 0) == "grpo-s0"
    assert grid_layout.run_name("recal", 2, 0.25) == "recal-rw0.25-s2"
    assert grid_layout.run_name("recal_no_gate", 1, 1.0) == "recal_no_gate-rw1-s1"
    assert grid_layout.run_name("gdpo", 0, 0) == "gdpo-rw0-s0"
    for args in [("grpo", 3, None), ("recal_no_dataset_norm", 11, 0.5), ("gdpo", 0, 1e-5)]:
        preset, seed, rw = args
        assert grid_layout.parse_run_name(grid_layout.run_name(*args)) == (preset, rw, seed)
    assert grid_layout.sft_run_name(4) == "_sft-s4"
    for bad in ["grpo", "grpo-sx", "grpo-rw-s1", "-s1", "recal-rw0.5", "_sft-s0"]:
        with pytest.raises(ValueError):
            grid_layout.parse_run_name(bad)
    with pytest.raises(ValueError, match="route weight"):
        grid_layout.run_name("grpo", 0, -0.5)
    with pytest.raises(ValueError, match="seed"):
        grid_layout.run_name("grpo", -1)


def _grid(presets=("grpo", "recal"), seeds=(0, 1), route_weights=(), overrides=None, share_sft=False,
          suites=("synthetic",)):
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/synthetic.py"
    g.suites = suites
    g.presets = presets
    g.seeds = seeds
    g.route_weights = route_weights
    g.share_sft = share_sft
    g.overrides = ml_collections.ConfigDict(overrides or {"grpo": {"steps": 3}, "sft": {"steps": 2}})
    return g


def test_expand_grid_order_and_paths(tmp_path):
    runs = run_grid.expand_grid(_grid(presets=("grpo", "recal"), seeds=(0, 1), route_weights=(0.0, 0.5)))
    assert [r.key for r in runs] == [
        "synthetic/grpo-rw0-s0", "synthetic/grpo-rw0-s1", "synthetic/grpo-rw0.5-s0", "synthetic/grpo-rw0.5-s1",
        "synthetic/recal-rw0-s0", "synthetic/recal-rw0-s1", "synthetic/recal-rw0.5-s0", "synthetic/recal-rw0.5-s1"]
    assert runs[2].path(tmp_path) == tmp_path / "synthetic" / "grpo-rw0.5-s0"
    assert len(run_grid.expand_grid(_grid())) == 4
    with pytest.raises(ValueError, match="unknown preset"):
        run_grid.expand_grid(_grid(presets=("grpo", "ppo")))
    with pytest.raises(ValueError, match="seeds"):
        run_grid.expand_grid(_grid(seeds=(0, -1)))


def test_sweep_point_at_the_presets_own_route_weight_is_the_plain_run():
    own = grid_layout.own_route_weight("recal")
    assert own == CalibrationConfig.preset("recal").weights[ROUTE]
    runs = run_grid.expand_grid(_grid(presets=("recal",), seeds=(0,), route_weights=(0.0, own, 1.0)))
    assert [r.name for r in runs] == ["recal-rw0-s0", "recal-s0", "recal-rw1-s0"]
    assert run_grid.sweep_weight("recal", None) is None and run_grid.sweep_weight("recal", 2) == 2.0


# grid -> the grid whose shared SFT warm starts it reuses (run_grid refuses a changed SFT config)
SHARES_SFT_WITH = {"dcrouter_cost": "dcrouter", "dcrouter_ext": "dcrouter", "synthetic_cost": "synthetic",
                   "compose_cost": "compose"}


def test_grid_configs_expand_to_the_planned_sizes(tmp_path):
    # dcrouter: 9 + 2 extension presets x 3 seeds. dcrouter_cost: 4 presets x 4 route weights x
    # 3 seeds; the 12 at each preset's own route weight (0.25; router_r1's: 0) are the dcrouter
    # grid's plain runs (checked below).
    # synthetic_cost: 4 presets x 3 route weights x 3 seeds, 12 of them the synthetic grid's plain runs.
    sizes = {"synthetic": 27, "dcrouter": 33, "nq_pool6": 9, "dcrouter_cost": 48, "dcrouter_ext": 6,
             "dcrouter_long": 9, "synthetic_cost": 36, "compose": 24, "compose_cost": 18, "dcrouter_recipe": 36}
    for name, size in sizes.items():
        grid = run_grid.load_config_file(ROOT / "experiments" / "grid_configs" / f"{name}.py")
        runs = run_grid.expand_grid(grid)
        assert len(runs) == size, name
        assert run_grid.share_sft(grid), name
        jobs = run_grid.plan_jobs(grid, tmp_path)
        assert [j.name for j in jobs[:3]] == ["_sft-s0", "_sft-s1", "_sft-s2"] and jobs[3:] == runs, name
        config = run_grid.build_run_config(grid, runs[-1], tmp_path)
        assert config.calibration.preset == runs[-1].preset
        assert config.model.pretrained_path == str(tmp_path.resolve() / runs[-1].directory
                                                   / f"_sft-s{runs[-1].seed}" / "export")
        assert config.sft.steps == 0 and config.eval.after_sft
        sft = run_grid.build_run_config(grid, jobs[0], tmp_path)
        assert sft.sft.steps > 0 and sft.grpo.steps == 0 and not sft.eval.after_sft
        if name in SHARES_SFT_WITH:  # same size block as the plain grid, so its SFT starts are shared
            plain_grid = run_grid.load_config_file(ROOT / "experiments" / "grid_configs"
                                                   / f"{SHARES_SFT_WITH[name]}.py")
            plain_sft = run_grid.build_run_config(plain_grid, jobs[0], tmp_path)
            assert sft.to_json(sort_keys=True) == plain_sft.to_json(sort_keys=True), name
        if name in ("dcrouter_cost", "synthetic_cost"):  # the points at the presets' own route weight
            suite = SHARES_SFT_WITH[name]  # are the plain grid's runs
            plain = {r.key for r in run_grid.expand_grid(plain_grid)}
            assert len({r.key for r in runs} & plain) == 12
            assert f"{suite}/router_r1-s0" in plain and f"{suite}/router_r1-rw0.25-s0" in {r.key for r in runs}
        if name == "dcrouter_ext":
            assert {r.preset for r in runs} == {"recal_group_gate", "recal_ema"}
        if name == "dcrouter":  # the rerun: >= 100 GRPO steps, greedy evaluation
            assert config.grpo.steps >= 100 and config.eval.greedy and len({r.preset for r in runs}) == 11
        if name == "dcrouter_long":  # its own directory: the same preset names as dcrouter's runs
            assert {r.directory for r in jobs} == {"dcrouter-long"} and config.grpo.steps == 100
        if name == "dcrouter_recipe":  # the score-log recipe, each run labelled by the weight it trains with
            assert {r.directory for r in jobs} == {"dcrouter-recipe"} and {r.route_weight for r in runs} == {0.05, 0.1, 0.2}
            recipe = score_log_recipe(base_config.get_config())
            recal = run_grid.build_run_config(
                grid, next(r for r in runs if r.preset == "recal" and r.route_weight == 0.1), tmp_path)
            assert tuple(recal.calibration.weights) == tuple(recipe.calibration.weights)
            assert (config.grpo.steps, config.grpo.kl_coef) == (recipe.grpo.steps, recipe.grpo.kl_coef)
            assert (sft.sft.routing, sft.sft.think) == (recipe.sft.routing, recipe.sft.think)
        if name == "synthetic":  # lookup has 100 distinct questions, commonsense 60
            assert sft.synthetic.n_test_per_family < 60
    with pytest.raises(ValueError, match="results_dir"):
        run_grid.build_run_config(grid, runs[0])
    assert run_grid.share_sft(ml_collections.ConfigDict({"suites": ("synthetic",)}))  # default: shared
    with pytest.raises(ValueError, match="share_sft"):
        run_grid.plan_jobs(_grid(share_sft="yes"), tmp_path)


def test_grid_tag_puts_runs_and_sft_jobs_in_their_own_directory(tmp_path):
    grid = _grid(presets=("recal",), seeds=(0,), share_sft=True)
    grid.tag = "long"
    jobs = run_grid.plan_jobs(grid, tmp_path)
    assert [j.key for j in jobs] == ["synthetic-long/_sft-s0", "synthetic-long/recal-s0"]
    assert jobs[1].path(tmp_path) == tmp_path / "synthetic-long" / "recal-s0"
    config = run_grid.build_run_config(grid, jobs[1], tmp_path)
    assert config.suite == "synthetic"
    assert config.model.pretrained_path == str(tmp_path.resolve() / "synthetic-long" / "_sft-s0" / "export")
    assert run_grid.expand_grid(_grid(presets=("recal",), seeds=(0,)))[0].key == "synthetic/recal-s0"
    for bad in ("a/b", "x y", 3):
        bad_grid = _grid(presets=("recal",), seeds=(0,))
        bad_grid.tag = bad
        with pytest.raises(ValueError, match="grid.tag"):
            run_grid.expand_grid(bad_grid)


def test_build_run_config_applies_overrides_preset_seed_and_route_weight():
    grid = _grid(overrides={"grpo": {"steps": 3, "group_size": 4}, "synthetic": {"n_train_per_family": 8}})
    run = run_grid.GridRun("synthetic", "gdpo", 2, 0.5)
    c = run_grid.build_run_config(grid, run)
    assert (c.grpo.steps, c.grpo.group_size, c.synthetic.n_train_per_family) == (3, 4, 8)
    assert (c.seed, c.suite, c.calibration.preset) == (2, "synthetic", "gdpo")
    assert tuple(c.calibration.weights) == (0.5, 1.0, 0.25, 0.5, 0.1)  # spec default weights, route replaced
    with pytest.raises(ValueError, match="no field"):
        run_grid.build_run_config(_grid(overrides={"grpo": {"stepz": 3}}), run)
    with pytest.raises(ValueError, match="no section"):
        run_grid.build_run_config(_grid(overrides={"grpoo": {"steps": 3}}), run)


def test_grid_runs_share_caches_that_do_not_change_results(tmp_path, monkeypatch):
    run = run_grid.GridRun("synthetic", "grpo", 0)
    c = run_grid.build_run_config(_grid(), run, tmp_path)
    assert c.eval.reference_cache_dir == str(tmp_path.resolve() / ".cache" / "classical")
    assert run_grid.build_run_config(_grid(), run).eval.reference_cache_dir == ""  # no results dir: no cache
    # an SFT job recorded before (or without) the cache key is still reused
    sft = run_grid.sft_job("synthetic", 0)
    sft_dir = tmp_path / "synthetic" / "_sft-s0"
    sft_dir.mkdir(parents=True)
    recorded = run_grid.build_run_config(_grid(), sft)
    del recorded.eval["reference_cache_dir"]
    (sft_dir / run_grid.RUN_CONFIG).write_text(recorded.to_json())
    run_grid.check_sft_record(run_grid.build_run_config(_grid(), sft, tmp_path), sft_dir)
    # each worker gets the grid's JAX compilation cache unless the caller chose one
    seen = {}

    def fake_run(cmd, **kw):
        seen.update(kw["env"])
        return types.SimpleNamespace(returncode=0)

    monkeypatch.setattr(run_grid.subprocess, "run", fake_run)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    workdir = tmp_path / "synthetic" / "grpo-s0"
    workdir.mkdir(parents=True)
    assert run_grid.subprocess_runner(c, workdir) == 0
    assert seen["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path.resolve() / ".cache" / "jax")
    assert seen["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    run_grid.subprocess_runner(c, workdir)
    assert seen["JAX_COMPILATION_CACHE_DIR"] == "/elsewhere"


def calibration_config(c, num_datasets, cost_ref):
    """The CalibrationConfig a run of ConfigDict `c` calibrates with (its parsed section, built)."""
    from recal_jax.training.run_config import parse_config

    cfg = parse_config(c, check_paths=False, check_devices=False)
    return cfg.calibration.build(num_datasets, cost_ref, cfg.reward.route_rule)


def test_route_weight_override_reaches_the_calibration_config():
    c = run_grid.build_run_config(_grid(), run_grid.GridRun("synthetic", "recal", 0, 0.75))
    assert calibration_config(c, num_datasets=7, cost_ref=1.0).weights == (0.5, 1.0, 0.25, 0.75, 0.1)


def test_router_r1_sweeps_its_alpha():
    assert grid_layout.own_route_weight("router_r1") == 0.0  # its preset alpha is 0
    assert [grid_layout.router_r1_alpha(w) for w in (0, 0.25, 0.5, 1)] == pytest.approx([0, 0.2, 1 / 3, 0.5])
    runs = run_grid.expand_grid(_grid(presets=("router_r1", "recal"), seeds=(0,), route_weights=(0.0, 0.25)))
    assert [r.name for r in runs] == ["router_r1-s0", "router_r1-rw0.25-s0", "recal-rw0-s0", "recal-s0"]
    c = run_grid.build_run_config(_grid(), run_grid.GridRun("synthetic", "router_r1", 0, 0.25))
    assert c.calibration.router_r1_alpha == pytest.approx(0.2)
    assert calibration_config(c, num_datasets=7, cost_ref=1.0).router_r1_alpha == pytest.approx(0.2)
    c = run_grid.build_run_config(_grid(), run_grid.GridRun("synthetic", "recal", 0, 0.5))
    assert c.calibration.router_r1_alpha is None  # the weighted presets' sweep leaves alpha alone
    with pytest.raises(ValueError, match="route weight"):
        grid_layout.router_r1_alpha(-1.0)


# ---------------------------------------------------------------- skip-if-done, failures, dry run


def _fake_summary(acc):
    return {"policy": {"accuracy": acc, "per_dataset": {}, "cost_per_query": 0.0}}


def test_run_grid_skips_finished_runs_and_survives_a_failure(tmp_path):
    grid = _grid()
    done = tmp_path / "synthetic" / "grpo-s1"
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps(_fake_summary(0.1)))
    stale = tmp_path / "synthetic" / "recal-s0"
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text('{"step": 0, "phase": "sft"}\n')
    calls, lines = [], []

    def runner(config, workdir):
        calls.append((workdir.name, config.calibration.preset, config.seed))
        assert not (workdir / "metrics.jsonl").exists()  # a dead run without checkpoint restarts clean
        if workdir.name == "recal-s1":
            raise RuntimeError("boom")
        (workdir / "summary.json").write_text(json.dumps(_fake_summary(0.5)))
        return 0

    out = run_grid.run_grid(grid, tmp_path, command="python -m experiments.run_grid --grid=x", runner=runner,
                            echo=lines.append)
    assert calls == [("grpo-s0", "grpo", 0), ("recal-s0", "recal", 0), ("recal-s1", "recal", 1)]
    assert [r["status"] for r in out] == ["finished", "done", "finished", "failed"]
    assert "FAILED" in lines[3] and "boom" in lines[3] and "recal-s1" in lines[3]
    assert "test accuracy 0.500" in lines[0] and "finished in" in lines[0]
    assert (tmp_path / "synthetic" / "command.txt").read_text() == "python -m experiments.run_grid --grid=x\n"

    calls.clear()
    out = run_grid.run_grid(grid, tmp_path, command="python -m experiments.run_grid --grid=x", runner=runner,
                            only="recal", echo=lines.append)
    assert calls == [("recal-s1", "recal", 1)]  # only the failed one runs again
    assert [r["run"] for r in out] == ["synthetic/recal-s0", "synthetic/recal-s1"]
    assert (tmp_path / "synthetic" / "command.txt").read_text().count("\n") == 1  # no duplicate line


def test_run_grid_dry_run_lists_without_running(tmp_path):
    lines = []

    def runner(config, workdir):
        raise AssertionError("a dry run must not run anything")

    (tmp_path / "synthetic" / "recal-s0").mkdir(parents=True)
    (tmp_path / "synthetic" / "recal-s0" / "summary.json").write_text("{}")
    out = run_grid.run_grid(_grid(), tmp_path, dry_run=True, runner=runner, echo=lines.append)
    assert [r["status"] for r in out] == ["todo", "todo", "done", "todo"]
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == ["recal-s0"]


def test_share_sft_plan_order_and_only(tmp_path):
    grid = _grid(presets=("grpo", "recal"), seeds=(0, 1), share_sft=True, suites=("synthetic", "dcrouter"))
    keys = [j.key for j in run_grid.plan_jobs(grid, tmp_path)]
    assert keys == ["synthetic/_sft-s0", "synthetic/_sft-s1", "synthetic/grpo-s0", "synthetic/grpo-s1",
                    "synthetic/recal-s0", "synthetic/recal-s1",
                    "dcrouter/_sft-s0", "dcrouter/_sft-s1", "dcrouter/grpo-s0", "dcrouter/grpo-s1",
                    "dcrouter/recal-s0", "dcrouter/recal-s1"]
    assert [j.key for j in run_grid.plan_jobs(grid, tmp_path, only="synthetic/recal-s1")] == [
        "synthetic/_sft-s1", "synthetic/recal-s1"]
    assert [j.key for j in run_grid.plan_jobs(grid, tmp_path, only="dcrouter/_sft")] == [
        "dcrouter/_sft-s0", "dcrouter/_sft-s1"]
    for seed in (0, 1):  # every seed-1 synthetic run finished: its SFT job is not needed any more
        for preset in ("grpo", "recal"):
            d = tmp_path / "synthetic" / f"{preset}-s{seed}"
            d.mkdir(parents=True)
            if seed == 1:
                (d / "summary.json").write_text("{}")
    keys = [j.key for j in run_grid.plan_jobs(grid, tmp_path, only="synthetic")]
    assert keys == ["synthetic/_sft-s0", "synthetic/grpo-s0", "synthetic/grpo-s1", "synthetic/recal-s0",
                    "synthetic/recal-s1"]


def test_run_grid_share_sft_runs_one_sft_job_per_seed_first(tmp_path):
    grid = _grid(presets=("grpo", "recal"), seeds=(0, 1), share_sft=True,
                 overrides={"grpo": {"steps": 3}, "sft": {"steps": 2}})
    calls, lines = [], []

    def runner(config, workdir):
        calls.append(workdir.name)
        if workdir.name.startswith("_sft"):
            assert (config.grpo.steps, config.sft.steps, config.eval.after_sft) == (0, 2, False)
            assert config.model.pretrained_path == ""
            if workdir.name == "_sft-s1":
                raise RuntimeError("sft boom")
            (workdir / "export").mkdir()
            (workdir / "export" / "config.json").write_text("{}")
            return 0
        start = pathlib.Path(config.model.pretrained_path)
        assert start == (tmp_path / "synthetic" / f"_sft-s{config.seed}" / "export").resolve()
        assert (start / "config.json").is_file()  # the SFT job ran before
        assert (config.sft.steps, config.grpo.steps, config.eval.after_sft) == (0, 3, True)
        (workdir / "summary.json").write_text(json.dumps(_fake_summary(0.5)))
        return 0

    out = run_grid.run_grid(grid, tmp_path, runner=runner, echo=lines.append)
    assert calls == ["_sft-s0", "_sft-s1", "grpo-s0", "recal-s0"]  # seed 1 has no start: not run
    assert [(r["run"], r["status"]) for r in out] == [
        ("synthetic/_sft-s0", "finished"), ("synthetic/_sft-s1", "failed"), ("synthetic/grpo-s0", "finished"),
        ("synthetic/grpo-s1", "failed"), ("synthetic/recal-s0", "finished"), ("synthetic/recal-s1", "failed")]
    assert lines[0].startswith("[1/6] synthetic/_sft-s0") and "exported to" in lines[0]
    assert "sft boom" in lines[1] and "_sft-s1 has no export" in lines[3]

    calls.clear()
    lines.clear()
    out = run_grid.run_grid(grid, tmp_path, runner=runner, echo=lines.append)
    assert calls == ["_sft-s1"]  # _sft-s0 is no longer needed (not even listed); seed 1 still has no start
    assert [(r["run"], r["status"]) for r in out] == [
        ("synthetic/_sft-s1", "failed"), ("synthetic/grpo-s0", "done"), ("synthetic/grpo-s1", "failed"),
        ("synthetic/recal-s0", "done"), ("synthetic/recal-s1", "failed")]

    lines.clear()
    (tmp_path / "synthetic" / "grpo-s0" / "summary.json").unlink()
    run_grid.run_grid(grid, tmp_path, dry_run=True, runner=runner, echo=lines.append)
    assert lines[:2] == ["[1/6] synthetic/_sft-s0 (shared SFT warm start): done",
                         "[2/6] synthetic/_sft-s1 (shared SFT warm start): todo"]

    # a shared SFT job made with another config is refused before anything runs
    (tmp_path / "synthetic" / "_sft-s0" / run_grid.RUN_CONFIG).write_text(
        run_grid.build_run_config(_grid(share_sft=True, overrides={"sft": {"steps": 9}}),
                                  run_grid.sft_job("synthetic", 0)).to_json())
    calls.clear()
    with pytest.raises(ValueError, match="sft.steps: 9 there, 2 now"):
        run_grid.run_grid(grid, tmp_path, runner=runner, echo=lines.append)
    assert calls == []
    # a job recorded before a field existed (here grpo.kl_schedule) is reused while the field is at its default
    recorded = json.loads(run_grid.build_run_config(_grid(share_sft=True), run_grid.sft_job("synthetic", 0)).to_json())
    del recorded["grpo"]["kl_schedule"]
    (tmp_path / "synthetic" / "_sft-s0" / run_grid.RUN_CONFIG).write_text(json.dumps(recorded))
    run_grid.check_sft_record(run_grid.build_run_config(_grid(share_sft=True), run_grid.sft_job("synthetic", 0)),
                              tmp_path / "synthetic" / "_sft-s0")
    with pytest.raises(ValueError, match="grpo.kl_schedule: None there, 'linear' now"):
        run_grid.check_sft_record(run_grid.build_run_config(_grid(share_sft=True, overrides={"grpo": {"kl_schedule": "linear"}}),
                                                            run_grid.sft_job("synthetic", 0)),
                                  tmp_path / "synthetic" / "_sft-s0")
    (tmp_path / "synthetic" / "_sft-s0" / run_grid.RUN_CONFIG).write_text(
        run_grid.build_run_config(_grid(share_sft=True, overrides={"sft": {"steps": 9}}),
                                  run_grid.sft_job("synthetic", 0)).to_json())
    run_grid.check_sft_record(  # the calibration section is not SFT's business
        run_grid.build_run_config(_grid(share_sft=True, overrides={"sft": {"steps": 9},
                                                                   "calibration": {"tau": 2.0}}),
                                  run_grid.sft_job("synthetic", 0)), tmp_path / "synthetic" / "_sft-s0")


def _write_grid_file(path: pathlib.Path, overrides: dict, presets=("recal",), seeds=(0,), share_sft=None):
    path.write_text(
        "import ml_collections\n\n"
        "def get_config():\n"
        "    g = ml_collections.ConfigDict()\n"
        "    g.base_config = 'launch/configs/synthetic.py'\n"
        "    g.suites = ('synthetic',)\n"
        f"    g.presets = {tuple(presets)!r}\n"
        f"    g.seeds = {tuple(seeds)!r}\n"
        "    g.route_weights = ()\n"
        + ("" if share_sft is None else f"    g.share_sft = {share_sft!r}\n") +
        f"    g.overrides = ml_collections.ConfigDict({overrides!r})\n"
        "    return g\n")
    return path


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "experiments.run_grid", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_dry_run(tmp_path):
    grid = _write_grid_file(tmp_path / "grid.py", {"grpo": {"steps": 2}}, presets=("grpo", "recal"), seeds=(0, 1))
    res = _cli(f"--grid={grid}", f"--results_dir={tmp_path / 'res'}", "--dry_run", "--grid.seeds=(3,)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:3] == ["[1/3] synthetic/_sft-s3 (shared SFT warm start): todo",
                                          "[2/3] synthetic/grpo-s3: todo", "[3/3] synthetic/recal-s3: todo"]
    grid = _write_grid_file(tmp_path / "grid2.py", {"grpo": {"steps": 2}}, presets=("grpo", "recal"), seeds=(0, 1),
                            share_sft=True)
    res = _cli(f"--grid={grid}", f"--results_dir={tmp_path / 'res'}", "--dry_run", "--grid.seeds=(3,)",
               "--grid.share_sft=False")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["[1/2] synthetic/grpo-s3: todo", "[2/2] synthetic/recal-s3: todo"]
    assert not (tmp_path / "res").exists()


TINY = {"sft": {"steps": 2, "batch_size": 16}, "grpo": {"steps": 1, "instances_per_step": 4, "group_size": 4},
        "synthetic": {"n_train_per_family": 8, "n_test_per_family": 2}, "eval": {"batch_size": 16, "every": 0}}


@pytest.mark.slow
def test_end_to_end_tiny_grid_then_report(tmp_path):
    grid = _write_grid_file(tmp_path / "grid.py", TINY)
    res = _cli(f"--grid={grid}", f"--results_dir={tmp_path / 'res'}")
    assert res.returncode == 0, res.stdout + res.stderr
    run = tmp_path / "res" / "synthetic" / "recal-s0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["preset"] == "recal" and summary["grpo_steps"] == 1 and "sft_policy" in summary
    assert (tmp_path / "res" / "synthetic" / "_sft-s0" / "export" / "config.json").is_file()
    assert json.loads((run / "config.json").read_text())["model"]["pretrained_path"].endswith("_sft-s0/export")
    assert "synthetic/_sft-s0 (shared SFT warm start): finished in" in res.stdout
    assert "finished in" in res.stdout
    assert (tmp_path / "res" / "synthetic" / "command.txt").read_text().startswith(
        f"python -m experiments.run_grid --grid={grid}")
    res = _cli(f"--grid={grid}", f"--results_dir={tmp_path / 'res'}")
    assert "skipped (summary.json exists)" in res.stdout
    text = report.write_report(tmp_path / "res").read_text()
    assert {"recal", "after SFT (no RL)"} <= set(_labels(text.splitlines()))


# ---------------------------------------------------------------- aggregation and the report


def test_mean_ci95_against_hand_computation():
    x = [0.5, 0.6, 0.8]
    mean = sum(x) / 3
    s = math.sqrt(sum((v - mean) ** 2 for v in x) / 2)
    got_mean, got_half = grid_stats.mean_ci95(x)
    assert got_mean == pytest.approx(mean, abs=1e-12)
    assert got_half == pytest.approx(stats.t.ppf(0.975, 2) * s / math.sqrt(3), abs=1e-12)
    assert grid_stats.mean_ci95([0.4]) == (0.4, None)
    with pytest.raises(ValueError):
        grid_stats.mean_ci95([])
    with pytest.raises(ValueError):
        grid_stats.mean_ci95([0.1, float("nan")])
    steps, values = grid_stats.mean_curve([{0: 1.0, 1: 2.0}, {0: 3.0, 2: 5.0}])
    assert steps == [0, 1, 2] and values == [2.0, 2.0, 5.0]


def _router(acc, per, cost, name=None):
    out = {"accuracy": acc, "per_dataset": per, "cost_per_query": cost, "cost_total": cost * 10, "route_share": {}}
    if name:
        out["name"] = name
    return out


KNN_SWEEP = [[0.0, 0.02, 0.55], [0.5, 0.01, 0.5], [1.0, 0.005, 0.3]]


def _write_run(root, suite, name, acc, per, cost, stability, sft_acc, train_answers, ref_shift=0.0, classical=False):
    d = root / suite / name
    d.mkdir(parents=True)
    refs = {"random": _router(0.3 + ref_shift, {"a": 0.2, "b": 0.4}, 0.02, "random"),
            "best_single": _router(0.6, {"a": 0.5, "b": 0.7}, 0.05, "best_single (m2)"),
            "oracle": _router(0.9, {"a": 0.9, "b": 0.9}, 0.03, "oracle"),
            "cheapest_correct": _router(0.9, {"a": 0.9, "b": 0.9}, 0.01, "cheapest_correct"),
            "single:m1": _router(0.2, {"a": 0.1, "b": 0.3}, 0.001, "single:m1"),
            "single:m2": _router(0.6, {"a": 0.5, "b": 0.7}, 0.05, "single:m2")}
    if classical:
        refs["knn"] = {**_router(0.55, {"a": 0.5, "b": 0.6}, 0.02, "knn (k=5)"), "lambda_sweep": KNN_SWEEP}
    summary = {"policy": {**_router(acc, per, cost), "format_valid": 1.0},
               "sft_policy": _router(sft_acc, {"a": sft_acc, "b": sft_acc}, 0.0),
               "references": refs, "stability": stability, "preset": name.split("-")[0], "suite": suite,
               "grpo_steps": len(train_answers)}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "config.json").write_text(json.dumps({"sft": {"steps": 7}}))
    rows = [{"step": 0, "phase": "sft", "loss": 1.0}] + [
        {"step": i, "phase": "train", "reward/answer": v} for i, v in enumerate(train_answers)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _main_table(text):
    """The lines of RESULTS.md before the first suite's subsections (matched cost, diagnostics:
    they repeat the labels)."""
    return text.split("\n### ")[0].splitlines()


def _split(line):
    """The cells of a markdown table line, without the padding."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _labels(lines):
    """The first cell of every table line."""
    return [_split(line)[0] for line in lines if line.startswith("|")]


def _cells(text, label):
    rows = [_split(line) for line in _main_table(text) if line.startswith("|") and _split(line)[0] == label]
    assert len(rows) == 1, (label, rows)
    return rows[0]


def test_report_hand_computed_case(tmp_path):
    stab = lambda std, spikes, col: {"reward_std_last_third": std, "grad_norm_spikes": spikes,  # noqa: E731
                                     "collapsed": col, "min_format_valid": 0.9}
    _write_run(tmp_path, "synthetic", "recal-s0", 0.5, {"a": 0.4, "b": 0.6}, 0.010, stab(0.1, 0, False), 0.2,
               [0.1, 0.3], ref_shift=0.0)
    _write_run(tmp_path, "synthetic", "recal-s1", 0.6, {"a": 0.5, "b": 0.7}, 0.020, stab(0.2, 1, True), 0.3,
               [0.3, 0.5], ref_shift=0.1)
    _write_run(tmp_path, "synthetic", "recal-s2", 0.8, {"a": 0.7, "b": 0.9}, 0.030, stab(0.3, 3, False), 0.4,
               [0.5, 0.7], ref_shift=0.2)
    _write_run(tmp_path, "synthetic", "grpo-s0", 0.45, {"a": 0.3, "b": 0.6}, 0.040, stab(0.5, 2, True), 0.1,
               [0.2, 0.2])
    (tmp_path / "synthetic" / "command.txt").write_text("python -m experiments.run_grid --grid=G\n")
    (tmp_path / "synthetic" / "gdpo-s0").mkdir()  # unfinished: no summary.json, ignored
    _write_run(tmp_path, "synthetic", "_sft-s0", 0.99, {"a": 0.99, "b": 0.99}, 0.5, stab(0.0, 0, False), 0.99,
               [], ref_shift=5.0)  # a shared SFT job's directory: no preset row, no part of any mean
    (tmp_path / "dcrouter" / "grpo-s0").mkdir(parents=True)  # a suite with no finished runs: omitted

    text = report.write_report(tmp_path).read_text()
    assert "## synthetic" in text and "## dcrouter" not in text
    assert "    python -m experiments.run_grid --grid=G" in text

    header = _cells(text, "router")
    assert header[:5] == ["router", "accuracy", "95% CI", "a", "b"]
    col = {name: i for i, name in enumerate(header)}

    recal = _cells(text, "recal")
    acc = np.array([0.5, 0.6, 0.8])
    mean = acc.mean()
    half = stats.t.ppf(0.975, 2) * acc.std(ddof=1) / np.sqrt(3)
    assert recal[0] == "recal"
    assert recal[1] == f"{mean:.3f}"
    assert recal[2] == f"[{mean - half:.3f}, {mean + half:.3f}]"
    assert recal[col["a"]] == f"{(0.4 + 0.5 + 0.7) / 3:.3f}" and recal[col["b"]] == f"{(0.6 + 0.7 + 0.9) / 3:.3f}"
    assert float(recal[col["cost/query (USD)"]]) == pytest.approx(0.02)
    assert recal[col["reward std (last 1/3)"]] == "0.200"
    assert recal[col["grad-norm spikes"]] == f"{4 / 3:.1f}"
    assert recal[col["collapsed"]] == "1/3" and recal[col["seeds"]] == "3"

    grpo = _cells(text, "grpo")
    assert grpo[1] == "0.450" and grpo[2] == "n/a" and grpo[col["collapsed"]] == "1/1"
    labels = _labels(_main_table(text))
    assert labels.index("grpo") < labels.index("recal")  # preset order

    assert not [line for line in text.splitlines() if line.startswith("| _sft")]
    sft = _cells(text, "after SFT (no RL)")
    assert sft[1] == f"{(0.2 + 0.3 + 0.4 + 0.1) / 4:.3f}" and sft[col["seeds"]] == "4"
    assert _cells(text, "random")[1] == f"{(0.3 + 0.4 + 0.5 + 0.3) / 4:.3f}"
    assert _cells(text, "random")[2] == "—"
    assert _cells(text, "best_single (m2)")[1] == "0.600"
    for label in ("oracle", "cheapest_correct", "single:m1", "single:m2"):
        _cells(text, label)

    numbers = json.loads((tmp_path / "summary.json").read_text())["synthetic"]
    row = next(r for r in numbers["rows"] if r["label"] == "recal")
    assert row["accuracy"] == pytest.approx(mean) and row["ci95_half"] == pytest.approx(half)
    assert row["seeds"] == [0, 1, 2] and numbers["grpo_steps"] == [2] and numbers["sft_steps"] == [7]
    for plot in numbers["plots"].values():
        assert (tmp_path / plot).stat().st_size > 0
    assert "pareto" not in numbers["plots"]


def test_sft_steps_of_a_shared_start_are_found_after_the_results_moved(tmp_path):
    stab = {"reward_std_last_third": 0.1, "grad_norm_spikes": 0, "collapsed": False, "min_format_valid": 1.0}
    _write_run(tmp_path, "synthetic", "recal-s0", 0.5, {"a": 0.4, "b": 0.6}, 0.01, stab, 0.2, [0.1])
    # the run was started from an export under a root that no longer exists; its start lies beside it
    (tmp_path / "synthetic" / "recal-s0" / "config.json").write_text(json.dumps(
        {"sft": {"steps": 0}, "model": {"pretrained_path": "/gone/synthetic/_sft-s0/export"}}))
    (tmp_path / "synthetic" / "_sft-s0").mkdir()
    (tmp_path / "synthetic" / "_sft-s0" / "config.json").write_text(json.dumps({"sft": {"steps": 1500}}))
    report.write_report(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["synthetic"]["sft_steps"] == [1500]


def test_report_cost_sweep_rows_and_pareto_plot(tmp_path):
    stab = {"reward_std_last_third": 0.1, "grad_norm_spikes": 0, "collapsed": False, "min_format_valid": 1.0}
    for w, acc, cost in [(0.0, 0.7, 0.05), (0.5, 0.6, 0.02), (1.0, 0.5, 0.01)]:
        for seed in (0, 1):
            _write_run(tmp_path, "dcrouter", grid_layout.run_name("recal", seed, w), acc + 0.01 * seed,
                       {"a": acc, "b": acc}, cost, stab, 0.2, [0.1])
    text = report.write_report(tmp_path).read_text()
    labels = [label for label in _labels(_main_table(text)) if label.startswith("recal")]
    assert labels == ["recal rw=0", "recal rw=0.5", "recal rw=1"]
    assert _cells(text, "recal rw=0.5")[1] == f"{0.605:.3f}"
    numbers = json.loads((tmp_path / "summary.json").read_text())["dcrouter"]
    assert (tmp_path / numbers["plots"]["pareto"]).stat().st_size > 0
    assert [r["route_weight_used"] for r in numbers["rows"]] == [0.0, 0.5, 1.0]
    assert "training_curves" not in numbers["plots"]  # sweep rows are drawn on the pareto plot only
    assert (tmp_path / numbers["plots"]["accuracy_vs_cost"]).stat().st_size > 0  # references alone


def test_markdown_tables_keep_the_cells_as_formatted():
    from experiments import tables

    text = tables.markdown([["recal", "0.600", "1e-05", "—", ""], ["grpo", "12", "0.0001", "[0.1, 0.2]", "x"]],
                           ["router", "acc", "cost", "ci", "note"])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[1].replace(":", "-").strip("|-") == ""
    assert [_split(line) for line in lines[:1] + lines[2:]] == [
        ["router", "acc", "cost", "ci", "note"], ["recal", "0.600", "1e-05", "—", ""],
        ["grpo", "12", "0.0001", "[0.1, 0.2]", "x"]]  # no number re-formatted (0.600 stays, 1e-05 stays)
    with pytest.raises(ValueError, match="cells"):
        tables.markdown([["only one"]], ["router", "acc"])


def test_trailing_mean_by_hand():
    assert report_plots.trailing_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert report_plots.trailing_mean([4.0, 2.0, 6.0], 5) == [4.0, 3.0, 4.0]
    assert report_plots.trailing_mean([], 3) == []
    with pytest.raises(ValueError, match="window"):
        report_plots.trailing_mean([1.0], 0)


def test_report_puts_the_plain_run_on_the_front_at_its_own_route_weight(tmp_path):
    stab = {"reward_std_last_third": 0.1, "grad_norm_spikes": 0, "collapsed": False, "min_format_valid": 1.0}
    _write_run(tmp_path, "dcrouter", grid_layout.run_name("recal", 0, 1.0), 0.5, {"a": 0.5}, 0.01, stab, 0.2, [0.1])
    _write_run(tmp_path, "dcrouter", grid_layout.run_name("recal", 0), 0.6, {"a": 0.6}, 0.02, stab, 0.2, [0.1])
    report.write_report(tmp_path)
    rows = json.loads((tmp_path / "summary.json").read_text())["dcrouter"]["rows"]
    used = {r["label"]: r["route_weight_used"] for r in rows}
    assert used == {"recal": CalibrationConfig.preset("recal").weights[ROUTE], "recal rw=1": 1.0}


def test_report_matched_cost_table_and_classical_routers(tmp_path):
    stab = {"reward_std_last_third": 0.1, "grad_norm_spikes": 0, "collapsed": False, "min_format_valid": 1.0}
    for w, acc, cost in [(0.0, 0.7, 0.05), (0.5, 0.6, 0.02), (1.0, 0.5, 0.01)]:
        for seed in (0, 1):
            _write_run(tmp_path, "dcrouter", grid_layout.run_name("recal", seed, w), acc + 0.01 * seed,
                       {"a": acc, "b": acc}, cost, stab, 0.2, [0.1], classical=True)
    text = report.write_report(tmp_path).read_text()
    assert _cells(text, "knn (k=5)")[1] == "0.550"  # the classical router's row in the main table
    numbers = json.loads((tmp_path / "summary.json").read_text())["dcrouter"]
    assert numbers["classical_fronts"]["knn"] == KNN_SWEEP
    mc = numbers["matched_cost"]
    assert mc["level_costs"] == pytest.approx([0.025, 0.035, 0.05])  # best single (m2) costs 0.05
    # recal, seed 0: front (0.01, .5), (0.02, .6), (0.05, .7) -> .6 + .1 * 5/30, .65, .7; seed 1: +0.01
    half = stats.t.ppf(0.975, 1) * np.std([0.0, 0.01], ddof=1) / math.sqrt(2)
    section = text.split("### Accuracy at matched cost")[1].split("###")[0]
    rows = {_split(line)[0]: _split(line)[1:] for line in section.splitlines()
            if line.startswith("| ") and _split(line)[0] != "router"}
    assert rows["recal"] == [f"{0.6 + 0.1 / 6 + 0.005:.3f} ± {half:.3f} (n=2)", f"{0.655:.3f} ± {half:.3f} (n=2)",
                             f"{0.705:.3f} ± {half:.3f} (n=2)"]
    # knn: front (0.005, .3), (0.01, .5), (0.02, .55), flat beyond; the same in both seeds
    assert rows["knn"] == ["0.550 ± 0.000 (n=2)"] * 3
    for plot in ("pareto", "matched_cost", "accuracy_vs_cost"):
        assert (tmp_path / numbers["plots"][plot]).stat().st_size > 0
    assert "matched_cost" not in json.loads((tmp_path / "summary.json").read_text()).get("synthetic", {})


def test_no_matched_cost_section_without_a_sweep(tmp_path):
    stab = {"reward_std_last_third": 0.1, "grad_norm_spikes": 0, "collapsed": False, "min_format_valid": 1.0}
    _write_run(tmp_path, "synthetic", "recal-s0", 0.5, {"a": 0.5}, 0.01, stab, 0.2, [0.1], classical=True)
    text = report.write_report(tmp_path).read_text()
    assert "Accuracy at matched cost" not in text and "knn (k=5)" in _labels(_main_table(text))
    numbers = json.loads((tmp_path / "summary.json").read_text())["synthetic"]
    assert numbers["matched_cost"] is None and "matched_cost" not in numbers["plots"]


def test_classical_baselines_names_unknown_suites():
    from experiments import classical_baselines

    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        classical_baselines.baseline_lines("nope", "/nonexistent", [0])
