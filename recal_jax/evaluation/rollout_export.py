"""A run's evaluation rollouts as a Hugging Face `datasets.Dataset` (one row per rollout).

    collector = RolloutCollector(test_log)
    evaluate_policy(runner, params, test_log, key, on_batch=collector)
    export_rollouts(collector, workdir / "eval_rollouts")     # Dataset.save_to_disk
    datasets.load_from_disk(workdir / "eval_rollouts")

Columns (ROLLOUT_FEATURES): id, dataset, question, golden_answers, routed_models, queries,
replies (one entry per pool call, in order), completion (the text the policy wrote, with
the environment's <information> blocks), answer (the final answer that was scored: the
<answer> under multi_turn, the routed model's reply under single_call; "" when there is
none), reward_format / reward_answer / reward_info (the environment's reward components,
spec section 3; route and balance depend on calibration state and are not per-rollout
facts), cost_usd, format_ok, finish_reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from recal_jax.calibration.config import STATELESS_COMPONENTS
from recal_jax.data.jsonl import quiet_datasets
from recal_jax.data.schema import RoutingLog, RoutingRecord

_STRINGS = ("id", "dataset", "question", "completion", "answer", "finish_reason")
_STRING_LISTS = ("golden_answers", "routed_models", "queries", "replies")


def rollout_features():
    """The datasets.Features of an exported rollout table (typed even when lists are empty)."""
    import datasets

    spec: dict[str, Any] = {name: datasets.Value("string") for name in _STRINGS}
    spec.update({name: datasets.List(datasets.Value("string")) for name in _STRING_LISTS})
    spec.update({f"reward_{name}": datasets.Value("float32") for name in STATELESS_COMPONENTS})
    spec.update(cost_usd=datasets.Value("float64"), format_ok=datasets.Value("bool"))
    return datasets.Features(spec)


class RolloutCollector:
    """Collects rows from evaluate_policy's `on_batch(records, rollout, rewards)` hook."""

    def __init__(self, log: RoutingLog):
        self.protocol = log.protocol
        self.rows: list[dict[str, Any]] = []

    def __call__(self, records: Sequence[RoutingRecord], rollout, rewards) -> None:
        g = rollout.num_samples
        for u, record in enumerate(records):
            for s in range(g):
                if rewards.valid_ug[u, s]:
                    self.rows.append(self._row(record, rollout, rewards, u, s, u * g + s))

    def _row(self, record: RoutingRecord, rollout, rewards, u: int, s: int, b: int) -> dict[str, Any]:
        calls = rollout.calls[b]
        replies = [reply.text for _, _, reply in calls]
        answer = rollout.parsed[b].answer
        if self.protocol == "single_call":
            answer = replies[-1] if replies else ""
        row = {
            "id": record.id, "dataset": record.dataset, "question": record.question,
            "golden_answers": list(record.golden_answers), "routed_models": [m for m, _, _ in calls],
            "queries": [q for _, q, _ in calls], "replies": replies, "completion": rollout.completion_texts[b],
            "answer": answer or "", "finish_reason": str(rollout.finish_reasons[b]),
            "cost_usd": float(rewards.cost_ug[u, s]), "format_ok": bool(rewards.format_ok_ug[u, s]),
        }
        for k, name in enumerate(STATELESS_COMPONENTS):
            row[f"reward_{name}"] = float(rewards.stateless_ugk[u, s, k])
        return row

    def to_dataset(self):
        import datasets

        return datasets.Dataset.from_list(self.rows, features=rollout_features())


def export_rollouts(collector: RolloutCollector, path: str | os.PathLike) -> Path:
    """Saves the collected rollouts with Dataset.save_to_disk at `path` (replaced whole: written
    beside it first, so a kill never leaves a half-written export). Returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_datasets():
        collector.to_dataset().save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path
