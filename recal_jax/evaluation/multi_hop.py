"""The multi-turn reading of an evaluation: accuracy, calls per question and the share of
questions asked in two or more calls, on the multi-hop datasets and on the rest, for the
policy and (accuracy only) every reference router. Means over questions: each dataset's
per-dataset value weighted by its number of test questions."""

from __future__ import annotations

from typing import Mapping, Sequence


def _group_mean(per_dataset: Mapping[str, float], datasets: Sequence[str], counts: Mapping[str, int]) -> float | None:
    total = sum(counts.get(d, 0) for d in datasets if d in per_dataset)
    if total == 0:
        return None
    return sum(per_dataset[d] * counts.get(d, 0) for d in datasets if d in per_dataset) / total


def multi_hop_summary(policy: Mapping, references: Mapping[str, Mapping], multi_hop: Sequence[str],
                      counts: Mapping[str, int]) -> dict:
    """{"multi_hop" | "one_hop": {"accuracy", "calls_per_question", "multi_call_share",
    "references": {name: accuracy}}} over the datasets in `multi_hop` and the others of `counts`
    (dataset -> test questions)."""
    groups = {"multi_hop": [d for d in counts if d in multi_hop], "one_hop": [d for d in counts if d not in multi_hop]}
    out = {}
    for name, datasets in groups.items():
        out[name] = {
            "datasets": list(datasets),
            "accuracy": _group_mean(policy["per_dataset"], datasets, counts),
            "calls_per_question": _group_mean(policy.get("calls_per_dataset", {}), datasets, counts),
            "multi_call_share": _group_mean(policy.get("multi_call_share_per_dataset", {}), datasets, counts),
            "references": {ref: _group_mean(r["per_dataset"], datasets, counts) for ref, r in references.items()},
        }
    return out
