"""A whole run: suite -> tokenizer -> policy -> SFT warm start -> GRPO with ReCal -> evaluation.

Everything a run writes lands in its workdir: config.json, metrics.jsonl, tensorboard/,
checkpoints/, summary.json, plots, the exported policy (HF layout) and its tokenizer.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import pathlib
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from recal_jax.calibration import CalibrationConfig, init_state
from recal_jax.data import stratified_batches
from recal_jax.evaluation.evaluate import evaluate_policy, results_table, route_summary
from recal_jax.evaluation.plots import plot_accuracy_vs_cost, plot_training_curves
from recal_jax.evaluation.reference_routers import reference_routers
from recal_jax.evaluation.rollout_export import RolloutCollector, export_rollouts
from recal_jax.evaluation.run_dir import RunDir
from recal_jax.evaluation.stability import stability
from recal_jax.models import save_pretrained
from recal_jax.rollout.runner import RolloutRunner
from recal_jax.rollout.sampler import Sampler
from recal_jax.routing.pools import call_many_sync
from recal_jax.shapes import round_up
from recal_jax.training import builders, components
from recal_jax.training.checkpoint import Checkpointer
from recal_jax.training.mesh import make_mesh
from recal_jax.training.optim import make_optimizer
from recal_jax.training.sft import HeldOutCriterion, run_sft, split_heldout
from recal_jax.training.sft_data import build_demonstrations
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import make_sft_step, make_train_step

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """The built parts of a run (see `build`)."""

    config: Any
    run_dir: RunDir
    suite: Any
    tokenizer: Any
    model: nnx.Module
    model_config: Any
    mesh: Any
    train_runner: RolloutRunner
    test_runner: RolloutRunner
    calibration: CalibrationConfig
    seq_len: int


def build(config, workdir) -> Run:
    workdir = pathlib.Path(workdir)
    run_dir = RunDir(workdir)
    run_dir.write_config(config)
    suite = builders.load_suite(config)
    tokenizer = builders.build_tokenizer(config, suite)
    model, model_config = builders.build_policy(config, tokenizer, config.seed)
    mesh = make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor)
    logs = {"train": suite.train, "test": suite.test}
    prompts = {name: builders.prompt_builder(config, lg, tokenizer) for name, lg in logs.items()}
    seq_len = components.sequence_length(config, (len(prompts[name](r)) for name, lg in logs.items()
                                                  for r in lg.records))
    # prompt widths bucketed by 64 (capped at seq_len): a few compiled shapes, no padding to seq_len
    sampler = Sampler(model, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, max_prompt_len=seq_len,
                      prompt_bucket=64)
    runners = {name: components.rollout_runner(
        config, generate_fn=sampler.sample, tokenizer=tokenizer, pool=builders.build_pool(config, lg), log=lg,
        split=name, prompt_ids=prompts[name], seq_len=seq_len) for name, lg in logs.items()}
    cost_ref = components.cost_ref(config, suite.train)
    calibration = components.calibration_config(config, len(suite.train.datasets), cost_ref)
    return Run(config=config, run_dir=run_dir, suite=suite, tokenizer=tokenizer, model=model,
               model_config=model_config, mesh=mesh, train_runner=runners["train"], test_runner=runners["test"],
               calibration=calibration, seq_len=seq_len)


def _demonstrations(run: Run):
    c = run.config
    runner = run.train_runner
    pool = runner.engine.pool
    reply = lambda model, query, record: call_many_sync(pool, [(model, query, record)])[0].text  # noqa: E731
    return build_demonstrations(
        run.suite.train, run.tokenizer.encode, runner.prompt_ids, reply, runner.engine.information_ids,
        rule=c.sft.routing, best_prob=c.sft.best_prob, query_style=c.sft.query_style,
        reply_swap=c.sft.reply_swap, answer_weight=c.sft.answer_weight, think=c.sft.think, seed=c.seed,
    )


def _evaluate(run: Run, params, key, on_batch=None) -> dict:
    return evaluate_policy(run.test_runner, params, run.suite.test, key,
                           batch_size=run.config.eval.batch_size, sampling=components.eval_sampling(run.config),
                           on_batch=on_batch)


def train_and_evaluate(config, workdir, *, progress: bool = True) -> dict:
    """The main job. Resumes from the latest checkpoint in workdir when there is one."""
    t_start = time.perf_counter()
    run = build(config, workdir)
    c, rd = config, run.run_dir
    g = c.grpo
    num_models = len(run.suite.train.model_names)
    key = jax.random.key(c.seed)
    key, k_sft, k_grpo, k_eval = jax.random.split(key, 4)

    ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints", max_to_keep=c.checkpoint.keep)
    grpo_opt = make_optimizer(components.grpo_optim_config(c))
    calib_state = init_state(run.calibration, num_models)

    def fresh_grpo_state(model):
        return TrainState.create(model, grpo_opt, rng=k_grpo, calib_state=calib_state,
                                 with_reference=g.kl_coef > 0)

    summary: dict[str, Any] = {"timings": {}}
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(fresh_grpo_state(run.model))
        log.warning("resumed from %s at GRPO step %d", ckpt.workdir, int(state.data_position))
        rd.truncate_metrics(int(state.data_position))  # GRPO rows of steps to redo; SFT rows stay
        if rd.read_sft_eval() is not None:
            summary["sft_policy"] = rd.read_sft_eval()
    else:
        rd.start_fresh()  # no checkpoint: rows of a killed earlier attempt are rewritten
        state = fresh_grpo_state(_sft_stage(run, k_sft, k_eval, summary, progress).model())
    state = _grpo(run, state, grpo_opt, ckpt, progress)
    if int(state.data_position) < c.grpo.steps:  # stopped early (grpo.stop_at_step): resume later
        ckpt.close()
        rd.close()
        return {"stopped_at_step": int(state.data_position), "timings": summary["timings"]}
    return _final_stage(run, state, ckpt, summary, k_eval, t_start)


def _sft_stage(run: Run, k_sft, k_eval, summary: dict, progress: bool) -> TrainState:
    """SFT warm start, then (eval.after_sft) the SFT policy's evaluation into summary["sft_policy"]."""
    c, rd = run.config, run.run_dir
    t0 = time.perf_counter()
    state, summary["sft"] = _sft_warm_start(run, k_sft, progress)
    summary["timings"]["sft_seconds"] = time.perf_counter() - t0
    if c.eval.after_sft:
        t0 = time.perf_counter()
        summary["sft_policy"] = _evaluate(run, state.params, k_eval)
        rd.log(0, {"eval": summary["sft_policy"]}, phase="eval_sft")
        rd.write_sft_eval(summary["sft_policy"])
        summary["timings"]["eval_sft_seconds"] = time.perf_counter() - t0
    return state


def _final_stage(run: Run, state: TrainState, ckpt: Checkpointer, summary: dict, k_eval, t_start: float) -> dict:
    """After GRPO: the final evaluation, reference routers, summary.json, plots, the exported
    policy; closes the checkpointer and the run directory; returns the summary with tables."""
    c, rd, workdir = run.config, run.run_dir, run.run_dir.path
    t0 = time.perf_counter()
    collector = RolloutCollector(run.suite.test) if c.eval.get("export_rollouts") else None
    policy = _evaluate(run, state.params, k_eval, on_batch=collector)
    if collector is not None:
        summary["eval_rollouts"] = str(export_rollouts(collector, pathlib.Path(workdir) / "eval_rollouts"))
    summary["truncated_questions"] = {name: len(getattr(runner.prompt_ids, "truncated", ()))
                                      for name, runner in (("train", run.train_runner), ("test", run.test_runner))}
    summary["timings"]["eval_seconds"] = time.perf_counter() - t0
    refs = reference_routers(run.suite.test, run.suite.train, seed=c.seed,
                             cache_dir=c.eval.get("reference_cache_dir") or None)
    summary.update(policy=policy, references={k: v.to_json() for k, v in refs.items()},
                   preset=c.calibration.preset, suite=c.suite, grpo_steps=int(state.data_position))
    summary["stability"] = stability(rd.read_metrics("train"))
    summary["timings"]["total_seconds"] = time.perf_counter() - t_start
    rd.write_summary(summary)
    _plots(run, summary, refs)
    export_dir = pathlib.Path(workdir) / "export"
    save_pretrained(state.model(), export_dir, run.model_config)
    run.tokenizer.save(export_dir)
    ckpt.close()
    rd.close()
    summary["table"] = results_table(policy, refs, run.suite.test.datasets, f"policy ({c.calibration.preset})")
    if "sft_policy" in summary:
        summary["table_sft"] = results_table(summary["sft_policy"], refs, run.suite.test.datasets, "policy after SFT")
    summary["routes"] = route_summary(policy)
    return summary


def _sft_warm_start(run: Run, key, progress: bool) -> tuple[TrainState, dict]:
    """SFT on demonstrations (config.sft; no steps: the policy as built) -> (the SFT TrainState,
    {"steps": updates made, "heldout_copy_accuracy": with sft.until_copy_accuracy})."""
    c = run.config
    sft_opt = make_optimizer(components.sft_optim_config(c))
    state = TrainState.create(run.model, sft_opt, rng=key)
    if c.sft.steps <= 0:
        return state, {"steps": 0}
    demos, until = _sft_demonstrations(run)
    sft_step = make_sft_step(state.graphdef, sft_opt, mesh=run.mesh)
    demo_len = round_up(max(len(d.token_ids) for d in demos), components.SEQ_LEN_BUCKET)
    state, info = run_sft(state, sft_step, demos, steps=c.sft.steps, batch_size=c.sft.batch_size,
                          seq_len=min(demo_len, run.seq_len), pad_id=run.tokenizer.pad_id, seed=c.seed,
                          log_fn=lambda s, m: run.run_dir.log(s, m, phase="sft"), progress=progress,
                          until=until)
    log.warning("SFT: %d steps%s", info["steps"], "" if until is None else
                f", held-out answer-copy accuracy {info.get('heldout_copy_accuracy', float('nan')):.3f}")
    return state, info


def _sft_demonstrations(run: Run):
    """(training demonstrations, HeldOutCriterion or None): with sft.until_copy_accuracy > 0,
    the demonstrations of sft.heldout_questions questions are held out to decide when to stop."""
    c = run.config
    demos = _demonstrations(run)
    if not c.sft.until_copy_accuracy:
        return demos, None
    questions = {r.id: r.question for r in run.suite.train.records}
    demos, heldout = split_heldout(demos, questions, c.sft.heldout_questions, c.seed)
    return demos, HeldOutCriterion(heldout, target=c.sft.until_copy_accuracy, every=c.sft.check_every,
                                   min_steps=c.sft.min_steps)


def _grpo(run: Run, state: TrainState, optimizer, ckpt: Checkpointer, progress: bool) -> TrainState:
    c, g, rd = run.config, run.config.grpo, run.run_dir
    train_step = make_train_step(state.graphdef, optimizer, loss_config=components.loss_config(c),
                                 mesh=run.mesh, num_microbatches=g.microbatches)
    iteration = components.grpo_iteration(c, runner=run.train_runner, calibration=run.calibration,
                                          train_step=train_step, logprobs=components.logprobs_fn(state.graphdef),
                                          mesh=run.mesh)
    start = int(state.data_position)
    batches = stratified_batches(run.suite.train, g.instances_per_step, np.random.default_rng(c.seed))
    batches = itertools.islice(batches, start, None)  # exact resume: the same batches, in order
    stop = min(g.steps, g.stop_at_step) if g.stop_at_step else g.steps
    bar = tqdm(range(start, stop), desc="grpo", disable=not progress, initial=start, total=g.steps)
    cost_so_far = sum(r.get("cost_total", 0.0) for r in rd.read_metrics("train"))
    for step in bar:
        state, metrics = iteration(state, next(batches))
        cost_so_far += metrics["cost_total"]
        metrics["cost_so_far"] = cost_so_far
        if step % c.log_every == 0 or step == g.steps - 1:
            rd.log(step, metrics, phase="train")
        if c.eval.every and (step + 1) % c.eval.every == 0 and step + 1 < g.steps:
            ev = _evaluate(run, state.params, jax.random.key(step))
            rd.log(step, {"eval": ev}, phase="eval")
        if c.checkpoint.every and (step + 1) % c.checkpoint.every == 0:
            ckpt.save(state)
        bar.set_postfix(reward=f"{metrics['reward']['answer']:.2f}", fmt=f"{metrics['format_valid']:.2f}",
                        cost=f"{metrics['cost_per_rollout']:.2g}",
                        sps=f"{1.0 / max(metrics['perf']['seconds'], 1e-9):.2f}")
    ckpt.save(state)
    ckpt.wait()
    return state


def _plots(run: Run, summary: dict, refs) -> None:
    path = run.run_dir.path
    plot_training_curves(run.run_dir.read_metrics("train"), path / "training_curves.png")
    points = {r.name: (r.cost_per_query, r.accuracy) for r in refs.values()}
    name = f"policy ({summary['preset']})"
    points[name] = (summary["policy"]["cost_per_query"], summary["policy"]["accuracy"])
    highlight = [name]
    if "sft_policy" in summary:
        points["policy after SFT"] = (summary["sft_policy"]["cost_per_query"], summary["sft_policy"]["accuracy"])
        highlight.append("policy after SFT")
    plot_accuracy_vs_cost(points, path / "accuracy_vs_cost.png", highlight=highlight)
