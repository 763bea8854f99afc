"""Typed config sections -> the objects that train: sampling options, sequence length,
rollout engine and runner of a split, optimiser and loss configs, the GRPO step's log-prob
function and the GRPO iteration. Each function takes the section it reads and returns one
object; nothing here holds state. (recal_jax.training.builders builds the data and model
side: suite, tokenizer, policy, pools, prompts.)
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

import jax
from flax import nnx
from jax.sharding import Mesh

from recal_jax.calibration import CalibrationConfig
from recal_jax.data.schema import RoutingLog, RoutingRecord
from recal_jax.losses import kl_coef_schedule
from recal_jax.rollout.engine import RolloutEngine
from recal_jax.rollout.runner import RolloutRunner, Scorer
from recal_jax.rollout.sampler import GREEDY, SamplingOptions
from recal_jax.routing.pools import Pool
from recal_jax.shapes import SEQ_LEN_BUCKET, round_up
from recal_jax.training.iteration import GRPOIteration
from recal_jax.training.mesh import batch_parallelism
from recal_jax.training.optim import OptimConfig
from recal_jax.training.run_config import EvalSection, GrpoSection, SftSection
from recal_jax.training.train_step import LossConfig, batch_logprobs

SPLITS = ("train", "test")


def train_sampling(grpo: GrpoSection) -> SamplingOptions:
    """GRPO's sampling: grpo.temperature and grpo.top_p."""
    return SamplingOptions(temperature=grpo.temperature, top_p=grpo.top_p)


def eval_sampling(evaluation: EvalSection, grpo: GrpoSection) -> SamplingOptions:
    """eval.greedy (the default, spec section 10): argmax decoding; otherwise GRPO's sampling."""
    return GREEDY if evaluation.greedy else train_sampling(grpo)


def sequence_length(grpo: GrpoSection, prompt_lengths: Iterable[int]) -> int:
    """T of every rollout: the longest prompt + grpo.max_total_tokens, rounded up to SEQ_LEN_BUCKET."""
    return round_up(max(prompt_lengths) + grpo.max_total_tokens, SEQ_LEN_BUCKET)


def row_pad_multiple(grpo: GrpoSection, evaluation: EvalSection, split: str) -> int:
    """Rows of a resumed generation round are repeated up to a multiple of this: the GRPO
    batch (instances x group size) for train, eval.batch_size for test."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return grpo.instances_per_step * grpo.group_size if split == "train" else evaluation.batch_size


def rollout_runner(grpo: GrpoSection, evaluation: EvalSection, *, generate_fn: Callable, tokenizer, pool: Pool,
                   log: RoutingLog, split: str, prompt_ids: Callable[[RoutingRecord], list[int]], seq_len: int,
                   answer_metric: str) -> RolloutRunner:
    """Engine (the budgets of grpo) + scorer (`answer_metric`, already resolved for the log) of one split."""
    engine = RolloutEngine(
        generate_fn=generate_fn, tokenizer=tokenizer, pool=pool, protocol=log.protocol, max_turns=grpo.max_turns,
        max_new_tokens_per_turn=grpo.max_new_tokens_per_turn, max_total_tokens=grpo.max_total_tokens,
        max_info_tokens=grpo.max_info_tokens, row_pad_multiple=row_pad_multiple(grpo, evaluation, split),
    )
    scorer = Scorer(log=log, answer_metric=answer_metric)
    return RolloutRunner(engine=engine, scorer=scorer, prompt_ids=prompt_ids, seq_len=seq_len)


def grpo_optim_config(grpo: GrpoSection) -> OptimConfig:
    """GRPO's optimiser: one schedule step per update (grpo.steps x grpo.updates_per_batch)."""
    total = grpo.steps * grpo.updates_per_batch
    return OptimConfig(learning_rate=grpo.learning_rate, warmup_steps=min(grpo.warmup_steps, total),
                       total_steps=max(total, 1), weight_decay=grpo.weight_decay,
                       max_grad_norm=grpo.grad_clip or None)


def sft_optim_config(sft: SftSection) -> OptimConfig:
    """The SFT warm start's optimiser (gradient norm clipped at 1)."""
    return OptimConfig(learning_rate=sft.learning_rate, warmup_steps=min(sft.warmup_steps, sft.steps),
                       total_steps=max(sft.steps, 1), max_grad_norm=1.0)


def loss_config(grpo: GrpoSection) -> LossConfig:
    """The GRPO loss of spec section 7 (grpo.dual_clip 0 = off)."""
    return LossConfig(clip_low=grpo.clip_low, clip_high=grpo.clip_high, dual_clip=grpo.dual_clip or None,
                      agg=grpo.loss_agg, kl_coef=grpo.kl_coef, kl_kind=grpo.kl_kind)


def logprobs_fn(graphdef: nnx.GraphDef) -> Callable:
    """(params, batch) -> (logp_bt, entropy_bt) of a train batch in either layout.
    batch_logprobs is already jitted (graphdef static), so the partial is not jitted again."""
    return functools.partial(batch_logprobs, graphdef)


def grpo_iteration(grpo: GrpoSection, *, runner: RolloutRunner, calibration: CalibrationConfig,
                   train_step: Callable, logprobs: Callable, mesh: Mesh | None = None) -> GRPOIteration:
    """One GRPO iteration (roll out, score, calibrate, update) with the options of grpo.
    `mesh` (the train step's) is needed when there are several processes: each rolls out its
    own slice of the records and the batch is assembled over the mesh (GRPOIteration)."""
    return GRPOIteration(
        runner=runner, calibration=calibration, train_step=train_step, logprobs_fn=logprobs,
        group_size=grpo.group_size, updates_per_batch=grpo.updates_per_batch,
        recompute_old_logprobs=grpo.recompute_old_logprobs, sampling=train_sampling(grpo), mesh=mesh,
        shared_prompt=uses_shared_prompt(grpo, mesh), kl_coef_schedule=kl_coef_schedule_of(grpo),
    )


def kl_coef_schedule_of(grpo: GrpoSection):
    """grpo.kl_schedule over grpo.steps; None for a constant coefficient (the loss config's own)."""
    if grpo.kl_schedule == "constant":
        return None
    return kl_coef_schedule(grpo.kl_schedule, grpo.kl_coef, grpo.kl_coef_final, grpo.steps)


def uses_shared_prompt(grpo: GrpoSection, mesh: Mesh | None) -> bool:
    """grpo.shared_prompt where the layout applies: one process, and whole groups per
    micro-batch shard (instances_per_step divisible by microbatches x the mesh's data x
    fsdp); elsewhere the full rows, which give the same gradient."""
    if not grpo.shared_prompt or jax.process_count() > 1:
        return False
    shards = batch_parallelism(mesh) if mesh is not None else 1
    return grpo.instances_per_step % (grpo.microbatches * shards) == 0
