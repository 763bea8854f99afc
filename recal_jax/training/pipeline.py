"""A whole run, as a story: parse, set up, resume, SFT, GRPO, evaluate, write.

Everything a run writes lands in its workdir: config.json, metrics.jsonl, tensorboard/,
checkpoints/, plots, the evaluation rollouts, the exported policy (HF layout) and its
tokenizer, and summary.json LAST (written atomically: a run directory with summary.json
holds a complete run). A workdir holds one run: restarting it with a config that differs
in anything but the fields that are safe to change stops with one line naming them.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax

from recal_jax.calibration import init_state
from recal_jax.evaluation.run_dir import RunDir
from recal_jax.training import evaluation, grpo, outputs, sft
from recal_jax.training.checkpoint import Checkpointer
from recal_jax.training.components import grpo_optim_config
from recal_jax.training.optim import make_optimizer
from recal_jax.training.result import RunResult
from recal_jax.training.run_config import RunConfig, parse_config
from recal_jax.training.setup import Run, set_up
from recal_jax.training.timings import PhaseTimer
from recal_jax.training.train_state import TrainState

log = logging.getLogger(__name__)


def train_and_evaluate(config: Any, workdir, *, progress: bool = True, overwrite: bool = False) -> RunResult:
    """The main job. `config`: a RunConfig, or a ConfigDict / dict that is parsed here.
    Resumes from the latest checkpoint in workdir when there is one (the same run only);
    `overwrite` deletes an earlier run's outputs in workdir first."""
    timer = PhaseTimer()
    with timer.phase("startup"):
        cfg = config if isinstance(config, RunConfig) else parse_config(config)
        workdir = pathlib.Path(workdir)
        lock = outputs.claim_workdir(workdir, cfg, overwrite=overwrite)
    try:
        run = set_up(cfg, timer)
        with timer.phase("startup"):
            run_dir = RunDir(workdir)
        with timer.phase("checkpoint"):
            ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=cfg.checkpoint.keep)
        try:
            with timer.phase("startup"):
                run_dir.write_config(cfg.to_dict())  # after every check: a failed start leaves the old one
            return _story(run, run_dir, ckpt, workdir, progress)
        finally:
            ckpt.close()
            run_dir.close()
    finally:
        timer.close()
        if lock is not None:
            lock.release()


def _story(run: Run, run_dir: RunDir, ckpt: Checkpointer, workdir: pathlib.Path, progress: bool) -> RunResult:
    cfg, timer = run.cfg, run.timer
    key = jax.random.key(cfg.run.seed)
    key, k_sft, k_grpo, k_eval = jax.random.split(key, 4)
    grpo_opt = make_optimizer(grpo_optim_config(cfg.grpo))
    calib_state = init_state(run.calibration, len(run.suite.train.model_names))

    def fresh_grpo_state(model):
        return TrainState.create(model, grpo_opt, rng=k_grpo, calib_state=calib_state,
                                 with_reference=cfg.grpo.kl_coef > 0)

    facts: dict[str, Any] = {}
    if ckpt.latest_step() is not None:
        with timer.phase("checkpoint"):
            state, _ = ckpt.restore(fresh_grpo_state(run.model))
        log.warning("resumed from %s at GRPO step %d", ckpt.workdir, int(state.data_position))
        run_dir.truncate_metrics(int(state.data_position))  # GRPO rows of steps to redo; SFT rows stay
        sft_policy = run_dir.read_sft_eval()
    else:
        run_dir.start_fresh()  # no checkpoint: rows of a killed earlier attempt are rewritten
        with timer.phase("sft"):
            sft_state, facts["sft"] = sft.warm_start(run, cfg.sft, k_sft, progress=progress,
                                                     log_fn=lambda s, m: run_dir.log(s, m, phase="sft"))
        sft_policy = None
        if cfg.eval.after_sft:
            with timer.phase("eval_sft"):
                sft_policy = evaluation.evaluate(run, sft_state.params, k_eval)
            run_dir.log(0, {"eval": sft_policy}, phase="eval_sft")
            run_dir.write_sft_eval(sft_policy)
        with timer.phase("grpo_setup"):
            state = fresh_grpo_state(sft_state.model())
    state = grpo.train(run, state, cfg.grpo, optimizer=grpo_opt, ckpt=ckpt, run_dir=run_dir, progress=progress,
                       evaluate=lambda params, k: evaluation.evaluate(run, params, k))
    steps_done = int(state.data_position)
    if steps_done < cfg.grpo.steps:  # stopped early (grpo.stop_at_step): resume later
        return RunResult(workdir=workdir, preset=cfg.calibration.preset, timings=timer.breakdown(),
                         stopped_at_step=steps_done, grpo_steps=steps_done)
    return outputs.finish(run, run_dir, state, k_eval, sft_policy=sft_policy, facts=facts)
