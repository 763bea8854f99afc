"""Config -> training components: the one place where a run's ml_collections config
(launch/configs) becomes the objects that train, each built with keyword arguments.

Here: calibration config, sampling options, sequence length, rollout engine and runner of
a log, optimiser and loss configs, the GRPO step's log-prob function and the GRPO
iteration. (recal_jax.training.builders builds the data and model side: suite,
tokenizer, policy, pools, prompts.) Every function reads the config directly and returns
one object; nothing here holds state.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

from flax import nnx
from jax.sharding import Mesh

from recal_jax.calibration import CalibrationConfig
from recal_jax.data.schema import RoutingLog, RoutingRecord
from recal_jax.rollout.engine import RolloutEngine
from recal_jax.rollout.runner import RolloutRunner, Scorer
from recal_jax.rollout.sampler import GREEDY, SamplingOptions
from recal_jax.routing.pools import Pool
from recal_jax.routing.rewards import default_cost_ref
from recal_jax.shapes import round_up
from recal_jax.training.builders import resolve_answer_metric
from recal_jax.training.grpo import GRPOIteration
from recal_jax.training.optim import OptimConfig
from recal_jax.training.train_step import LossConfig, compute_logprobs

SEQ_LEN_BUCKET = 16  # sequence lengths (rollouts, SFT demonstrations) are multiples of this
SPLITS = ("train", "test")


def cost_ref(config, train_log: RoutingLog) -> float:
    """reward.cost_ref when set (> 0), else the train log's default (spec section 3)."""
    return float(config.reward.cost_ref) or default_cost_ref(train_log)


def calibration_config(config, num_datasets: int, cost_ref: float) -> CalibrationConfig:
    """The preset named in config.calibration with every field that is set (not None) there,
    the route rule and cost_ref applied."""
    fields = {k: v for k, v in config.calibration.items() if k != "preset" and v is not None}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return CalibrationConfig.preset(config.calibration.preset, num_datasets=num_datasets,
                                    cost_ref=float(cost_ref), route_rule=config.reward.route_rule, **fields)


def train_sampling(config) -> SamplingOptions:
    """GRPO's sampling: grpo.temperature and grpo.top_p."""
    return SamplingOptions(temperature=config.grpo.temperature, top_p=config.grpo.top_p)


def eval_sampling(config) -> SamplingOptions:
    """eval.greedy (the default, spec section 10): argmax decoding; otherwise GRPO's sampling."""
    return GREEDY if config.eval.greedy else train_sampling(config)


def sequence_length(config, prompt_lengths: Iterable[int]) -> int:
    """T of every rollout: the longest prompt + grpo.max_total_tokens, rounded up to SEQ_LEN_BUCKET."""
    return round_up(max(prompt_lengths) + config.grpo.max_total_tokens, SEQ_LEN_BUCKET)


def row_pad_multiple(config, split: str) -> int:
    """Rows of a resumed generation round are repeated up to a multiple of this: the GRPO
    batch (instances x group size) for train, eval.batch_size for test."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "train":
        return config.grpo.instances_per_step * config.grpo.group_size
    return config.eval.batch_size


def rollout_engine(config, *, generate_fn: Callable, tokenizer, pool: Pool, log: RoutingLog,
                   split: str) -> RolloutEngine:
    """The multi-turn engine of one split, with the budgets of config.grpo."""
    g = config.grpo
    return RolloutEngine(
        generate_fn=generate_fn, tokenizer=tokenizer, pool=pool, protocol=log.protocol, max_turns=g.max_turns,
        max_new_tokens_per_turn=g.max_new_tokens_per_turn, max_total_tokens=g.max_total_tokens,
        max_info_tokens=g.max_info_tokens, row_pad_multiple=row_pad_multiple(config, split),
    )


def rollout_runner(config, *, generate_fn: Callable, tokenizer, pool: Pool, log: RoutingLog, split: str,
                   prompt_ids: Callable[[RoutingRecord], list[int]], seq_len: int) -> RolloutRunner:
    """Engine + scorer of one split (reward.answer_metric, "auto" resolved for the log)."""
    engine = rollout_engine(config, generate_fn=generate_fn, tokenizer=tokenizer, pool=pool, log=log, split=split)
    scorer = Scorer(log=log, answer_metric=resolve_answer_metric(config.reward.answer_metric, log))
    return RolloutRunner(engine=engine, scorer=scorer, prompt_ids=prompt_ids, seq_len=seq_len)


def grpo_optim_config(config) -> OptimConfig:
    """GRPO's optimiser: one schedule step per update (grpo.steps x grpo.updates_per_batch)."""
    g = config.grpo
    total = g.steps * g.updates_per_batch
    return OptimConfig(learning_rate=g.learning_rate, warmup_steps=min(g.warmup_steps, total),
                       total_steps=max(total, 1), weight_decay=g.weight_decay, max_grad_norm=g.grad_clip or None)


def sft_optim_config(config) -> OptimConfig:
    """The SFT warm start's optimiser (gradient norm clipped at 1)."""
    s = config.sft
    return OptimConfig(learning_rate=s.learning_rate, warmup_steps=min(s.warmup_steps, s.steps),
                       total_steps=max(s.steps, 1), max_grad_norm=1.0)


def loss_config(config) -> LossConfig:
    """The GRPO loss of spec section 7 (grpo.dual_clip 0 = off)."""
    g = config.grpo
    return LossConfig(clip_low=g.clip_low, clip_high=g.clip_high, dual_clip=g.dual_clip or None,
                      agg=g.loss_agg, kl_coef=g.kl_coef, kl_kind=g.kl_kind)


def logprobs_fn(graphdef: nnx.GraphDef) -> Callable:
    """(params, tokens_bt, attention_mask_bt) -> (logp_bt, entropy_bt). compute_logprobs is
    already jitted (graphdef static), so the partial is not jitted again."""
    return functools.partial(compute_logprobs, graphdef)


def grpo_iteration(config, *, runner: RolloutRunner, calibration: CalibrationConfig, train_step: Callable,
                   logprobs: Callable, mesh: Mesh | None = None) -> GRPOIteration:
    """One GRPO iteration (roll out, score, calibrate, update) with the options of config.grpo.
    `mesh` (the train step's) is needed when there are several processes: each rolls out its
    own slice of the records and the batch is assembled over the mesh (GRPOIteration)."""
    g = config.grpo
    return GRPOIteration(
        runner=runner, calibration=calibration, train_step=train_step, logprobs_fn=logprobs,
        group_size=g.group_size, updates_per_batch=g.updates_per_batch,
        recompute_old_logprobs=g.recompute_old_logprobs, sampling=train_sampling(config), mesh=mesh,
    )
