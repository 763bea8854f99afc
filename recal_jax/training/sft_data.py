"""Protocol demonstrations for the SFT warm start.

A tiny randomly initialised policy knows nothing of the protocol; teacher forcing on
well-formed rollouts gives GRPO well-formed samples to start from. Each demonstration is
the prompt, then policy-written segments (loss mask 1) interleaved with the environment's
<information> blocks (loss mask 0), tokenised segment by segment exactly as the rollout
engine builds sequences at RL time.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from recal_jax.data.schema import RoutingLog, RoutingRecord

if TYPE_CHECKING:
    from recal_jax.data.registry import Plan

ROUTING_RULES = ("random", "dataset_best", "mixed", "dataset_random", "decompose_random")
# decompose_random: questions with a plan of two or more sub-questions (a suite's planner) are
# demonstrated as a chain of calls, one sub-question per call, each built from the previous reply;
# every call goes to a random model (dataset_random's rule per hop template), so the
# demonstrations say how to decompose, never which model is good. A share `direct_share` of
# them, and every question without such a plan, is one direct call with the whole question.
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
_LEAD_IN = re.compile(r"^(the answer is|final answer:|answer:|result:|it is|i believe)\s*", re.I)
QUERY_STYLES = ("question", "fixed")
# sft.copy_check: which copied segments the held-out SFT criterion reads (the final answer, or
# also every query the policy copies; see sft.HeldOutCriterion)
COPY_CHECKS = ("answer", "all")
# With query style "fixed" the demonstrations route with this query instead of a copy of the
# question: for replay and simulated pools the query does not change the reply, and a tiny
# policy then need not learn to copy a whole question before it can learn to route.
FIXED_QUERY = "the question"
FIRST_THOUGHT = "<think> pick a model </think>"
# What the first <think> of a demonstration says: "fixed" is FIRST_THOUGHT; "dataset" names the
# record's task (`<think> arith </think>`): the policy learns to classify the question by SFT
# (from the log's dataset labels) and RL then learns, per class it wrote, which model to call.
THINK_STYLES = ("fixed", "dataset")


def first_thought(record: RoutingRecord, style: str) -> str:
    if style not in THINK_STYLES:
        raise ValueError(f"unknown SFT think style {style!r}; expected one of {THINK_STYLES}")
    return FIRST_THOUGHT if style == "fixed" else f"<think> {record.dataset} </think>"


@dataclasses.dataclass(frozen=True)
class Demonstration:
    """One tokenised demonstration: ids and the loss mask (0 = written by the environment,
    > 0 = written by the policy, the value being the token's loss weight)."""

    record_id: str
    model: str
    token_ids: tuple[int, ...]
    loss_mask: tuple[float, ...]
    answer_span: tuple[int, int] = (0, 0)  # [start, end) of the final-answer segment; empty without one
    # [start, end) of each query the policy writes by copying (a decomposition's sub-questions, or
    # the whole question of a direct call, with 'decompose_random'); empty for other rules
    query_spans: tuple[tuple[int, int], ...] = ()


def dataset_best_models(log: RoutingLog) -> dict[str, str]:
    """For each dataset, the model with the highest mean score on `log` (ties: cheaper first)."""
    best = {}
    for dataset in log.datasets:
        records = [r for r in log.records if r.dataset == dataset]
        if not records:
            continue
        def key(m):
            mean = float(np.mean([r.scores.get(m, 0.0) for r in records]))
            cost = float(np.mean([log.call_cost(r, m) for r in records]))
            return (mean, -cost)
        best[dataset] = max(log.model_names, key=key)
    return best


def answer_from_reply(reply: str) -> str:
    """The answer a demonstration copies out of a reply: the last <answer> tag's content if
    any, else the reply's last non-empty line, without a lead-in such as "the answer is"."""
    tagged = _ANSWER_TAG.findall(reply)
    text = tagged[-1] if tagged else next((ln for ln in reversed(reply.splitlines()) if ln.strip()), "")
    text = _LEAD_IN.sub("", text.strip()).strip()
    return text or reply.strip() or "unknown"


def choose_models(log: RoutingLog, rule: str, rng: np.random.Generator, best_prob: float = 0.5) -> list[str]:
    """One model per record of `log` by the routing rule of the demonstrations.

    random: uniform. dataset_best: the dataset's best model on `log`. mixed: dataset_best with
    probability best_prob, else uniform. dataset_random: each dataset gets one model drawn
    uniformly (seeded), used with probability best_prob, else uniform: the policy learns that
    routing depends on the question's task while the demonstrations say nothing about which
    model is good (that is left to RL)."""
    if rule not in ROUTING_RULES:
        raise ValueError(f"unknown SFT routing rule {rule!r}; expected one of {ROUTING_RULES}")
    names = log.model_names
    if rule in ("dataset_best", "mixed"):
        target = dataset_best_models(log)
    elif rule in ("dataset_random", "decompose_random"):
        target = {d: names[int(rng.integers(len(names)))] for d in log.datasets}
    else:
        target = {}
    chosen = []
    for record in log.records:
        random_pick = names[int(rng.integers(len(names)))]
        if rule == "random":
            chosen.append(random_pick)
        elif rule == "dataset_best":
            chosen.append(target[record.dataset])
        else:
            chosen.append(target[record.dataset] if rng.random() < best_prob else random_pick)
    return chosen


def completion_segments(
    record: RoutingRecord, model: str, reply: str, protocol: str,
    encode: Callable[[str], list[int]], information_ids: Callable[[str], list[int]],
    extract_answer: Callable[[str], str], query: str, answer_weight: float = 1.0,
    thought: str = FIRST_THOUGHT,
) -> list[tuple[list[int], float]]:
    """The completion as (token ids, loss weight) segments: 0 for the environment's tokens,
    1 for the policy's, `answer_weight` for its final answer."""
    if protocol == "single_call":
        return [(encode(f"{thought}\n<search> {model} </search>"), 1)]
    return [
        (encode(f"{thought}\n<search> {model} : {query} </search>"), 1),
        (information_ids(reply), 0),
        # The answer follows the information block directly (a <think> there is allowed, not
        # required): the copy a tiny policy has to learn is then three tokens away.
        (encode(f"<answer> {extract_answer(reply)} </answer>"), answer_weight),
    ]


def build_demonstrations(
    log: RoutingLog,
    encode: Callable[[str], list[int]],
    prompt_ids: Callable[[RoutingRecord], list[int]],
    reply_fn: Callable[[str, str, RoutingRecord], str],
    information_ids: Callable[[str], list[int]],
    extract_answer: Callable[[str], str] = answer_from_reply,
    *,
    rule: str = "mixed",
    best_prob: float = 0.5,
    query_style: str = "question",
    reply_swap: float = 0.0,
    answer_weight: float = 1.0,
    think: str = "fixed",
    seed: int = 0,
    planner: Callable[[RoutingRecord], "Plan | None"] | None = None,
    direct_share: float = 0.25,
    renamer: Callable[[np.random.Generator], Callable[[str], str]] | None = None,
    rename_share: float = 0.0,
) -> list[Demonstration]:
    """Demonstrations for every record of `log`.

    encode: text -> token ids (no special BOS); prompt_ids: record -> prompt token ids;
    reply_fn: (model, query, record) -> the pool's reply text; information_ids: reply ->
    the ids of the whole <information> block exactly as the rollout engine inserts it.
    reply_swap: the probability that a demonstration shows the reply of another (random)
    record instead, answered by copying it. A training split repeats questions, and a tiny
    policy then learns question -> answer by heart; swapped replies make the information
    block the only reliable source, so what it learns is to copy from it.
    answer_weight: loss weight of the answer tokens; the rest of a demonstration is a fixed
    template learnt in a few steps, and a larger weight keeps the copy from being drowned out.
    think: THINK_STYLES, what the first <think> says (see `first_thought`).
    planner, direct_share: the rule 'decompose_random' (see ROUTING_RULES).
    renamer, rename_share: that share of the demonstrations shows fresh entity names (renamer(rng),
    one text map per demonstration, on every text tokenised; the pool still gets the world's query).
    """
    if rename_share and renamer is None:
        raise ValueError("rename_share > 0 needs a renamer (a suite whose registry entry has one)")
    if query_style not in QUERY_STYLES:
        raise ValueError(f"unknown SFT query style {query_style!r}; expected one of {QUERY_STYLES}")
    rng = np.random.default_rng(seed)
    models = choose_models(log, rule, rng, best_prob)
    if rule == "decompose_random":
        if planner is None:
            raise ValueError("the SFT rule 'decompose_random' needs a suite whose registry entry has a planner")
        chain = ChainDemos(log, planner, reply_fn, rng, best_prob=best_prob, direct_share=direct_share)
    rename_rng = np.random.default_rng([seed, 0x7E4A])
    demos = []
    for record, model in zip(log.records, models):
        if rename_share and rename_rng.random() < rename_share:
            encode_, information_ids_, prompt_ids_ = _renamed(record, renamer(rename_rng), encode, information_ids,
                                                              prompt_ids)
        else:
            encode_, information_ids_, prompt_ids_ = encode, information_ids, prompt_ids
        demos.append(_demonstration(record, model, encode_, prompt_ids_, reply_fn, information_ids_, extract_answer,
                                    rule=rule, query_style=query_style, reply_swap=reply_swap,
                                    answer_weight=answer_weight, think=think, rng=rng, log=log,
                                    chain=chain if rule == "decompose_random" else None))
    return demos


def _renamed(record, rename, encode, information_ids, prompt_ids):
    """(encode, information_ids, prompt_ids) that rename everything they tokenise: the record stays the
    world's (the pool is asked the original queries), the policy reads and writes the renamed texts."""
    shown = dataclasses.replace(record, question=rename(record.question))
    return (lambda text: encode(rename(text)), lambda text: information_ids(rename(text)),
            lambda _record: prompt_ids(shown))


def _demonstration(record, model, encode, prompt_ids, reply_fn, information_ids, extract_answer, *, rule,
                   query_style, reply_swap, answer_weight, think, rng, log, chain) -> Demonstration:
    """One record's demonstration (see build_demonstrations)."""
    if chain is not None and (plan := chain.plan(record)) is not None:
        ids = list(prompt_ids(record))
        segments = chain.segments(record, plan, encode, information_ids, extract_answer, answer_weight,
                                  first_thought(record, think))
        return _assemble(record, segments[0][2], ids, [(seg, w) for seg, w, _, _ in segments],
                         query_segments={i for i, (_, _, _, is_query) in enumerate(segments) if is_query})
    query = record.question if query_style == "question" else FIXED_QUERY
    reply = reply_fn(model, query, record)
    if reply_swap and rng.random() < reply_swap:
        other = log.records[int(rng.integers(len(log)))]
        reply = reply_fn(log.model_names[int(rng.integers(len(log.model_names)))], query, other)
    segments = completion_segments(record, model, reply, log.protocol, encode, information_ids,
                                   extract_answer, query, answer_weight, first_thought(record, think))
    return _assemble(record, model, list(prompt_ids(record)), segments, with_answer=log.protocol == "multi_turn")


def _assemble(record: RoutingRecord, model: str, ids: list[int], segments, with_answer: bool = True,
              query_segments: set[int] = frozenset()) -> Demonstration:
    """A Demonstration of the prompt `ids` followed by the (token ids, loss weight) segments;
    with_answer: the last segment is the final answer (multi_turn; single_call has none);
    query_segments: the indexes of the segments that are copied queries."""
    mask = [0.0] * len(ids)
    query_spans = []
    for i, (seg, weight) in enumerate(segments):
        seg = list(seg)
        if i in query_segments:
            query_spans.append((len(ids), len(ids) + len(seg)))
        ids = ids + seg
        mask += [weight] * len(seg)
    span = (len(ids) - len(segments[-1][0]), len(ids)) if with_answer else (0, 0)
    return Demonstration(record.id, model, tuple(ids), tuple(mask), span, tuple(query_spans))


class ChainDemos:
    """The demonstrations of the rule 'decompose_random': per hop template a model drawn once
    (used with probability best_prob, else a uniform draw), the reply of each call read for the
    next sub-question's subject."""

    def __init__(self, log: RoutingLog, planner, reply_fn, rng: np.random.Generator, *, best_prob: float,
                 direct_share: float):
        self.log, self.planner, self.reply_fn, self.rng = log, planner, reply_fn, rng
        self.best_prob, self.direct_share = best_prob, direct_share
        self.target: dict[str, str] = {}

    def _model(self, key: str) -> str:
        names = self.log.model_names
        if key not in self.target:
            self.target[key] = names[int(self.rng.integers(len(names)))]
        pick = names[int(self.rng.integers(len(names)))]
        return self.target[key] if self.rng.random() < self.best_prob else pick

    def plan(self, record: RoutingRecord):
        """The record's plan as a chain of one-hop calls, or a one-call plan (the whole question)."""
        plan = self.planner(record)
        if plan is None or len(plan.templates) < 2 or self.rng.random() < self.direct_share:
            return None if plan is None else ("direct",)
        return plan

    def segments(self, record, plan, encode, information_ids, extract_answer, answer_weight, thought):
        """[(token ids, loss weight, model of the call, is a copied query)]: calls (each as its
        '<search> MODEL :' head, the query, and ' </search>'), information blocks, the answer."""
        if plan == ("direct",):
            calls = [(self._model(record.dataset), record.question)]
        else:
            calls = [(self._model(template), template) for template in plan.templates]
        out, subject, reply = [], plan.subject if plan != ("direct",) else "", ""
        for k, (model, template) in enumerate(calls):
            query = template if plan == ("direct",) else template.format(x=subject)
            reply = self.reply_fn(model, query, record)
            lead = f"{thought}\n" if k == 0 else ""
            # encoded in three pieces, cut where the byte-level pre-tokenizer cuts anyway (before a
            # space), so the ids are those of the whole call and the query's tokens are known
            out.append((encode(f"{lead}<search> {model} :"), 1.0, model, False))
            out.append((encode(f" {query}"), 1.0, model, True))
            out.append((encode(" </search>"), 1.0, model, False))
            out.append((information_ids(reply), 0.0, model, False))
            subject = extract_answer(reply)
        out.append((encode(f"<answer> {extract_answer(reply)} </answer>"), answer_weight, calls[-1][0], False))
        return out


def pack_demonstrations(demos: Sequence[Demonstration], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded arrays: tokens_bt i32, attention_mask_bt bool, loss_mask_bt f32,
    answer_mask_bt bool (the final-answer segment, see Demonstration.answer_span), copy_mask_bt
    bool (the answer and every copied query, Demonstration.query_spans).

    Demonstrations longer than seq_len are cut from the left of the prompt (the completion
    is what is learned), keeping the last seq_len tokens."""
    n = len(demos)
    tokens = np.full((n, seq_len), pad_id, np.int32)
    attn = np.zeros((n, seq_len), bool)
    loss = np.zeros((n, seq_len), np.float32)
    answer = np.zeros((n, seq_len), bool)
    copied = np.zeros((n, seq_len), bool)
    for i, demo in enumerate(demos):
        cut = max(len(demo.token_ids) - seq_len, 0)
        ids, mask = demo.token_ids[cut:], demo.loss_mask[cut:]
        tokens[i, : len(ids)] = ids
        attn[i, : len(ids)] = True
        loss[i, : len(ids)] = mask
        start, end = (max(x - cut, 0) for x in demo.answer_span)
        answer[i, start:end] = True
        copied[i, start:end] = True
        for q_start, q_end in demo.query_spans:
            copied[i, max(q_start - cut, 0):max(q_end - cut, 0)] = True
    return {"tokens_bt": tokens, "attention_mask_bt": attn, "loss_mask_bt": loss, "answer_mask_bt": answer,
            "copy_mask_bt": copied}
