"""Stage 5, the outputs of a run, in dependency order: the final evaluation and its
rollouts, the reference routers, the plots, the exported policy, and summary.json last
(atomic), so that "summary.json exists" means the run is complete. Also the workdir's
claim: one run per workdir, locked against a second process."""

from __future__ import annotations

import collections
import json
import logging
import pathlib

import jax
import shutil
from typing import TYPE_CHECKING, Any

from recal_jax.data.registry import SUITES
from recal_jax.evaluation.multi_hop import multi_hop_summary
from recal_jax.evaluation.plots import plot_accuracy_vs_cost, plot_training_curves
from recal_jax.evaluation.rollout_export import RolloutCollector, export_rollouts
from recal_jax.evaluation.run_dir import RunDir, RunLock, config_differences
from recal_jax.evaluation.stability import stability
from recal_jax.models import save_pretrained
from recal_jax.training import evaluation
from recal_jax.training.result import RunResult
from recal_jax.training.run_config import ConfigError, RunConfig, default_dict

if TYPE_CHECKING:
    from recal_jax.training.setup import Run

log = logging.getLogger(__name__)

# Fields a restart of the same workdir may change: how long to train, what to evaluate and
# checkpoint, logging and the reply cache. Anything else makes it another run.
SAFE_TO_CHANGE = ("grpo.steps", "grpo.stop_at_step", "eval.", "checkpoint.", "log_every", "pool.cache_dir",
                  "pool.concurrency")
# What a run writes into its workdir (removed by overwrite=True).
RUN_OUTPUTS = ("config.json", "metrics.jsonl", "summary.json", "eval_sft.json", "tensorboard", "checkpoints",
               "export", "eval_rollouts", "training_curves.png", "accuracy_vs_cost.png")


def claim_workdir(workdir: pathlib.Path, cfg: RunConfig, *, overwrite: bool) -> RunLock | None:
    """Checks that `workdir` can hold this run: a writable directory, empty of another run
    (config.json of a different config; see SAFE_TO_CHANGE), unless `overwrite`, which
    deletes the earlier run's outputs. Raises ConfigError naming --workdir, RunDirLocked when
    another process holds it. Returns the workdir's lock, held (process 0 of a multi-host run
    only: flock is per host), to be released when the run ends."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir={str(workdir)!r}: is a file, not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--workdir={str(workdir)!r}: cannot write there ({e.strerror or e})") from None
    lock = RunLock(workdir).acquire() if jax.process_index() == 0 else None
    try:
        _check_or_clear(workdir, cfg, overwrite)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def _check_or_clear(workdir: pathlib.Path, cfg: RunConfig, overwrite: bool) -> None:
    stored = workdir / "config.json"
    if overwrite:
        for name in RUN_OUTPUTS:
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return
    if stored.exists():
        differing = stored_config_differences(stored, cfg)
        if differing:
            shown = ", ".join(differing[:6]) + (f" and {len(differing) - 6} more" if len(differing) > 6 else "")
            raise ConfigError(f"--workdir={str(workdir)!r} holds another run (its config.json differs in {shown}); "
                              "use another --workdir, or --overwrite to start afresh there")


def stored_config_differences(path: pathlib.Path, cfg: RunConfig) -> list[str]:
    """The dotted fields where config.json at `path` and `cfg` differ, safe fields left out."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return ["config.json (unreadable)"]
    if not isinstance(stored, dict):
        return ["config.json (not an object)"]
    return config_differences(stored, cfg.to_dict(), SAFE_TO_CHANGE, defaults=default_dict())


def finish(run: "Run", run_dir: RunDir, state, key, *, sft_policy: dict | None, facts: dict) -> RunResult:
    """The final evaluation and every output of a finished run; summary.json last."""
    cfg, timer, workdir = run.cfg, run.timer, run_dir.path
    summary: dict[str, Any] = dict(facts)
    with timer.phase("eval_final"):
        collector = RolloutCollector(run.suite.test) if cfg.eval.export_rollouts else None
        policy = evaluation.evaluate(run, state.params, key, on_batch=collector)
    if collector is not None:
        with timer.phase("export_rollouts"):
            summary["eval_rollouts"] = str(export_rollouts(collector, workdir / "eval_rollouts"))
    with timer.phase("references"):
        refs, entries = evaluation.references(run)
    summary.update(policy=policy, references=entries,
                   preset=cfg.calibration.preset, suite=cfg.run.suite, grpo_steps=int(state.data_position),
                   truncated_questions=evaluation.truncated_questions(run),
                   stability=stability(run_dir.read_metrics("train")))
    spec = SUITES[cfg.run.suite]
    if spec.multi_hop is not None:
        summary["multi_hop_datasets"] = list(spec.multi_hop(run.suite))
        counts = collections.Counter(r.dataset for r in run.suite.test.records)
        summary["multi_turn"] = multi_hop_summary(policy, entries, summary["multi_hop_datasets"], counts)
        if sft_policy is not None:
            summary["multi_turn_sft"] = multi_hop_summary(sft_policy, {}, summary["multi_hop_datasets"], counts)
    if sft_policy is not None:
        summary["sft_policy"] = sft_policy
    with timer.phase("plots"):
        _plots(run_dir, summary, refs)
    with timer.phase("export_policy"):
        export_dir = workdir / "export"
        save_pretrained(state.model(), export_dir, run.model_config)
        run.tokenizer.save(export_dir)
    summary["timings"] = timer.breakdown()
    run_dir.write_summary(summary)
    return RunResult(workdir=workdir, preset=cfg.calibration.preset, timings=summary["timings"],
                     grpo_steps=int(state.data_position), policy=policy, sft_policy=sft_policy, references=refs,
                     datasets=tuple(run.suite.test.datasets), summary=summary)


def _plots(run_dir: RunDir, summary: dict, refs) -> None:
    path = run_dir.path
    plot_training_curves(run_dir.read_metrics("train"), path / "training_curves.png")
    points = {r.name: (r.cost_per_query, r.accuracy) for r in refs.values()}
    name = f"policy ({summary['preset']})"
    points[name] = (summary["policy"]["cost_per_query"], summary["policy"]["accuracy"])
    highlight = [name]
    if "sft_policy" in summary:
        points["policy after SFT"] = (summary["sft_policy"]["cost_per_query"], summary["sft_policy"]["accuracy"])
        highlight.append("policy after SFT")
    plot_accuracy_vs_cost(points, path / "accuracy_vs_cost.png", highlight=highlight)
