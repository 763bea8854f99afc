"""ReplayPool: answers from a routing log (spec section 9), no network."""

from __future__ import annotations

from recal_jax.data.schema import RoutingLog, RoutingRecord, estimate_tokens
from recal_jax.routing.pools.distractors import wrong_answer
from recal_jax.routing.pools.base import Pool, PoolReply, error_reply


class ReplayPool(Pool):
    """The logged reply and cost of `model` on the record's instance.

    Score-only logs (no `responses` for the model): the reply is the first gold answer when
    the logged score is >= `correct_threshold`, else a wrong answer chosen deterministically
    by (record id, model) among other models' logged wrong replies on this record, then other
    records' gold answers of the same dataset, then generated distractors. The spec says
    "score 1"; the default threshold 0.5 reads F1-style partial scores >= 0.5 as correct,
    and `correct_threshold=1.0` gives the spec's literal rule.
    Cost: `log.call_cost(record, model)` (the log's one rule, what the reference routers
    charge). The query is ignored: a log holds one reply and one cost per (instance, model).
    """

    needs_record = True

    def __init__(self, log: RoutingLog, *, correct_threshold: float = 0.5, max_concurrency: int = 64):
        super().__init__(log.models, max_concurrency=max_concurrency)
        if not 0.0 < correct_threshold <= 1.0:
            raise ValueError(f"correct_threshold must be in (0, 1], got {correct_threshold}")
        self.log = log
        self.correct_threshold = float(correct_threshold)
        self._golds_by_dataset: dict[str, list[str]] = {}
        for r in log.records:
            if r.golden_answers:
                self._golds_by_dataset.setdefault(r.dataset, []).append(r.golden_answers[0])

    def reply_text(self, model: str, record: RoutingRecord) -> str | None:
        """The replayed reply (None when the log has neither a reply nor a score)."""
        if record.responses is not None and model in record.responses:
            return record.responses[model]
        if model not in record.scores:
            return None
        golds = record.golden_answers
        if record.scores[model] >= self.correct_threshold and golds:
            return golds[0]
        logged_wrong = [
            text
            for other, text in sorted((record.responses or {}).items())
            if record.scores.get(other, 0.0) < self.correct_threshold
        ]
        candidates = logged_wrong + self._golds_by_dataset.get(record.dataset, [])
        return wrong_answer(golds, candidates, record.id, model)

    async def _call(self, model, query, record):
        if record is None:
            return error_reply("ReplayPool needs the instance's RoutingRecord")
        text = self.reply_text(model, record)
        if text is None:
            return error_reply(f"no logged reply or score of model {model!r} on record {record.id!r}")
        n_in, n_out = estimate_tokens(record.question), estimate_tokens(text)
        return PoolReply(
            text=text, cost_usd=self.log.call_cost(record, model), tokens=n_in + n_out, latency_s=0.0, ok=True,
            prompt_tokens=n_in, completion_tokens=n_out,
        )
