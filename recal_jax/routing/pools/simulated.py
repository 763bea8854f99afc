"""SimulatedPool: models with a known accuracy per dataset (for suites without a live pool)."""

from __future__ import annotations

import asyncio
import math
from typing import Mapping

from recal_jax.data.schema import ModelInfo, RoutingRecord, estimate_tokens, price_usd
from recal_jax.routing.pools.distractors import stable_hash, stable_uniform, wrong_answer
from recal_jax.routing.pools.base import Pool, PoolReply, error_reply


class SimulatedPool(Pool):
    """Model m answers an instance of dataset d correctly with probability skill[(m, d)].

    The draw is deterministic in (seed, record id, model) (plus the query when
    `query_dependent`, so rephrasing a question re-draws). A correct reply is the first
    gold answer; a wrong one is a plausible distractor that contains no gold answer.
    Cost: prices x ceil(chars / 4) token estimates of query and reply. `delay_s` sleeps per
    call (to emulate latency). A record without gold answers (e.g. a bare query) always
    gets a distractor.
    """

    needs_record = False

    def __init__(
        self,
        models: Mapping[str, ModelInfo],
        skill: Mapping[tuple[str, str], float],
        *,
        seed: int = 0,
        default_skill: float | None = None,
        query_dependent: bool = False,
        delay_s: float = 0.0,
        max_concurrency: int = 64,
    ):
        super().__init__(models, max_concurrency=max_concurrency)
        for key, p in skill.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"skill keys must be (model, dataset) tuples, got {key!r}")
            if key[0] not in self._models:
                raise ValueError(f"skill names unknown model {key[0]!r}; pool has {list(self._models)}")
            if not (isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0):
                raise ValueError(f"skill[{key!r}] must be a probability in [0, 1], got {p!r}")
        if default_skill is not None and not 0.0 <= default_skill <= 1.0:
            raise ValueError(f"default_skill must be in [0, 1], got {default_skill!r}")
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        self.skill = dict(skill)
        self.seed = int(seed)
        self.default_skill = default_skill
        self.query_dependent = bool(query_dependent)
        self.delay_s = float(delay_s)

    def is_correct(self, model: str, record: RoutingRecord, query: str = "") -> bool | None:
        """The deterministic draw; None when no skill is known for (model, dataset)."""
        p = self.skill.get((model, record.dataset), self.default_skill)
        if p is None:
            return None
        u = stable_uniform(self.seed, record.id, model, query if self.query_dependent else "")
        return bool(record.golden_answers) and u < p

    async def _call(self, model, query, record):
        if record is None:
            record = RoutingRecord(
                id=f"query-{stable_hash(query):016x}", dataset="", question=query,
                golden_answers=(), scores={},
            )
        correct = self.is_correct(model, record, query)
        if correct is None:
            return error_reply(f"no skill for model {model!r} on dataset {record.dataset!r}")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        golds = record.golden_answers
        text = golds[0] if correct else wrong_answer(golds, (), self.seed, record.id, model)
        n_in, n_out = estimate_tokens(query), estimate_tokens(text)
        return PoolReply(
            text=text, cost_usd=price_usd(self._models[model], n_in, n_out), tokens=n_in + n_out,
            latency_s=0.0, ok=True, prompt_tokens=n_in, completion_tokens=n_out,
        )
