"""Deterministic wrong answers for replay/simulated pools.

A wrong answer must stay wrong under the reward's checks: it may not contain any gold
answer after SQuAD normalisation (else sub-EM would count it as informative).
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

from recal_jax.routing.answers import normalize_answer

_DISTRACTORS = (
    "Lisbon", "Montevideo", "Johannes Kepler", "1847", "the Danube", "Marie Curie",
    "Ottawa", "Kilimanjaro", "Ada Lovelace", "1923", "the Pacific Ocean", "Mozart",
    "Nairobi", "Copernicus", "Mount Elbrus", "1776", "Tasmania", "Leonardo da Vinci",
    "Helsinki", "42", "Jupiter", "Sophocles", "Reykjavik", "the Nile",
)


def contains_gold(reply: str, golds: Sequence[str]) -> bool:
    """Sub-EM: some non-empty normalised gold occurs inside the normalised reply."""
    n = normalize_answer(reply)
    return any((ng := normalize_answer(g)) and ng in n for g in golds)


def stable_hash(*parts: object) -> int:
    """A 64-bit hash stable across processes (Python's hash() is salted)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def stable_uniform(*parts: object) -> float:
    """A deterministic draw in [0, 1) from the parts."""
    return stable_hash(*parts) / 2.0**64


def wrong_answer(golds: Sequence[str], candidates: Sequence[str], *salt: object) -> str:
    """A plausible answer that contains no gold answer, chosen by a hash of `salt`.

    Tries `candidates` first (e.g. other models' wrong replies), then a numeric perturbation
    of a numeric gold, then fixed distractors; the fallback names the salt so it is unique.
    """
    h = stable_hash("cand", *salt)
    for k in range(len(candidates)):  # probe from a hashed start: O(1) typical, O(n) worst
        cand = candidates[(h + k) % len(candidates)]
        if cand.strip() and not contains_gold(cand, golds):
            return cand
    h = stable_hash("gen", *salt)
    for g in golds:
        if re.fullmatch(r"-?\d+", g.strip()):
            guess = str(int(g.strip()) + 1 + h % 9)
            if not contains_gold(guess, golds):
                return guess
    for k in range(len(_DISTRACTORS)):
        guess = _DISTRACTORS[(h + k) % len(_DISTRACTORS)]
        if not contains_gold(guess, golds):
            return guess
    return f"unknown-{h % 100000}"
