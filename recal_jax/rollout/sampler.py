"""Batched jit sampler: one prefill per prompt, G samples per prompt, KV-cached decode loop.

Shapes: U prompts, P prompt slots (left-padded), G samples per prompt, B = U*G output rows,
N = max_new_tokens, S stop sequences of at most Ls tokens, V vocabulary.

The cache holds P + N slots, but each decode step attends only to a bucketed live prefix of
it (a multiple of `decode_bucket` slots covering the slots written so far): the decode loop
is a short sequence of `while_loop`s, one per live-length bucket, each with a static slice.

Resuming after the environment appends text (e.g. an `<information>` block after
`</search>`): the engine builds the longer left-padded prompts (old prompt + generated
tokens + inserted tokens) and simply calls `sample` again; the prompt is re-prefilled from
scratch (no cache is carried between calls).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recal_jax.shapes import round_up

PROMPT_BUCKET = 16
DECODE_BUCKET = 128
STOP_BUCKET = 4
_TRACES = [0]  # traces of `_sample_loop`, shared by all samplers (same graphdef = same cache)


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How tokens are picked, passed to every `run` / `sample` call (never stored on an
    engine). `greedy` takes the argmax (temperature and top_p are then ignored); otherwise
    logits / temperature, nucleus filtering with top_p, and a categorical draw."""

    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self):
        if not self.greedy and not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"sampling temperature must be finite and > 0 (or greedy=True), "
                             f"got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling top_p must be in (0, 1], got {self.top_p!r}")

    def as_kwargs(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature), "top_p": float(self.top_p),
                "greedy": bool(self.greedy)}


GREEDY = SamplingOptions(greedy=True)


class SampleOutput(NamedTuple):
    tokens_bn: jax.Array  # i32[U*G, N]; pad after the stop
    logprobs_bn: jax.Array  # f32[U*G, N]; 0 after the stop
    lengths_b: jax.Array  # i32[U*G]; generated tokens, stop sequence / EOS included


def _round_up(x: int, m: int) -> int:
    """shapes.round_up, but never below one bucket (an empty stop list still gets a slot)."""
    return round_up(max(int(x), 1), m)


def top_p_filter(logits_bv: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keep the smallest set of highest-probability tokens whose mass reaches `top_p`
    (the top token always survives); the others get -inf."""
    sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    keep_bv = mass_before_bv < top_p
    keep_bv = keep_bv.at[:, 0].set(True)
    num_kept_b = jnp.sum(keep_bv, axis=-1)
    threshold_b = jnp.take_along_axis(sorted_bv, (num_kept_b - 1)[:, None], axis=-1)
    return jnp.where(logits_bv >= threshold_b, logits_bv, -jnp.inf)


def _stop_array(stop_sequences: Sequence[Sequence[int]], vocab_size: int | None):
    """Right-aligned stop tokens i32[S, Ls] (-1 = unused) and lengths i32[S], bucketed."""
    seqs = [list(map(int, s)) for s in stop_sequences]
    for s in seqs:
        if not s:
            raise ValueError("stop sequences must be non-empty")
        if min(s) < 0 or (vocab_size is not None and max(s) >= vocab_size):
            raise ValueError(f"stop sequence {s} has ids outside [0, {vocab_size})")
    num = _round_up(len(seqs), STOP_BUCKET)
    width = _round_up(max((len(s) for s in seqs), default=1), STOP_BUCKET)
    stop_sl = np.full((num, width), -1, np.int32)
    lens_s = np.zeros((num,), np.int32)
    for i, s in enumerate(seqs):
        stop_sl[i, width - len(s):] = s
        lens_s[i] = len(s)
    return stop_sl, lens_s


class Sampler:
    """Jitted sampler over a Qwen2-style model (`init_cache` / `decode` per docs/contracts.md).

    The model is split once (graphdef + state); `update_weights` swaps the state in after
    a training step without recompiling. Prompt slots are padded on the left up to a multiple
    of `prompt_bucket` (default 16), capped at `max_prompt_len` rounded up to 16 (a longer
    prompt is an error), so prompts of similar lengths share one compiled shape; the cache
    holds P + max_new_tokens slots and decode attends to a live prefix of them bucketed by
    `decode_bucket`. `num_compiles` counts the traces (compiles) of the jitted loop caused by
    this sampler's calls; the jit cache is shared by samplers of equal graphdef, and pad/eos
    ids, temperature, top_p values and stop ids are traced, not static.
    `eos_id=None` disables the EOS stop.
    """

    def __init__(self, model: nnx.Module, *, pad_id: int, eos_id: int | None,
                 max_prompt_len: int | None = None, prompt_bucket: int = PROMPT_BUCKET,
                 decode_bucket: int = DECODE_BUCKET):
        if max_prompt_len is not None and max_prompt_len <= 0:
            raise ValueError(f"max_prompt_len must be positive, got {max_prompt_len}")
        for name, value in (("prompt_bucket", prompt_bucket), ("decode_bucket", decode_bucket)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Sampler {name} must be a positive int, got {value!r}")
        self.pad_id = int(pad_id)
        self.eos_id = -1 if eos_id is None else int(eos_id)
        self.max_prompt_len = max_prompt_len
        self.prompt_bucket = prompt_bucket
        self.decode_bucket = decode_bucket
        config = getattr(model, "config", None)
        self.vocab_size = getattr(config, "vocab_size", None)
        self._graphdef, self._state = nnx.split(model)
        self.num_compiles = 0

    def update_weights(self, model_or_state: Any) -> None:
        """Use new weights (same architecture): an nnx.Module or an nnx.State."""
        if isinstance(model_or_state, nnx.Module):
            graphdef, state = nnx.split(model_or_state)
            if graphdef != self._graphdef:
                raise ValueError("update_weights: model graph differs from the sampler's")
            model_or_state = state
        self._state = model_or_state

    # public API ---------------------------------------------------------------------------

    def sample(self, prompt_tokens_up, prompt_mask_up, key, *, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
               stop_sequences: Sequence[Sequence[int]] = (), num_samples: int = 1,
               weights: Any = None) -> SampleOutput:
        """Generate `max_new_tokens` at most for each of U*G rows (row u*G + g = sample g of
        prompt u).

        prompt_tokens_up i32[U, P], prompt_mask_up bool[U, P]: left-padded (mask False on
        the leading pad slots, each row has at least one real token).
        Sampling: `greedy` takes the argmax; otherwise logits / temperature, then nucleus
        filtering with `top_p`, then a categorical draw. A row stops after EOS or after any
        of `stop_sequences` (matched against its generated tokens only); that token is kept
        and counted in `lengths_b`, later slots hold `pad_id` (logprob 0).

        logprobs_bn is log_softmax(logits) at the sampled token, i.e. under the UNTEMPERED,
        untruncated policy (temperature 1, top_p 1): the exact behaviour-policy logprob when
        temperature == 1 and top_p == 1 (the GRPO setting), and the current policy's
        temperature-1 logprob otherwise. Deterministic for a given `key`; with `greedy` the
        same for every key. `weights` (an nnx.State of the same graph) samples from those
        weights for this call only; default: the sampler's own (`update_weights`).
        """
        tokens_up = np.asarray(prompt_tokens_up)
        mask_up = np.asarray(prompt_mask_up)
        self._check(tokens_up, mask_up, max_new_tokens, temperature, top_p, num_samples)
        tokens_up, mask_up = self._pad_prompts(tokens_up.astype(np.int32), mask_up.astype(bool))
        stop_sl, stop_len_s = _stop_array(stop_sequences, self.vocab_size)
        traces_before = _TRACES[0]
        tokens_bn, logprobs_bn, lengths_b = _sample_loop(
            self._graphdef, self._state if weights is None else weights, jnp.asarray(tokens_up),
            jnp.asarray(mask_up), key,
            jnp.float32(1.0 if greedy else temperature), jnp.float32(top_p),
            jnp.asarray(stop_sl), jnp.asarray(stop_len_s), jnp.int32(self.pad_id),
            jnp.int32(self.eos_id), max_new_tokens=int(max_new_tokens), greedy=bool(greedy),
            num_samples=int(num_samples), use_top_p=bool(not greedy and top_p < 1.0),
            decode_bucket=self.decode_bucket)
        self.num_compiles += _TRACES[0] - traces_before
        return SampleOutput(tokens_bn, logprobs_bn, lengths_b)

    # validation / bucketing ---------------------------------------------------------------

    def _check(self, tokens_up, mask_up, max_new_tokens, temperature, top_p, num_samples):
        if tokens_up.ndim != 2 or tokens_up.shape != mask_up.shape:
            raise ValueError(
                f"prompt tokens {tokens_up.shape} and mask {mask_up.shape} must both be [U, P]")
        if tokens_up.shape[0] == 0 or tokens_up.shape[1] == 0:
            raise ValueError(f"empty prompt batch {tokens_up.shape}")
        if not np.issubdtype(tokens_up.dtype, np.integer):
            raise ValueError(f"prompt tokens must be integers, got {tokens_up.dtype}")
        mask = mask_up.astype(bool)
        if not mask.any(axis=1).all():
            raise ValueError("every prompt needs at least one real token (mask all False)")
        if (np.diff(mask.astype(np.int8), axis=1) < 0).any():
            raise ValueError("prompts must be LEFT-padded: mask must be False...False True...True")
        real = tokens_up[mask]
        if real.min() < 0 or (self.vocab_size is not None and real.max() >= self.vocab_size):
            raise ValueError(f"prompt token ids outside [0, {self.vocab_size})")
        if self.max_prompt_len is not None and tokens_up.shape[1] > self.max_prompt_len:
            lens = mask.sum(axis=1)
            if lens.max() > self.max_prompt_len:
                raise ValueError(
                    f"prompt of {lens.max()} tokens exceeds max_prompt_len={self.max_prompt_len}")
        if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens \
                or max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be finite and > 0 (use greedy=True), got "
                             f"{temperature!r}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")

    def prompt_width(self, real_width: int) -> int:
        """Prompt slots P for prompts of at most `real_width` real tokens: a multiple of
        prompt_bucket, capped at max_prompt_len rounded up to 16."""
        width = _round_up(real_width, self.prompt_bucket)
        if self.max_prompt_len is not None:
            width = min(width, _round_up(self.max_prompt_len, PROMPT_BUCKET))
        return width

    def _pad_prompts(self, tokens_up, mask_up):
        """Left-pad (or trim leading pad columns) to the bucketed width."""
        width = self.prompt_width(int(mask_up.sum(axis=1).max()))
        cur = tokens_up.shape[1]
        if cur > width:  # only leading all-pad columns are dropped (checked above)
            return tokens_up[:, cur - width:], mask_up[:, cur - width:]
        pad = width - cur
        tokens_up = np.concatenate(
            [np.full((tokens_up.shape[0], pad), self.pad_id, np.int32), tokens_up], axis=1)
        mask_up = np.concatenate([np.zeros((mask_up.shape[0], pad), bool), mask_up], axis=1)
        return np.where(mask_up, tokens_up, self.pad_id).astype(np.int32), mask_up


class _DecodeState(NamedTuple):
    """Carry of the decode while_loops (B rows, N new tokens, Ls stop width)."""

    step: jax.Array  # i32[]: tokens generated so far; the next token goes to slot P + step
    key: jax.Array  # PRNG key
    cache: Any  # KVCache, k/v [L, B, P + N, Hkv, Dh]
    logits_bv: jax.Array  # f32[B, V]: logits of the next token
    tail_bl: jax.Array  # i32[B, Ls]: last generated tokens (-1 before the first)
    done_b: jax.Array  # bool[B]: stopped (EOS or a stop sequence)
    tokens_bn: jax.Array  # i32[B, N]
    logp_bn: jax.Array  # f32[B, N]
    lengths_b: jax.Array  # i32[B]


class _Stops(NamedTuple):
    """Traced stop / padding constants of one call."""

    stop_sl: jax.Array  # i32[S, Ls], right-aligned, -1 = unused
    stop_len_s: jax.Array  # i32[S]
    pad_id: jax.Array  # i32[]
    eos_id: jax.Array  # i32[]


def live_segments(width: int, max_new_tokens: int, bucket: int) -> list[tuple[int, int, int]]:
    """[(first step, end step, attend_len)]: decode step i writes slot width + i and reads
    slots [0, attend_len) with attend_len = min(round_up(width + i + 1, bucket), width + N)."""
    segments, i, max_len = [], 0, width + max_new_tokens
    while i < max_new_tokens:
        attend_len = min(_round_up(width + i + 1, bucket), max_len)
        end = min(max_new_tokens, attend_len - width)
        segments.append((i, end, attend_len))
        i = end
    return segments


def _prefill(model, tokens_up, mask_up, key, stops: _Stops, n: int, g: int) -> _DecodeState:
    """Prefill U prompts (prompt slots only), repeat the cache G times: the initial state."""
    num_prompts, width = tokens_up.shape
    positions_up = jnp.maximum(jnp.cumsum(mask_up, axis=1) - 1, 0).astype(jnp.int32)
    kv_mask_us = jnp.concatenate([mask_up, jnp.ones((num_prompts, n), bool)], axis=1)
    cache = model.init_cache(num_prompts, width + n)
    # Prefill all but the last slot (its logits are dead code, so XLA drops the LM head),
    # then the last slot alone for the first next-token logits.
    _, cache = model.decode(tokens_up[:, :-1], positions_up[:, :-1], cache, jnp.int32(0),
                            kv_mask_us, attend_len=width)
    logits_u1v, cache = model.decode(tokens_up[:, -1:], positions_up[:, -1:], cache,
                                     jnp.int32(width - 1), kv_mask_us, attend_len=width)
    rows = num_prompts * g
    return _DecodeState(
        step=jnp.int32(0), key=key,
        cache=jax.tree.map(lambda x: jnp.repeat(x, g, axis=1), cache),
        logits_bv=jnp.repeat(logits_u1v[:, 0].astype(jnp.float32), g, axis=0),
        tail_bl=jnp.full((rows, stops.stop_sl.shape[1]), -1, jnp.int32),  # never a stop token
        done_b=jnp.zeros((rows,), bool),
        tokens_bn=jnp.full((rows, n), stops.pad_id, jnp.int32),
        logp_bn=jnp.zeros((rows, n), jnp.float32),
        lengths_b=jnp.zeros((rows,), jnp.int32))


def _pick(logits_bv, step_key, temperature, top_p, *, greedy: bool, use_top_p: bool):
    """Next token ids i32[B]: argmax, or a draw from logits / temperature (top-p filtered)."""
    if greedy:
        return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    scaled_bv = logits_bv / temperature
    if use_top_p:
        scaled_bv = top_p_filter(scaled_bv, top_p)
    return jax.random.categorical(step_key, scaled_bv, axis=-1).astype(jnp.int32)


def _record(st: _DecodeState, tok_b, logp_b, stops: _Stops) -> tuple[_DecodeState, jax.Array]:
    """Writes step `st.step`'s token (pad after a stop), updates stop state and lengths;
    returns the new state and the token written (i32[B])."""
    done_b = st.done_b
    tok_b = jnp.where(done_b, stops.pad_id, tok_b)
    logp_b = jnp.where(done_b, 0.0, logp_b)
    tail_bl = jnp.concatenate([st.tail_bl[:, 1:], tok_b[:, None]], axis=1)
    eq_bsl = (tail_bl[:, None, :] == stops.stop_sl[None]) | (stops.stop_sl < 0)[None]
    hit_b = jnp.any(jnp.all(eq_bsl, axis=-1) & (stops.stop_len_s > 0)[None], axis=-1)
    return st._replace(
        tokens_bn=st.tokens_bn.at[:, st.step].set(tok_b),
        logp_bn=st.logp_bn.at[:, st.step].set(logp_b),
        lengths_b=st.lengths_b + (~done_b).astype(jnp.int32),
        tail_bl=tail_bl, done_b=done_b | hit_b | (tok_b == stops.eos_id)), tok_b


@functools.partial(
    jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "num_samples", "use_top_p",
                              "decode_bucket"))
def _sample_loop(graphdef, state, tokens_up, mask_up, key, temperature, top_p, stop_sl,
                 stop_len_s, pad_id, eos_id, *, max_new_tokens, greedy, num_samples, use_top_p,
                 decode_bucket):
    """The jitted prefill + decode loops; see `Sampler.sample` for the semantics."""
    _TRACES[0] += 1  # runs at trace time only
    model = nnx.merge(graphdef, state)
    width, n = tokens_up.shape[1], max_new_tokens
    stops = _Stops(stop_sl, stop_len_s, pad_id, eos_id)
    st = _prefill(model, tokens_up, mask_up, key, stops, n, num_samples)
    kv_mask_bs = jnp.repeat(
        jnp.concatenate([mask_up, jnp.ones((mask_up.shape[0], n), bool)], axis=1),
        num_samples, axis=0)
    first_pos_b = jnp.repeat(jnp.sum(mask_up, axis=1, dtype=jnp.int32), num_samples)

    def body(st: _DecodeState, attend_len: int) -> _DecodeState:
        key, step_key = jax.random.split(st.key)
        tok_b = _pick(st.logits_bv, step_key, temperature, top_p, greedy=greedy,
                      use_top_p=use_top_p)
        logp_b = jnp.take_along_axis(
            jax.nn.log_softmax(st.logits_bv, axis=-1), tok_b[:, None], axis=-1)[:, 0]
        st, tok_b = _record(st._replace(key=key), tok_b, logp_b, stops)
        logits_b1v, cache = model.decode(tok_b[:, None], (first_pos_b + st.step)[:, None],
                                         st.cache, width + st.step, kv_mask_bs,
                                         attend_len=attend_len)
        return st._replace(step=st.step + 1, cache=cache,
                           logits_bv=logits_b1v[:, 0].astype(jnp.float32))

    for _, end, attend_len in live_segments(width, n, decode_bucket):
        st = jax.lax.while_loop(
            lambda st, end=end: (st.step < end) & ~jnp.all(st.done_b),
            functools.partial(body, attend_len=attend_len), st)
    return st.tokens_bn, st.logp_bn, st.lengths_b
