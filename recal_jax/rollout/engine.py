"""Multi-turn rollouts: generate -> stop at </search> -> call the pool -> insert <information>
(loss mask 0) -> resume, until </answer>, EOS, the turn budget or the token budget.

The engine never sees the model: `generate_fn` has the signature of `Sampler.sample`
(docs/contracts.md). Everything here runs on the host (numpy); the batch it returns is
the training step's input.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from recal_jax.data.schema import PROTOCOLS, RoutingRecord
from recal_jax.rollout.sampler import SamplingOptions
from recal_jax.routing.pools.base import Pool, PoolReply, call_many_sync, error_reply
from recal_jax.routing.protocol import INFO_CLOSE, INFO_OPEN, parse, parse_call, sanitize_reply
from recal_jax.shapes import pad_count, round_up

SEARCH_CLOSE, ANSWER_CLOSE = "</search>", "</answer>"
SEARCH_OPEN = "<search>"


@dataclasses.dataclass
class RolloutBatch:
    """B = U * G rollouts, row b = u * G + g. Sequence = prompt then completion, right-padded
    to T. loss_mask_bt is 1 only on policy-written completion tokens (EOS included);
    logp_old_bt[b, t] is the sampler's log-prob of tokens_bt[b, t] there, 0 elsewhere.
    calls[b]: (model, query, PoolReply) per pool call, in order: index-aligned with
    parsed[b].calls, of which it is a prefix (a search naming no pool model or lacking its
    query gets an error information block and no call, as parse leaves it out of its calls;
    a search past max_turns is parsed but not called). finish_reasons[b] in
    {"answer", "eos", "routed", "max_turns", "budget", "turn_budget"}."""

    tokens_bt: np.ndarray  # i32 [B, T]
    attention_mask_bt: np.ndarray  # bool [B, T]
    loss_mask_bt: np.ndarray  # f32 [B, T]
    logp_old_bt: np.ndarray  # f32 [B, T]
    prompt_len_b: np.ndarray  # i32 [B]
    completion_len_b: np.ndarray  # i32 [B]
    num_turns_b: np.ndarray  # i32 [B]: generation rounds of the rollout
    record_index_b: np.ndarray  # i32 [B]: u of row b
    completion_texts: list[str]
    parsed: list[Any]
    calls: list[list[tuple[str, str, PoolReply]]]
    finish_reasons: list[str]
    num_samples: int


@dataclasses.dataclass
class _Row:
    prompt: list[int]
    record: RoutingRecord
    ids: list[int] = dataclasses.field(default_factory=list)
    logp: list[float] = dataclasses.field(default_factory=list)
    mask: list[float] = dataclasses.field(default_factory=list)
    calls: list = dataclasses.field(default_factory=list)
    turns: int = 0
    finish: str | None = None

    def extend(self, ids, logp, policy: bool) -> None:
        ids = [int(i) for i in ids]
        self.ids.extend(ids)
        self.logp.extend([float(x) for x in logp] if policy else [0.0] * len(ids))
        self.mask.extend([1.0 if policy else 0.0] * len(ids))


class RolloutEngine:
    """Rollouts of a policy against a pool.

    Round 1 samples G continuations per prompt; every later round resumes the still-active
    rows (num_samples=1, prompt = full prefix, left-padded). A segment ends at the first
    `</search>` / `</answer>` found in its text (also when the tags are not single tokens),
    at EOS, or at a budget. All pool calls of a round run concurrently; a reply is inserted
    as `\n\n<information>REPLY</information>\n\n` (loss mask 0; protocol tags inside REPLY
    are escaped). single_call: the routed model receives the instance's question and its
    reply is final; nothing is inserted.

    Budgets: `max_new_tokens_per_turn` per round (a round that hits it without a stop ends
    the rollout: "turn_budget"); `max_total_tokens` for the whole completion, information
    blocks included (an information block is truncated to fit; with no room the rollout
    ends: "budget"); `max_turns` searches (one more ends it: "max_turns");
    `max_info_tokens` caps one reply. Resumed rounds pad prefixes to a multiple of
    `prompt_pad_multiple` and repeat rows up to a multiple of `row_pad_multiple` so that a
    jitted sampler sees few shapes. `parse_fn(text, model_names, protocol=, max_turns=)`
    defaults to `recal_jax.routing.protocol.parse`; search blocks are read with its
    `parse_call`."""

    def __init__(
        self,
        generate_fn: Callable,
        tokenizer,
        pool: Pool,
        *,
        protocol: str = "multi_turn",
        model_names: Sequence[str] | None = None,
        max_turns: int = 4,
        max_new_tokens_per_turn: int = 256,
        max_total_tokens: int = 1024,
        max_info_tokens: int | None = None,
        prompt_pad_multiple: int = 1,
        row_pad_multiple: int = 1,
        parse_fn: Callable | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        names = tuple(model_names) if model_names is not None else tuple(pool.model_names)
        unknown = [n for n in names if n not in pool.model_names]
        if unknown:
            raise ValueError(f"model_names {unknown} are not in the pool {list(pool.model_names)}")
        for field, value in (("max_turns", max_turns), ("max_new_tokens_per_turn", max_new_tokens_per_turn),
                             ("max_total_tokens", max_total_tokens), ("prompt_pad_multiple", prompt_pad_multiple),
                             ("row_pad_multiple", row_pad_multiple)):
            if int(value) < 1:
                raise ValueError(f"{field} must be >= 1, got {value}")
        if max_info_tokens is not None and max_info_tokens < 0:
            raise ValueError(f"max_info_tokens must be >= 0, got {max_info_tokens}")
        self.generate_fn = generate_fn
        self.tokenizer = tokenizer
        self.pool = pool
        self.protocol = protocol
        self.model_names = names
        self.max_turns = int(max_turns)
        self.max_new_tokens_per_turn = int(max_new_tokens_per_turn)
        self.max_total_tokens = int(max_total_tokens)
        self.max_info_tokens = max_info_tokens
        self.prompt_pad_multiple = int(prompt_pad_multiple)
        self.row_pad_multiple = int(row_pad_multiple)
        self.parse_fn = parse_fn if parse_fn is not None else parse
        self.eos_id, self.pad_id = int(tokenizer.eos_id), int(tokenizer.pad_id)
        stops: list[list[int]] = []
        for s in (SEARCH_CLOSE, ANSWER_CLOSE, " " + SEARCH_CLOSE, " " + ANSWER_CLOSE):
            ids = list(tokenizer.encode(s))
            if ids and ids not in stops:
                stops.append(ids)
        self.stop_sequences = stops
        self._vocab_size = getattr(tokenizer, "vocab_size", None)
        self._info_open = list(tokenizer.encode(INFO_OPEN))
        self._info_close = list(tokenizer.encode(INFO_CLOSE))

    def _decode(self, ids: Sequence[int]) -> str:
        """Text of ids; ids past the tokenizer's vocabulary (a model's padded embedding rows,
        e.g. Qwen2.5's) have no text and decode to nothing."""
        if self._vocab_size is not None:
            ids = [i for i in ids if 0 <= i < self._vocab_size]
        return self.tokenizer.decode(ids)

    # ---------------------------------------------------------------- generation rounds

    def _left_pad(self, seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        p = round_up(max(len(s) for s in seqs), self.prompt_pad_multiple)
        tokens = np.full((len(seqs), p), self.pad_id, np.int32)
        mask = np.zeros((len(seqs), p), bool)
        for i, s in enumerate(seqs):
            if len(s):
                tokens[i, p - len(s):] = s
                mask[i, p - len(s):] = True
        return tokens, mask

    def _generate(self, seqs, key, max_new: int, num_samples: int, sampling: SamplingOptions, weights):
        tokens, mask = self._left_pad(seqs)
        extra = {} if weights is None else {"weights": weights}
        out = self.generate_fn(
            tokens, mask, key, max_new_tokens=max_new, stop_sequences=self.stop_sequences,
            num_samples=num_samples, **sampling.as_kwargs(), **extra,
        )
        toks, logps, lens = (np.asarray(x) for x in (out.tokens_bn, out.logprobs_bn, out.lengths_b))
        rows = len(seqs) * num_samples
        if toks.shape[0] != rows or logps.shape != toks.shape or lens.shape != (rows,):
            raise ValueError(
                f"generate_fn returned tokens {toks.shape}, logprobs {logps.shape}, lengths {lens.shape}; "
                f"expected {rows} rows"
            )
        return toks, logps, lens

    def _first_stop(self, seg: list[int]) -> tuple[int, str | None]:
        """(k, kind): the shortest prefix seg[:k] whose text holds </search> or </answer>.

        Works on text, so a stop string tokenised differently from the sampler's stop ids
        is still found; prefixes of a byte-level BPE decode to prefixes of the text."""
        def kind_of(k: int) -> str | None:
            text = self._decode(seg[:k])
            hits = [(text.find(s), s) for s in (SEARCH_CLOSE, ANSWER_CLOSE) if s in text]
            return min(hits)[1] if hits else None

        if kind_of(len(seg)) is None:
            return len(seg), None
        lo, hi = 1, len(seg)
        while lo < hi:
            mid = (lo + hi) // 2
            if kind_of(mid) is None:
                lo = mid + 1
            else:
                hi = mid
        return lo, kind_of(lo)

    def _take_segment(self, row: _Row, toks, logps, length: int) -> str | None:
        """Append one generated segment; returns the stop kind or None (and sets row.finish)."""
        seg = [int(t) for t in toks[:length]]
        if self.eos_id in seg:
            seg = seg[: seg.index(self.eos_id) + 1]
        k, kind = self._first_stop(seg)
        seg = seg[:k]
        room = self.max_total_tokens - len(row.ids)
        if len(seg) > room:
            seg, kind = seg[:room], None
        row.extend(seg, logps[: len(seg)], policy=True)
        row.turns += 1
        if seg and seg[-1] == self.eos_id:
            row.finish = "eos"
        elif kind == ANSWER_CLOSE:
            row.finish = "answer"
        elif kind is None:
            row.finish = "budget" if len(row.ids) >= self.max_total_tokens else "turn_budget"
        return kind

    def _search_request(self, row: _Row) -> tuple[str, str, RoutingRecord] | PoolReply:
        text = self._decode(row.ids)
        end = text.rfind(SEARCH_CLOSE)
        start = text.rfind(SEARCH_OPEN, 0, end)
        if start < 0:
            return error_reply(f"{SEARCH_CLOSE} without {SEARCH_OPEN}")
        content = text[start + len(SEARCH_OPEN): end]
        model, query, problem = parse_call(content, self.model_names, self.protocol)
        if model is None:
            name = content.partition(":")[0].strip()
            return error_reply(f"unknown model {name[:40]!r}; pool has {list(self.model_names)}")
        if self.protocol == "single_call":
            return model, row.record.question, row.record
        if not query:
            return error_reply(f"invalid search: {problem}")
        return model, query, row.record

    def information_ids(self, reply_text: str, room: int | None = None) -> list[int]:
        """Token ids of the <information> block the engine inserts for `reply_text` (sanitised,
        capped at max_info_tokens, and its body cut to `room` tokens when given). The SFT
        demonstrations use this so that they match rollouts token for token."""
        body = list(self.tokenizer.encode(sanitize_reply(reply_text)))
        if self.max_info_tokens is not None:
            body = body[: self.max_info_tokens]
        if room is not None:
            body = body[:room]
        return self._info_open + body + self._info_close

    def _append_information(self, row: _Row, reply: PoolReply) -> None:
        room = self.max_total_tokens - len(row.ids) - len(self._info_open) - len(self._info_close)
        if room <= 0:
            row.finish = "budget"
            return
        row.extend(self.information_ids(reply.text, room), [], policy=False)
        if len(row.ids) >= self.max_total_tokens:
            row.finish = "budget"

    # ------------------------------------------------------------------------- the loop

    def run(
        self,
        records: Sequence[RoutingRecord],
        prompts: Sequence[str] | Sequence[Sequence[int]],
        num_samples: int,
        key: jax.Array,
        *,
        sampling: SamplingOptions = SamplingOptions(),
        seq_len: int | None = None,
        weights: Any = None,
    ) -> RolloutBatch:
        """Roll out `num_samples` (G) samples of each of the U prompts (text, or token ids
        with the chat template already applied). T = seq_len, default max prompt length +
        max_total_tokens. `sampling` applies to every generation round of this call
        (greedy: the same rollouts for every key). `weights`, when given, is passed
        unchanged to `generate_fn` (the policy's parameters for this call; the engine never
        looks inside)."""
        if len(records) != len(prompts) or not records:
            raise ValueError(f"need as many records as prompts (> 0), got {len(records)} and {len(prompts)}")
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        g_count = int(num_samples)
        prompt_ids = [list(self.tokenizer.encode(p)) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("empty prompt")
        rows = [_Row(prompt_ids[u], records[u]) for u in range(len(records)) for _ in range(g_count)]

        key, sub = jax.random.split(key)
        max_new = min(self.max_new_tokens_per_turn, self.max_total_tokens)
        generated = self._generate(prompt_ids, sub, max_new, g_count, sampling, weights)
        active = list(range(len(rows)))
        while active:
            active = self._finish_round(rows, active, *generated)
            if not active:
                break
            key, sub = jax.random.split(key)
            generated = self._resume(rows, active, sub, sampling, weights)
        return self._assemble(rows, g_count, seq_len)

    def _finish_round(self, rows: list[_Row], active: list[int], toks, logps, lens) -> list[int]:
        """Take each active row's generated segment (row i of toks / logps / lens is rows[active[i]]),
        call the pool for the rows that stopped at </search> (all calls of the round at once),
        insert the replies; returns the rows still active."""
        pending: list[int] = []
        requests: list = []
        replies: dict[int, PoolReply] = {}
        for i, b in enumerate(active):
            row = rows[b]
            kind = self._take_segment(row, toks[i], logps[i], int(lens[i]))
            if kind != SEARCH_CLOSE or row.finish is not None:
                continue
            if self.protocol == "multi_turn" and len(row.calls) >= self.max_turns:
                row.finish = "max_turns"
                continue
            req = self._search_request(row)
            if isinstance(req, PoolReply):  # no pool call: not in row.calls (as in parse)
                replies[b] = req
            else:
                pending.append(b)
                requests.append(req)
        for b, (model, query, _), reply in zip(pending, requests, call_many_sync(self.pool, requests)):
            rows[b].calls.append((model, query, reply))
            replies[b] = reply
        for b, reply in replies.items():
            if self.protocol == "single_call":
                rows[b].finish = "routed"
            else:
                self._append_information(rows[b], reply)
        return [b for b in active if rows[b].finish is None]

    def _resume(self, rows: list[_Row], active: list[int], key, sampling: SamplingOptions, weights):
        """One more generation round for the active rows (one sample each, prompt = the full
        prefix), rows repeated up to a multiple of row_pad_multiple."""
        remaining = max(self.max_total_tokens - len(rows[b].ids) for b in active)
        seqs = [rows[b].prompt + rows[b].ids for b in active]
        seqs += [seqs[-1]] * pad_count(len(seqs), self.row_pad_multiple)
        return self._generate(seqs, key, min(self.max_new_tokens_per_turn, remaining), 1, sampling, weights)

    def _assemble(self, rows: list[_Row], g_count: int, seq_len: int | None) -> RolloutBatch:
        need = max(len(r.prompt) + len(r.ids) for r in rows)
        t_len = seq_len if seq_len is not None else max(len(r.prompt) for r in rows) + self.max_total_tokens
        if t_len < need:
            raise ValueError(f"seq_len={t_len} is shorter than the longest rollout ({need} tokens)")
        b_count = len(rows)
        tokens = np.full((b_count, t_len), self.pad_id, np.int32)
        attn = np.zeros((b_count, t_len), bool)
        loss_mask = np.zeros((b_count, t_len), np.float32)
        logp = np.zeros((b_count, t_len), np.float32)
        texts, parsed = [], []
        for b, r in enumerate(rows):
            p, n = len(r.prompt), len(r.ids)
            tokens[b, :p + n] = r.prompt + r.ids
            attn[b, :p + n] = True
            loss_mask[b, p:p + n] = r.mask
            logp[b, p:p + n] = r.logp
            ids = r.ids[:-1] if r.ids and r.ids[-1] == self.eos_id else r.ids
            text = self._decode(ids)
            texts.append(text)
            parsed.append(self.parse_fn(text, self.model_names, protocol=self.protocol, max_turns=self.max_turns))
        return RolloutBatch(
            tokens_bt=tokens, attention_mask_bt=attn, loss_mask_bt=loss_mask, logp_old_bt=logp,
            prompt_len_b=np.array([len(r.prompt) for r in rows], np.int32),
            completion_len_b=np.array([len(r.ids) for r in rows], np.int32),
            num_turns_b=np.array([r.turns for r in rows], np.int32),
            record_index_b=np.repeat(np.arange(len(rows) // g_count, dtype=np.int32), g_count),
            completion_texts=texts, parsed=parsed, calls=[r.calls for r in rows],
            finish_reasons=[r.finish for r in rows], num_samples=g_count,
        )
