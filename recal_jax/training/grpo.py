"""Stage 3, GRPO with ReCal: `train` holds the loop (batches, iterations, logging, periodic
evaluation and checkpoints); one iteration is recal_jax.training.iteration.GRPOIteration."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from recal_jax.data import stratified_batches
from recal_jax.evaluation.run_dir import RunDir
from recal_jax.training import components
from recal_jax.training.checkpoint import Checkpointer
from recal_jax.training.run_config import GrpoSection
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import make_train_step

if TYPE_CHECKING:
    from recal_jax.training.setup import Run


def train(run: "Run", state: TrainState, grpo: GrpoSection, *, optimizer, ckpt: Checkpointer, run_dir: RunDir,
          evaluate: Callable[[object, object], dict], progress: bool = True) -> TrainState:
    """GRPO steps from state.data_position up to grpo.steps (or grpo.stop_at_step), on the same
    stratified batches in order (an exact resume); checkpoints at the end (and every
    checkpoint.every steps). `evaluate(params, key)` is the periodic evaluation (eval.every)."""
    cfg, timer = run.cfg, run.timer
    with timer.phase("grpo_setup"):
        train_step = make_train_step(state.graphdef, optimizer, loss_config=components.loss_config(grpo),
                                     mesh=run.mesh, num_microbatches=grpo.microbatches)
        iteration = components.grpo_iteration(grpo, runner=run.train_runner, calibration=run.calibration,
                                              train_step=train_step, logprobs=components.logprobs_fn(state.graphdef),
                                              mesh=run.mesh)
        state = train_step.place(state)
    start = int(state.data_position)
    batches = stratified_batches(run.suite.train, grpo.instances_per_step, np.random.default_rng(cfg.run.seed))
    batches = itertools.islice(batches, start, None)  # exact resume: the same batches, in order
    stop = min(grpo.steps, grpo.stop_at_step) if grpo.stop_at_step else grpo.steps
    bar = tqdm(range(start, stop), desc="grpo", disable=not progress, initial=start, total=grpo.steps)
    # a resumed run continues the last logged row's running total (with log_every > 1 the rows
    # are a subsample, so summing their cost_total would undercount)
    logged = run_dir.read_metrics("train")
    cost_so_far = float(logged[-1].get("cost_so_far", 0.0)) if logged else 0.0
    for step in bar:
        compiles = timer.compiles.count
        with timer.phase("grpo_update"):
            state, metrics = iteration(state, next(batches))
            timer.add("grpo_rollout", metrics["perf"]["rollout_seconds"])
        metrics["perf"]["compiles"] = timer.compiles.count - compiles  # XLA compiles during this step
        cost_so_far += metrics["cost_total"]
        metrics["cost_so_far"] = cost_so_far
        if step % cfg.run.log_every == 0 or step == grpo.steps - 1:
            with timer.phase("metrics_log"):
                run_dir.log(step, metrics, phase="train")
        if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < grpo.steps:
            with timer.phase("eval_during_grpo"):
                run_dir.log(step, {"eval": evaluate(state.params, jax.random.key(step))}, phase="eval")
        if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0:
            with timer.phase("checkpoint"):
                ckpt.save(state)
        bar.set_postfix(reward=f"{metrics['reward']['answer']:.2f}", fmt=f"{metrics['format_valid']:.2f}",
                        cost=f"{metrics['cost_per_rollout']:.2g}",
                        sps=f"{1.0 / max(metrics['perf']['seconds'], 1e-9):.2f}")
    with timer.phase("checkpoint"):
        ckpt.save(state)
        ckpt.wait()
    return state
