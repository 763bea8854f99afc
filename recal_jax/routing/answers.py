"""Answer metrics: SQuAD normalisation, exact match, token F1, sub-EM.

`normalize_answer` (SQuAD normalisation) lives in recal_jax.data.answer_text, so that data
never imports routing; it is re-exported here.

Conventions (fixed here, tested in tests/test_answers.py):
  * A prediction that is None or normalises to "" scores 0 on every metric: a blank
    answer never earns reward.
  * Gold answers that normalise to "" are ignored (an empty gold would match anything
    under sub-EM); with no usable gold every metric is 0.
  * F1 follows Router-R1: if the normalised prediction or the normalised gold is one of
    yes / no / noanswer and the two differ, that gold scores 0.
  * Every metric is the max over gold answers.
"""

from __future__ import annotations

import collections
from typing import Iterable

from recal_jax.data.answer_text import normalize_answer

__all__ = ["METRICS", "answer_score", "exact_match", "f1_score", "normalize_answer", "sub_exact_match"]

_SPECIAL = ("yes", "no", "noanswer")


def _golds(golds: Iterable[str] | str) -> list[str]:
    if isinstance(golds, str):
        golds = [golds]
    return [g for g in (normalize_answer(g) for g in golds) if g]


def exact_match(prediction: str | None, golds: Iterable[str] | str) -> float:
    pred = normalize_answer(prediction) if prediction is not None else ""
    if not pred:
        return 0.0
    return float(any(pred == g for g in _golds(golds)))


def _f1_one(pred: str, gold: str) -> float:
    if (pred in _SPECIAL or gold in _SPECIAL) and pred != gold:
        return 0.0
    pred_toks, gold_toks = pred.split(), gold.split()
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_toks)
    recall = same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golds: Iterable[str] | str) -> float:
    pred = normalize_answer(prediction) if prediction is not None else ""
    if not pred:
        return 0.0
    return max((_f1_one(pred, g) for g in _golds(golds)), default=0.0)


def sub_exact_match(reply: str | None, golds: Iterable[str] | str) -> float:
    """1 if some normalised gold occurs (as a substring) in the normalised reply."""
    pred = normalize_answer(reply) if reply is not None else ""
    if not pred:
        return 0.0
    return float(any(g in pred for g in _golds(golds)))


METRICS = {"em": exact_match, "f1": f1_score, "subem": sub_exact_match}


def answer_score(prediction: str | None, golds: Iterable[str] | str, metric: str) -> float:
    if metric not in METRICS:
        raise ValueError(f"unknown answer metric {metric!r}; expected one of {sorted(METRICS)}")
    return METRICS[metric](prediction, golds)
