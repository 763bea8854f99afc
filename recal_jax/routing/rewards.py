"""Per-rollout reward components (spec section 3), numpy in and out.

Components, in calibration's order (format, answer, info, route, balance):
  0 format  = Parsed.format_ok.
  1 answer  = multi_turn: EM or F1 of the (leniently extracted) <answer> against the golds.
              single_call: the routed model's reply is final: its logged score
              (answer_metric='score', score-only logs) or EM/F1 of the reply text.
  2 info    = max over calls of sub-EM(reply, golds); score-only records (no logged
              responses, some scores) use the max logged score over called models;
              0 with no calls; failed calls (ok=False) give 0.
  3 route   = 'linear': 1 - min(cost / cost_ref, 1); 'router_r1': calibration's
              windowed rule (stateful; the new window is returned).
  4 balance = mean over the rollout's calls of clip(1 - M * p[m], -1, 1), p = freq_m
              (the EMA routing frequency BEFORE this batch's update); 0 with no calls.
Gating by format / answer is calibration's job, so the raw components are returned even
for rollouts that fail the format. Padded rollouts (valid False) are all zero.

Components 3 and 4 come from recal_jax.calibration (`route_reward_linear`,
`balance_reward`, `route_reward_router_r1`) when it provides them; otherwise 'linear'
route and balance are computed here in numpy from the same definitions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from recal_jax.data.schema import RoutingLog, RoutingRecord
from recal_jax.routing.answers import answer_score, sub_exact_match
from recal_jax.routing.protocol import Parsed

NUM_COMPONENTS = 5
ROUTE_RULES = ("linear", "router_r1")


@dataclasses.dataclass(frozen=True)
class RewardBatch:
    rewards_ugk: np.ndarray  # f32[U, G, 5]
    format_ok_ug: np.ndarray  # bool[U, G]
    valid_ug: np.ndarray  # bool[U, G]
    call_counts_ugm: np.ndarray  # i32[U, G, M]
    cost_ug: np.ndarray  # f32[U, G], USD
    new_route_window: Any = None  # router_r1 rule state; None for 'linear'


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


def route_linear_np(cost_ug: np.ndarray, cost_ref: float) -> np.ndarray:
    """1 - min(cost / cost_ref, 1)."""
    return (1.0 - np.minimum(cost_ug / cost_ref, 1.0)).astype(np.float32)


def balance_np(call_counts_ugm: np.ndarray, valid_ug: np.ndarray, freq_m: np.ndarray) -> np.ndarray:
    """Mean over each rollout's calls of clip(1 - M p[m], -1, 1); 0 without calls or when invalid."""
    m = freq_m.shape[0]
    per_model = np.clip(1.0 - m * freq_m, -1.0, 1.0)
    counts = call_counts_ugm.astype(np.float64)
    total = counts.sum(-1)
    weighted = (counts * per_model).sum(-1)
    out = np.where(total > 0, weighted / np.maximum(total, 1.0), 0.0)
    return np.where(valid_ug, out, 0.0).astype(np.float32)


def _calibration_fn(name: str):
    try:
        from recal_jax import calibration
    except ImportError:
        return None
    return getattr(calibration, name, None)


def compute_components(
    parsed_ug: Sequence[Sequence[Parsed]],
    records: Sequence[RoutingRecord],
    replies_ug: Sequence[Sequence[Sequence[Any]]],
    *,
    protocol: str,
    answer_metric: str,
    cost_ref: float,
    freq_m,
    model_names: Sequence[str],
    route_rule: str = "linear",
    route_window: Any = None,
) -> RewardBatch:
    """Raw reward components of U instances x (up to) G rollouts; see the module docstring.

    parsed_ug[u][g]: Parsed of rollout g of instance u (groups may be ragged: G is the
    longest, the rest is padding with valid False). replies_ug[u][g]: the calls that
    rollout made, in order, each (model, cost_usd, text) or a PoolReply-like object.
    freq_m: f[M] EMA routing frequency, in model_names order.
    """
    if protocol not in ("multi_turn", "single_call"):
        raise ValueError(f"unknown protocol {protocol!r}")
    allowed = ("em", "f1") if protocol == "multi_turn" else ("em", "f1", "score")
    if answer_metric not in allowed:
        raise ValueError(f"answer_metric {answer_metric!r} is not valid for protocol {protocol!r}; use one of {allowed}")
    if route_rule not in ROUTE_RULES:
        raise ValueError(f"unknown route_rule {route_rule!r}; expected one of {ROUTE_RULES}")
    if route_rule == "linear" and not (np.isfinite(cost_ref) and cost_ref > 0):
        raise ValueError(f"cost_ref must be a finite number > 0, got {cost_ref}")
    names = list(model_names)
    index = {m: i for i, m in enumerate(names)}
    freq_m = np.asarray(freq_m, dtype=np.float64)
    if freq_m.shape != (len(names),) or not np.all(np.isfinite(freq_m)) or np.any(freq_m < 0):
        raise ValueError(f"freq_m must be finite, >= 0, of shape ({len(names)},), got {freq_m}")
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

    rewards = np.zeros((u_count, g_count, NUM_COMPONENTS), np.float32)
    format_ok = np.zeros((u_count, g_count), bool)
    valid = np.zeros((u_count, g_count), bool)
    counts = np.zeros((u_count, g_count, len(names)), np.int32)
    cost = np.zeros((u_count, g_count), np.float64)
    for u, record in enumerate(records):
        for g, parsed in enumerate(parsed_ug[u]):
            where = f"instance {u} rollout {g}"
            raw = replies_ug[u][g]
            calls = [_as_call(c, parsed.calls[i] if i < len(parsed.calls) else None, where) for i, c in enumerate(raw)]
            for call in calls:
                if call.model not in index:
                    raise ValueError(f"{where}: call to unknown model {call.model!r}; pool is {names}")
                counts[u, g, index[call.model]] += 1
            valid[u, g] = True
            format_ok[u, g] = bool(parsed.format_ok)
            cost[u, g] = sum(c.cost for c in calls)
            rewards[u, g, 0] = float(parsed.format_ok)
            rewards[u, g, 1] = _answer(parsed, calls, record, protocol, answer_metric, where)
            rewards[u, g, 2] = _info(calls, record, where)

    cost_ug = cost.astype(np.float32)
    new_window = None
    if route_rule == "linear":
        fn = _calibration_fn("route_reward_linear")
        route = np.asarray(fn(cost_ug, cost_ref)) if fn is not None else route_linear_np(cost_ug, cost_ref)
    else:
        fn = _calibration_fn("route_reward_router_r1")
        if fn is None:
            raise ValueError("route_rule='router_r1' needs recal_jax.calibration.route_reward_router_r1")
        route, new_window = fn(cost_ug, valid, route_window)
        route = np.asarray(route)
    fn = _calibration_fn("balance_reward")
    balance = np.asarray(fn(counts, valid, freq_m.astype(np.float32))) if fn is not None else balance_np(counts, valid, freq_m)
    rewards[..., 3] = np.where(valid, route, 0.0)
    rewards[..., 4] = np.where(valid, balance, 0.0)
    if not np.all(np.isfinite(rewards)):
        raise ValueError("non-finite reward component (check cost_ref and the calibration functions)")
    return RewardBatch(rewards, format_ok, valid, counts, cost_ug, new_window)


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
