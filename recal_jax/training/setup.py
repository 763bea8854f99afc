"""Stage 1, setup: a parsed RunConfig -> the built parts of a run (`Run`): suite, tokenizer,
policy, mesh, prompts, the pools and rollout runners of both splits, the calibration."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

from flax import nnx

from recal_jax.calibration import CalibrationConfig
from recal_jax.data.registry import SUITES
from recal_jax.data.suite import Suite
from recal_jax.models import ModelConfig, Tokenizer
from recal_jax.rollout.runner import RolloutRunner
from recal_jax.rollout.sampler import Sampler
from recal_jax.shapes import PROMPT_BUCKET
from recal_jax.training import builders, components
from recal_jax.training.memory_check import check_step_fits
from recal_jax.training.mesh import batch_parallelism, make_mesh
from recal_jax.training.builders import suite_request
from recal_jax.training.run_config import ConfigError, RunConfig
from recal_jax.training.timings import PhaseTimer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
    """The built parts of a run; every stage takes it with the config section it reads."""

    cfg: RunConfig
    suite: Suite
    tokenizer: Tokenizer
    model: nnx.Module
    model_config: ModelConfig
    mesh: Any
    train_runner: RolloutRunner
    test_runner: RolloutRunner
    calibration: CalibrationConfig
    seq_len: int
    answer_metric: str
    timer: PhaseTimer
    planner: Callable | None = None  # record -> Plan: how the suite's questions decompose (SuiteSpec.planner)


def set_up(cfg: RunConfig, timer: PhaseTimer | None = None) -> Run:
    """Builds every part of the run (nothing is written to disk here); `timer` records the
    phases (a fresh one when None)."""
    timer = PhaseTimer() if timer is None else timer
    with timer.phase("data"):
        suite = builders.load_suite(cfg)
        answer_metric = builders.resolve_answer_metric(cfg.reward.answer_metric, suite.train)
        cost_ref = builders.cost_ref(cfg.reward, suite.train)
    with timer.phase("tokenizer"):
        spec = SUITES[cfg.run.suite]
        words = spec.atomic_words(suite) if spec.atomic_words is not None else ()
        tokenizer = builders.build_tokenizer(cfg.tokenizer, cfg.model, suite, words)
        logs = {"train": suite.train, "test": suite.test}
        prompts = {name: builders.prompt_builder(cfg, lg, tokenizer) for name, lg in logs.items()}
    with timer.phase("policy"):
        model, model_config = builders.build_policy(cfg.model, tokenizer, cfg.run.seed)
        mesh = make_mesh(data=cfg.mesh.data, fsdp=cfg.mesh.fsdp, tensor=cfg.mesh.tensor)
        _check_batches(cfg, mesh)
    seq_len = components.sequence_length(cfg.grpo, (len(prompts[name](r)) for name, lg in logs.items()
                                                    for r in lg.records))
    if seq_len > model_config.max_position_embeddings:
        raise ConfigError(f"--config.grpo.max_total_tokens={cfg.grpo.max_total_tokens}: with the longest prompt "
                          f"the rollouts need {seq_len} positions, over the policy's "
                          f"{model_config.max_position_embeddings} (lower it, or tokenizer.max_question_tokens)")
    with timer.phase("memory_check"):
        check_step_fits(cfg, model, model_config, mesh, seq_len)
    with timer.phase("pools"):
        # prompt widths bucketed (capped at seq_len): a few compiled shapes, no padding to seq_len
        sampler = Sampler(model, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, max_prompt_len=seq_len,
                          prompt_bucket=PROMPT_BUCKET)
        runners = {name: components.rollout_runner(
            cfg.grpo, cfg.eval, generate_fn=sampler.sample, tokenizer=tokenizer,
            pool=builders.build_pool(cfg.pool, cfg, lg), log=lg, split=name, prompt_ids=prompts[name],
            seq_len=seq_len, answer_metric=answer_metric) for name, lg in logs.items()}
    calibration = cfg.calibration.build(len(suite.train.datasets), cost_ref, cfg.reward.route_rule)
    planner = spec.planner(suite_request(cfg)) if spec.planner is not None else None
    return Run(planner=planner, cfg=cfg, suite=suite, tokenizer=tokenizer, model=model, model_config=model_config, mesh=mesh,
               train_runner=runners["train"], test_runner=runners["test"], calibration=calibration,
               seq_len=seq_len, answer_metric=answer_metric, timer=timer)


def _check_batches(cfg: RunConfig, mesh) -> None:
    """Batches split over the mesh's data x fsdp axes (and GRPO's micro-batches): a size that
    does not divide is one line naming the flag, before any work."""
    shards = batch_parallelism(mesh)
    g = cfg.grpo
    rows, need = g.instances_per_step * g.group_size, g.microbatches * shards
    if g.steps and rows % need:
        raise ConfigError(f"--config.grpo.instances_per_step={g.instances_per_step}: x grpo.group_size="
                          f"{g.group_size} = {rows} rollouts per step, which must divide by grpo.microbatches x "
                          f"the mesh's data x fsdp = {need} ({len(mesh.devices.flat)} devices)")
    if cfg.sft.steps and cfg.sft.batch_size % shards:
        raise ConfigError(f"--config.sft.batch_size={cfg.sft.batch_size}: must divide by the mesh's data x fsdp = "
                          f"{shards} ({len(mesh.devices.flat)} devices)")
