"""A whole run: suite -> tokenizer -> policy -> SFT warm start -> GRPO with ReCal -> evaluation.

Everything a run writes lands in its workdir: config.json, metrics.jsonl, tensorboard/,
checkpoints/, summary.json, plots, the exported policy (HF layout) and its tokenizer.
"""

from __future__ import annotations

import dataclasses
import functools
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
from recal_jax.models import save_pretrained
from recal_jax.rollout.engine import RolloutEngine
from recal_jax.rollout.sampler import GREEDY, Sampler, SamplingOptions
from recal_jax.routing.pools import call_many_sync
from recal_jax.routing.rewards import default_cost_ref
from recal_jax.training import builders
from recal_jax.training.checkpoint import Checkpointer
from recal_jax.evaluation.evaluate import evaluate_policy, results_table, route_summary
from recal_jax.training.grpo import GRPOIteration
from recal_jax.training.mesh import make_mesh
from recal_jax.training.optim import OptimConfig, make_optimizer
from recal_jax.evaluation.plots import plot_accuracy_vs_cost, plot_training_curves
from recal_jax.evaluation.reference_routers import reference_routers
from recal_jax.rollout.runner import RolloutRunner, Scorer
from recal_jax.evaluation.run_dir import RunDir
from recal_jax.evaluation.stability import stability
from recal_jax.training.sft import run_sft
from recal_jax.training.sft_data import build_demonstrations
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import LossConfig, compute_logprobs, make_sft_step, make_train_step

log = logging.getLogger(__name__)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def calibration_config(config, num_datasets: int, cost_ref: float) -> CalibrationConfig:
    """The preset named in config.calibration with every field that is set (not None) there,
    the route rule and cost_ref applied."""
    fields = {k: v for k, v in config.calibration.items() if k != "preset" and v is not None}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return CalibrationConfig.preset(config.calibration.preset, num_datasets=num_datasets,
                                    cost_ref=float(cost_ref), route_rule=config.reward.route_rule, **fields)


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
    g = config.grpo
    mesh = make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp, tensor=config.mesh.tensor)
    prompts = {name: builders.prompt_builder(config, lg, tokenizer)
               for name, lg in (("train", suite.train), ("test", suite.test))}
    max_prompt = max(len(prompts[name](r)) for name, lg in (("train", suite.train), ("test", suite.test))
                     for r in lg.records)
    seq_len = _round_up(max_prompt + g.max_total_tokens, 16)
    sampler = Sampler(model, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, max_prompt_len=seq_len)
    cost_ref = float(config.reward.cost_ref) or default_cost_ref(suite.train)
    runners = {}
    for name, lg in (("train", suite.train), ("test", suite.test)):
        engine = RolloutEngine(
            sampler.sample, tokenizer, builders.build_pool(config, lg), protocol=lg.protocol,
            max_turns=g.max_turns, max_new_tokens_per_turn=g.max_new_tokens_per_turn,
            max_total_tokens=g.max_total_tokens, max_info_tokens=g.max_info_tokens,
            row_pad_multiple=g.instances_per_step * g.group_size if name == "train" else config.eval.batch_size,
        )
        scorer = Scorer(lg, config.reward.answer_metric, cost_ref, config.reward.route_rule)
        runners[name] = RolloutRunner(engine, scorer, prompts[name], seq_len)
    calibration = calibration_config(config, len(suite.train.datasets), cost_ref)
    return Run(config, run_dir, suite, tokenizer, model, model_config, mesh, runners["train"],
               runners["test"], calibration, seq_len)


def _demonstrations(run: Run):
    c = run.config
    runner = run.train_runner
    pool = runner.engine.pool
    reply = lambda model, query, record: call_many_sync(pool, [(model, query, record)])[0].text  # noqa: E731
    return build_demonstrations(
        run.suite.train, run.tokenizer.encode, runner.prompt_ids, reply, runner.engine.information_ids,
        rule=c.sft.routing, best_prob=c.sft.best_prob, query_style=c.sft.query_style,
        reply_swap=c.sft.reply_swap, answer_weight=c.sft.answer_weight, seed=c.seed,
    )


def train_sampling(config) -> SamplingOptions:
    return SamplingOptions(temperature=config.grpo.temperature, top_p=config.grpo.top_p)


def eval_sampling(config) -> SamplingOptions:
    """eval.greedy (the default, spec section 10): argmax decoding; otherwise GRPO's sampling."""
    return GREEDY if config.eval.greedy else train_sampling(config)


def _evaluate(run: Run, params, calib_state, key) -> dict:
    return evaluate_policy(run.test_runner, params, run.suite.test, key, freq_m=np.asarray(calib_state.freq),
                           batch_size=run.config.eval.batch_size, sampling=eval_sampling(run.config))


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
    grpo_opt = make_optimizer(OptimConfig(
        learning_rate=g.learning_rate, warmup_steps=min(g.warmup_steps, g.steps * g.updates_per_batch),
        total_steps=max(g.steps * g.updates_per_batch, 1), weight_decay=g.weight_decay,
        max_grad_norm=g.grad_clip or None))
    calib_state = init_state(run.calibration, num_models)

    def fresh_grpo_state(model):
        return TrainState.create(model, grpo_opt, rng=k_grpo, calib_state=calib_state,
                                 with_reference=g.kl_coef > 0)

    summary: dict[str, Any] = {"timings": {}}
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(fresh_grpo_state(run.model))
        log.info("resumed from %s at GRPO step %d", ckpt.workdir, int(state.data_position))
        rd.truncate_metrics(int(state.data_position))
    else:
        t0 = time.perf_counter()
        sft_opt = make_optimizer(OptimConfig(
            learning_rate=c.sft.learning_rate, warmup_steps=min(c.sft.warmup_steps, c.sft.steps),
            total_steps=max(c.sft.steps, 1), max_grad_norm=1.0))
        state = TrainState.create(run.model, sft_opt, rng=k_sft)
        if c.sft.steps > 0:
            demos = _demonstrations(run)
            sft_step = make_sft_step(state.graphdef, sft_opt, run.mesh)
            demo_len = _round_up(max(len(d.token_ids) for d in demos), 16)
            state = run_sft(state, sft_step, demos, steps=c.sft.steps, batch_size=c.sft.batch_size,
                            seq_len=min(demo_len, run.seq_len), pad_id=run.tokenizer.pad_id, seed=c.seed,
                            log_fn=lambda s, m: rd.log(s, m, phase="sft"), progress=progress)
        summary["timings"]["sft_seconds"] = time.perf_counter() - t0
        state = fresh_grpo_state(state.model())
        if c.eval.after_sft:
            t0 = time.perf_counter()
            summary["sft_policy"] = _evaluate(run, state.params, state.calib_state, k_eval)
            rd.log(0, {"eval": summary["sft_policy"]}, phase="eval_sft")
            summary["timings"]["eval_sft_seconds"] = time.perf_counter() - t0
    state = _grpo(run, state, grpo_opt, ckpt, progress)
    if int(state.data_position) < c.grpo.steps:  # stopped early (grpo.stop_at_step): resume later
        ckpt.close()
        rd.close()
        return {"stopped_at_step": int(state.data_position), "timings": summary["timings"]}

    t0 = time.perf_counter()
    policy = _evaluate(run, state.params, state.calib_state, k_eval)
    summary["timings"]["eval_seconds"] = time.perf_counter() - t0
    refs = reference_routers(run.suite.test)
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


def _grpo(run: Run, state: TrainState, optimizer, ckpt: Checkpointer, progress: bool) -> TrainState:
    c, g, rd = run.config, run.config.grpo, run.run_dir
    train_step = make_train_step(
        state.graphdef, optimizer,
        LossConfig(clip_low=g.clip_low, clip_high=g.clip_high, dual_clip=g.dual_clip or None,
                   agg=g.loss_agg, kl_coef=g.kl_coef, kl_kind=g.kl_kind),
        run.mesh, num_microbatches=g.microbatches)
    logprobs = jax.jit(functools.partial(compute_logprobs, state.graphdef))
    iteration = GRPOIteration(run.train_runner, run.calibration, train_step, logprobs, g.group_size,
                              g.updates_per_batch, g.recompute_old_logprobs, train_sampling(c))
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
            ev = _evaluate(run, state.params, state.calib_state, jax.random.key(step))
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
