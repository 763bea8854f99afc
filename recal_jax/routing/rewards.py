"""Per-rollout reward components of the environment (spec section 3), numpy in and out.

The environment is stateless: it returns the three components it can compute from one
rollout alone, in calibration's order,
  0 format  = Parsed.format_ok.
  1 answer  = multi_turn: EM or F1 of the (leniently extracted) <answer> against the golds.
              single_call: the routed model's reply is final: its logged score
              (answer_metric='score', score-only logs) or EM/F1 of the reply text.
  2 info    = max over calls of sub-EM(reply, golds); score-only records (no logged
              responses, some scores) use the max logged score over called models;
              0 with no calls; failed calls (ok=False) give 0,
and the raw facts of each rollout: calls per model (call_counts_ugm) and cost in USD
(cost_ug). Components 3 (route) and 4 (balance) depend on state (EMA routing
frequencies, Router-R1's cost window): recal_jax.calibration.calibrate computes them from
these facts, and calibration owns that state.
Gating by format / answer is calibration's job, so the raw components are returned even
for rollouts that fail the format. Padded rollouts (valid False) are all zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import chex
import numpy as np

from recal_jax.calibration.config import ANSWER, FORMAT, INFO, STATELESS_COMPONENTS
from recal_jax.data.schema import RoutingLog, RoutingRecord
from recal_jax.routing.answers import answer_score, sub_exact_match
from recal_jax.routing.protocol import Parsed


@dataclasses.dataclass(frozen=True)
class RewardBatch:
    """What the environment reports for U instances x G rollouts."""

    stateless_ugk: np.ndarray  # f32[U, G, NUM_STATELESS]: the STATELESS_COMPONENTS
    format_ok_ug: np.ndarray  # bool[U, G]
    valid_ug: np.ndarray  # bool[U, G]
    call_counts_ugm: np.ndarray  # i32[U, G, M], M in model_names order
    cost_ug: np.ndarray  # f32[U, G], USD

    def __post_init__(self):
        chex.assert_shape(self.stateless_ugk, (None, None, len(STATELESS_COMPONENTS)))
        chex.assert_equal_shape([self.format_ok_ug, self.valid_ug, self.cost_ug, self.stateless_ugk[..., 0]])
        chex.assert_equal_shape_prefix([self.call_counts_ugm, self.stateless_ugk], 2)

    @property
    def answer_ug(self) -> np.ndarray:
        """f32[U, G]: the answer component."""
        return self.stateless_ugk[..., ANSWER]


@dataclasses.dataclass(frozen=True)
class Call:
    model: str
    cost: float
    text: str
    ok: bool = True


def _as_call(obj: Any, parsed_call: tuple[str, str] | None, where: str) -> Call:
    """A call from a (model, cost, text) tuple or a PoolReply-like object (.text, .cost_usd,
    optional .model / .ok; without .model the model is the parsed call's at that index)."""
    if isinstance(obj, Call):
        return obj
    if isinstance(obj, (tuple, list)):
        if len(obj) != 3:
            raise ValueError(f"{where}: a call tuple must be (model, cost, text), got {len(obj)} items")
        model, cost, text = obj
        ok = True
    else:
        if not hasattr(obj, "text") or not hasattr(obj, "cost_usd"):
            raise ValueError(f"{where}: a call must be (model, cost, text) or have .text and .cost_usd")
        model = getattr(obj, "model", None)
        if model is None:
            if parsed_call is None:
                raise ValueError(f"{where}: reply has no .model and the parsed text has no call at this index")
            model = parsed_call[0]
        cost, text, ok = obj.cost_usd, obj.text, bool(getattr(obj, "ok", True))
    cost = float(cost)
    if not np.isfinite(cost) or cost < 0:
        raise ValueError(f"{where}: call cost must be finite and >= 0, got {cost}")
    return Call(str(model), cost, "" if text is None else str(text), ok)


def _logged_score(record: RoutingRecord, model: str, where: str) -> float:
    if model not in record.scores:
        raise ValueError(f"{where}: record {record.id!r} has no logged score for model {model!r}")
    score = float(record.scores[model])
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"{where}: logged score {score} of {model!r} on {record.id!r} is outside [0, 1]")
    return score


def _score_only(record: RoutingRecord) -> bool:
    return record.responses is None and len(record.scores) > 0


def _answer(parsed: Parsed, calls: list[Call], record: RoutingRecord, protocol: str, metric: str, where: str) -> float:
    if protocol == "multi_turn":
        return answer_score(parsed.answer, record.golden_answers, metric)
    if not calls:
        return 0.0
    final = calls[-1]
    if not final.ok:
        return 0.0
    if metric == "score":
        return _logged_score(record, final.model, where)
    return answer_score(final.text, record.golden_answers, metric)


def _info(calls: list[Call], record: RoutingRecord, where: str) -> float:
    best = 0.0
    for call in calls:
        if not call.ok:
            continue
        if _score_only(record):
            value = _logged_score(record, call.model, where)
        else:
            value = sub_exact_match(call.text, record.golden_answers)
        best = max(best, value)
    return best


def _check_options(protocol: str, answer_metric: str) -> None:
    if protocol not in ("multi_turn", "single_call"):
        raise ValueError(f"unknown protocol {protocol!r}")
    allowed = ("em", "f1") if protocol == "multi_turn" else ("em", "f1", "score")
    if answer_metric not in allowed:
        raise ValueError(f"answer_metric {answer_metric!r} is not valid for protocol {protocol!r}; "
                         f"use one of {allowed}")


def _group_size(parsed_ug: Sequence[Sequence[Parsed]], records: Sequence[RoutingRecord],
                replies_ug: Sequence[Sequence[Any]]) -> int:
    """G, the longest group, after checking that the three inputs line up."""
    u_count = len(records)
    if len(parsed_ug) != u_count or len(replies_ug) != u_count:
        raise ValueError(f"{u_count} records but {len(parsed_ug)} parsed groups and {len(replies_ug)} reply groups")
    if u_count == 0:
        raise ValueError("compute_components needs at least one instance")
    for u in range(u_count):
        if len(parsed_ug[u]) != len(replies_ug[u]):
            raise ValueError(f"instance {u}: {len(parsed_ug[u])} parsed rollouts but {len(replies_ug[u])} reply lists")
    g_count = max(len(group) for group in parsed_ug)
    if g_count == 0:
        raise ValueError("every group is empty")
    return g_count


def _calls(parsed: Parsed, raw: Sequence[Any], index: dict[str, int], where: str) -> list[Call]:
    calls = [_as_call(c, parsed.calls[i] if i < len(parsed.calls) else None, where) for i, c in enumerate(raw)]
    for call in calls:
        if call.model not in index:
            raise ValueError(f"{where}: call to unknown model {call.model!r}; pool is {list(index)}")
    return calls


def compute_components(
    parsed_ug: Sequence[Sequence[Parsed]],
    records: Sequence[RoutingRecord],
    replies_ug: Sequence[Sequence[Sequence[Any]]],
    *,
    protocol: str,
    answer_metric: str,
    model_names: Sequence[str],
) -> RewardBatch:
    """Stateless components and the raw facts of U instances x (up to) G rollouts.

    parsed_ug[u][g]: Parsed of rollout g of instance u (groups may be ragged: G is the
    longest, the rest is padding with valid False). replies_ug[u][g]: the calls that
    rollout made, in order, each (model, cost_usd, text) or a PoolReply-like object.
    Returns RewardBatch(stateless_ugk f32[U,G,3], format_ok_ug, valid_ug,
    call_counts_ugm i32[U,G,M] (model_names order), cost_ug f32[U,G]); see the module doc.
    """
    _check_options(protocol, answer_metric)
    index = {m: i for i, m in enumerate(model_names)}
    g_count = _group_size(parsed_ug, records, replies_ug)
    u_count = len(records)
    stateless = np.zeros((u_count, g_count, len(STATELESS_COMPONENTS)), np.float32)
    format_ok = np.zeros((u_count, g_count), bool)
    valid = np.zeros((u_count, g_count), bool)
    counts = np.zeros((u_count, g_count, len(index)), np.int32)
    cost = np.zeros((u_count, g_count), np.float64)
    for u, record in enumerate(records):
        for g, parsed in enumerate(parsed_ug[u]):
            where = f"instance {u} rollout {g}"
            calls = _calls(parsed, replies_ug[u][g], index, where)
            for call in calls:
                counts[u, g, index[call.model]] += 1
            valid[u, g] = True
            format_ok[u, g] = bool(parsed.format_ok)
            cost[u, g] = sum(c.cost for c in calls)
            stateless[u, g, FORMAT] = float(parsed.format_ok)
            stateless[u, g, ANSWER] = _answer(parsed, calls, record, protocol, answer_metric, where)
            stateless[u, g, INFO] = _info(calls, record, where)
    return RewardBatch(stateless, format_ok, valid, counts, cost.astype(np.float32))


def default_cost_ref(log: RoutingLog) -> float:
    """The most expensive model's mean call cost over the log (spec section 3), with the
    log's one cost rule `RoutingLog.call_cost` (logged cost, else prices x token estimates of
    the question and the logged reply or first gold answer): what ReplayPool charges."""
    if not log.records:
        raise ValueError(f"routing log {log.name!r} is empty; cannot derive cost_ref")
    best = max(sum(log.call_cost(r, m) for r in log.records) / len(log.records) for m in log.models)
    if not best > 0:
        raise ValueError(f"routing log {log.name!r}: every model's mean call cost is 0; give cost_ref explicitly")
    return float(best)
