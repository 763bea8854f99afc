"""SQuAD answer normalisation, shared by the data generators and routing's answer metrics.

It lives in `data` so that the synthetic suite can compare answers without `data`
importing `routing` (the import graph is one-way: routing may import data, never the
reverse). `recal_jax.routing.answers` re-exports `normalize_answer` with the metrics.
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())
