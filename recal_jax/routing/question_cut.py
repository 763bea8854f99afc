"""Cutting an over-long question to the policy's token budget (tokenizer.max_question_tokens)."""

from __future__ import annotations

from typing import Protocol, Sequence

QUESTION_CUTS = ("tail", "head_tail")
# what stands for the dropped middle of a "head_tail" question
CUT_MARK = " ... "
# A token covers at most this many characters in practice: a question is cut to its last (and,
# for "head_tail", first) cap * this many characters before it is tokenised (a 5 MB question is
# not tokenised whole); the cut part lies far from the tokens that are kept.
CHARS_PER_TOKEN_BOUND = 64


class _Codec(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def cut_question(question: str, tokenizer: _Codec, cap: int, cut: str = "tail") -> tuple[str, bool]:
    """(the question as the policy reads it, whether it was cut).

    A question of more than `cap` tokens (cap > 0) is cut to `cap` tokens:
    - cut="tail" keeps its last tokens (long questions, as dcrouter's, keep their end, where the
      ask is);
    - cut="head_tail" keeps the first cap // 2 and the last cap - cap // 2, joined by CUT_MARK: the
      policy sees how the question starts (a reading passage, a letter, a code header) and that
      it was cut, which the tail alone hides (dcrouter's mmlu passages end like arc's questions)."""
    if cut not in QUESTION_CUTS:
        raise ValueError(f"unknown question cut {cut!r}; expected one of {QUESTION_CUTS}")
    if cap <= 0:
        return question, False
    chars = cap * CHARS_PER_TOKEN_BOUND
    if cut == "tail":
        kept = question[-chars:] if len(question) > chars else question
        ids = tokenizer.encode(kept)
        if len(ids) > cap:
            return tokenizer.decode(ids[-cap:]), True
        return kept, kept is not question  # cut by characters only: the rest fits in `cap` tokens
    if len(question) <= 2 * chars:
        head_ids = tail_ids = tokenizer.encode(question)
        if len(head_ids) <= cap:
            return question, False
    else:  # the middle is cut by characters first
        head_ids, tail_ids = tokenizer.encode(question[:chars]), tokenizer.encode(question[-chars:])
    n_head = cap // 2
    tail = tail_ids[max(0, len(tail_ids) - (cap - n_head)):]
    return tokenizer.decode(head_ids[:n_head]) + CUT_MARK + tokenizer.decode(tail), True
