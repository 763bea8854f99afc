"""Parser for the Router-R1 tag protocol (spec section 2).

One linear pass of a fixed-alternative regex finds the tags; everything else is bookkeeping
over that token list, so the cost is O(len(text)) for any input (unclosed tags, nesting,
100k characters of noise). The parser never raises on text.

Strict judgement (`format_ok`), multi_turn protocol, all of:
  * tags balanced and not nested: the tags alternate open X / close X;
  * every `<think>` block non-empty (whitespace does not count);
  * exactly one `<answer>` block and it is last: only whitespace may follow `</answer>`;
  * the text starts with `<think>` (leading whitespace is ignored);
  * every `<search>` holds `NAME : QUERY`, NAME exactly a pool model, QUERY non-empty;
  * number of `<search>` blocks == number of `<information>` blocks;
  * number of `<search>` blocks <= max_turns.
Text outside the blocks is not judged (the spec does not forbid it).

single_call protocol: an optional non-empty `<think>` block, then exactly one
`<search> NAME </search>` (`NAME : QUERY` also accepted), optionally followed by the
environment's `<information>` block; only whitespace outside these; no `<answer>`.

`<information>` blocks are opaque: their content is the environment's (a routed model's
reply may itself contain `<answer>` tags), so the scan jumps to the next
`</information>`. Callers that insert replies should use `information_block` (the engine's
exact wrappers INFO_OPEN / INFO_CLOSE around `sanitize_reply(reply)`), which neutralises
every protocol tag inside the reply.

Lenient extraction (filled even when format fails, for evaluation):
  * calls: every well-formed `<search>...</search>` block whose NAME resolves to a pool
    model (exact, else case-insensitive), in order; multi_turn also needs a non-empty
    QUERY. single_call keeps the QUERY as written ("" if absent): the environment sends
    the instance's question.
  * answer: content of the last closed `<answer>` block; if there is none, the text after
    a trailing unclosed `<answer>` (generation cut by the budget); else None.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple, Sequence

TAG_NAMES = ("think", "search", "information", "answer")
_TAG_RE = re.compile(r"<(/?)(think|search|information|answer)>")
_INFO_END_TAG = "</information>"
# What the rollout engine inserts around a routed model's reply.
# The spaces around the reply make every word of it start with a space, as the words of the
# policy's own <answer> do, so copying an answer out of a reply copies the same tokens.
INFO_OPEN, INFO_CLOSE = "\n\n<information> ", " </information>\n\n"


@dataclasses.dataclass(frozen=True)
class Parsed:
    format_ok: bool
    reason: str  # "ok" or the first format violation found
    calls: list  # list[tuple[str, str]]: (model, query)
    answer: str | None


class _Tag(NamedTuple):
    start: int
    end: int
    closing: bool
    name: str


def sanitize_reply(text: str) -> str:
    """Neutralise protocol tags inside a model reply (untrusted text) so it cannot close the
    information block or fake an answer: `<answer>` -> `&lt;answer&gt;`."""
    return _TAG_RE.sub(r"&lt;\1\2&gt;", text)


def information_block(reply: str) -> str:
    """The information block the engine inserts for `reply`: INFO_OPEN, the sanitised reply,
    INFO_CLOSE (so the reply cannot close the block early or fake tags)."""
    return INFO_OPEN + sanitize_reply(reply) + INFO_CLOSE


def _tokenize(text: str) -> list[_Tag]:
    tags: list[_Tag] = []
    skip_until = 0
    for m in _TAG_RE.finditer(text):
        start = m.start()
        if start < skip_until:
            continue  # inside an (opaque) information block
        closing, name = m.group(1) == "/", m.group(2)
        tags.append(_Tag(start, m.end(), closing, name))
        if name == "information" and not closing:
            close = text.find(_INFO_END_TAG, m.end())
            if close < 0:
                break
            skip_until = close + len(_INFO_END_TAG)
            tags.append(_Tag(close, skip_until, True, "information"))
    return tags


def parse_call(content: str, model_names: Sequence[str], protocol: str = "multi_turn") -> tuple[str | None, str, str]:
    """Read one `<search>` block's content -> (model or None, query, problem or "ok").

    Model names may contain ':'; the longest pool name followed by ':' (or the end of the
    content) wins; otherwise the text before the first ':' is the name. A case-insensitive
    match returns the canonical model but reports the problem (format requires exact).
    """
    _check_protocol(protocol)
    return _parse_call(content, _Pool(model_names), protocol)


class _Pool:
    def __init__(self, model_names: Sequence[str]):
        self.names = frozenset(model_names)
        self.lower = {m.lower(): m for m in model_names}
        self.longest_first = sorted(self.lower, key=len, reverse=True)


def _parse_call(content: str, pool: _Pool, protocol: str) -> tuple[str | None, str, str]:
    body = content.strip()
    body_lower = body.lower()
    name, query, has_colon = None, "", False
    for m in pool.longest_first:
        if body_lower.startswith(m):
            rest = body[len(m):].lstrip()
            if rest == "" or rest.startswith(":"):
                name, has_colon, query = body[: len(m)], bool(rest), rest[1:].strip()
                break
    if name is None:
        head, sep, tail = body.partition(":")
        name, has_colon, query = head.strip(), bool(sep), tail.strip()
    exact = name in pool.names
    model = name if exact else pool.lower.get(name.lower())
    if model is None:
        return None, query, f"unknown model {name[:40]!r}"
    if protocol == "multi_turn":
        if not has_colon:
            return model, query, "search must be 'NAME : QUERY'"
        if not query:
            return model, query, "empty query"
    if not exact:
        return model, query, f"model name {name[:40]!r} differs in case from {model!r}"
    return model, query, "ok"


def _check_protocol(protocol: str) -> None:
    if protocol not in ("multi_turn", "single_call"):
        raise ValueError(f"unknown protocol {protocol!r}; expected 'multi_turn' or 'single_call'")


def _blocks(text: str, tags: list[_Tag]) -> list[tuple[str, str]]:
    """Adjacent (open X, close X) tag pairs -> [(name, content)]."""
    out = []
    for a, b in zip(tags, tags[1:]):
        if not a.closing and b.closing and a.name == b.name:
            out.append((a.name, text[a.end: b.start]))
    return out


def _structure_problem(text: str, tags: list[_Tag]) -> str | None:
    """Balanced and not nested <=> the tags alternate open X / close X."""
    for i, tag in enumerate(tags):
        if i % 2 == 0:
            if tag.closing:
                return f"unmatched </{tag.name}>"
        else:
            prev = tags[i - 1]
            if not tag.closing:
                return f"<{tag.name}> nested in <{prev.name}>"
            if tag.name != prev.name:
                return f"</{tag.name}> closes <{prev.name}>"
    if len(tags) % 2:
        return f"unclosed <{tags[-1].name}>"
    return None


def _lenient_answer(text: str, tags: list[_Tag], blocks: list[tuple[str, str]]) -> str | None:
    answers = [c for n, c in blocks if n == "answer"]
    if answers:
        return answers[-1].strip()
    if tags and tags[-1].name == "answer" and not tags[-1].closing:
        return text[tags[-1].end:].strip()
    return None


def parse(text: str, model_names: Sequence[str], protocol: str = "multi_turn", max_turns: int = 4) -> Parsed:
    """Judge a rollout's text and extract its calls and answer (see module docstring)."""
    _check_protocol(protocol)
    if not isinstance(text, str):
        return Parsed(False, f"text is not a string: {type(text).__name__}", [], None)
    pool = _Pool(model_names)
    tags = _tokenize(text)
    blocks = _blocks(text, tags)
    calls = []
    call_problem = None
    for name, content in blocks:
        if name != "search":
            continue
        model, query, problem = _parse_call(content, pool, protocol)
        if model is not None and (protocol == "single_call" or query):
            calls.append((model, query))
        if problem != "ok" and call_problem is None:
            call_problem = problem
    answer = _lenient_answer(text, tags, blocks)
    if protocol == "single_call":
        answer = None
    reason = _judge(text, tags, blocks, call_problem, protocol, max_turns)
    return Parsed(reason == "ok", reason, calls, answer)


def _judge(text, tags, blocks, call_problem, protocol, max_turns) -> str:
    problem = _structure_problem(text, tags)
    if problem:
        return problem
    if not tags:
        return "no tags"
    if text[: tags[0].start].strip():
        return "text does not start with a tag"
    for name, content in blocks:
        if name == "think" and not content.strip():
            return "empty <think>"
    order = [name for name, _ in blocks]
    n_search = order.count("search")
    if protocol == "multi_turn":
        if order[0] != "think":
            return "text does not start with <think>"
        if order.count("answer") != 1:
            return f"expected exactly one <answer>, found {order.count('answer')}"
        if order[-1] != "answer" or text[tags[-1].end:].strip():
            return "<answer> is not last"
        if call_problem:
            return call_problem
        if n_search != order.count("information"):
            return f"{n_search} <search> but {order.count('information')} <information>"
        if n_search > max_turns:
            return f"{n_search} searches exceed the turn budget {max_turns}"
        return "ok"
    # single_call: [think] search [information], whitespace between blocks
    for a, b in zip(tags[1::2], tags[2::2]):
        if text[a.end: b.start].strip():
            return "text outside the tags"
    if text[tags[-1].end:].strip():
        return "text after the last tag"
    rest = order[1:] if order[0] == "think" else order
    if rest not in (["search"], ["search", "information"]):
        return "expected [<think>] <search> [<information>]"
    if call_problem:
        return call_problem
    return "ok"
