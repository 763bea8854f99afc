"""Roll out the policy on a batch of records and score the rollouts (shared by GRPO and evaluation)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from recal_jax.data.schema import RoutingLog, RoutingRecord
from recal_jax.rollout.engine import RolloutBatch, RolloutEngine
from recal_jax.rollout.sampler import SamplingOptions
from recal_jax.routing.rewards import Call, RewardBatch, compute_components


@dataclasses.dataclass(frozen=True)
class Scorer:
    """Turns rollouts into the environment's reward report (stateless components, calls
    per model, cost) for one routing log. It holds no state: route and balance, which do,
    are calibration's (recal_jax.calibration.calibrate)."""

    log: RoutingLog
    answer_metric: str

    def score(self, rollout: RolloutBatch, records: Sequence[RoutingRecord]) -> RewardBatch:
        """RewardBatch of U = len(records) instances x G = rollout.num_samples rollouts."""
        g = rollout.num_samples
        u_count = len(records)
        if len(rollout.parsed) != u_count * g:
            raise ValueError(f"rollout has {len(rollout.parsed)} rows, expected {u_count} records x G={g}")
        parsed_ug = [rollout.parsed[u * g:(u + 1) * g] for u in range(u_count)]
        # A call with an empty model name is a malformed <search> block: no pool call, no cost.
        replies_ug = [
            [[Call(model, reply.cost_usd, reply.text, reply.ok) for model, _query, reply in rollout.calls[b] if model]
             for b in range(u * g, (u + 1) * g)]
            for u in range(u_count)
        ]
        return compute_components(parsed_ug, list(records), replies_ug, protocol=self.log.protocol,
                                  answer_metric=self.answer_metric, model_names=self.log.model_names)


@dataclasses.dataclass(frozen=True)
class RolloutRunner:
    """Engine + scorer for one log: `run(params, records, G, key, sampling=...)` -> (RolloutBatch, RewardBatch)."""

    engine: RolloutEngine
    scorer: Scorer
    prompt_ids: Callable[[RoutingRecord], list[int]]
    seq_len: int

    def run(self, params, records: Sequence[RoutingRecord], num_samples: int, key, *,
            sampling: SamplingOptions) -> tuple[RolloutBatch, RewardBatch]:
        """Roll out the policy with weights `params` (nothing is stored on the sampler or the
        engine) under `sampling`, and score the rollouts."""
        prompts = [self.prompt_ids(r) for r in records]
        rollout = self.engine.run(list(records), prompts, num_samples, key, sampling=sampling,
                                  seq_len=self.seq_len, weights=params)
        return rollout, self.scorer.score(rollout, records)


def dataset_ids(log: RoutingLog, records: Sequence[RoutingRecord]) -> np.ndarray:
    """i32[U]: each record's dataset index in log.datasets."""
    return np.array([log.dataset_id(r) for r in records], np.int32)
