"""Batched jit sampler: one prefill per prompt, G samples per prompt, KV-cached decode loop.

Shapes: U prompts, P prompt slots (left-padded), G samples per prompt, B = U*G output rows,
N = max_new_tokens, S stop sequences of at most Ls tokens, V vocabulary.

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

PROMPT_BUCKET = 16
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
        return {"temperature": float(self.temperature), "top_p": float(self.top_p), "greedy": bool(self.greedy)}


GREEDY = SamplingOptions(greedy=True)


class SampleOutput(NamedTuple):
    tokens_bn: jax.Array  # i32[U*G, N]; pad after the stop
    logprobs_bn: jax.Array  # f32[U*G, N]; 0 after the stop
    lengths_b: jax.Array  # i32[U*G]; generated tokens, stop sequence / EOS included


def _round_up(x: int, m: int) -> int:
    return max(m, int(math.ceil(x / m)) * m)


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
    of 16 (or to `max_prompt_len` when given, so one shape serves all calls); the cache holds
    P + max_new_tokens slots. `num_compiles` counts the traces (compiles) of the jitted loop
    caused by this sampler's calls; the jit cache is shared by samplers of equal graphdef, and
    pad/eos ids, temperature, top_p values and stop ids are traced, not static.
    `eos_id=None` disables the EOS stop.
    """

    def __init__(self, model: nnx.Module, *, pad_id: int, eos_id: int | None,
                 max_prompt_len: int | None = None):
        if max_prompt_len is not None and max_prompt_len <= 0:
            raise ValueError(f"max_prompt_len must be positive, got {max_prompt_len}")
        self.pad_id = int(pad_id)
        self.eos_id = -1 if eos_id is None else int(eos_id)
        self.max_prompt_len = max_prompt_len
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
            self._graphdef, self._state if weights is None else weights, jnp.asarray(tokens_up), jnp.asarray(mask_up), key,
            jnp.float32(1.0 if greedy else temperature), jnp.float32(top_p),
            jnp.asarray(stop_sl), jnp.asarray(stop_len_s), jnp.int32(self.pad_id),
            jnp.int32(self.eos_id), max_new_tokens=int(max_new_tokens), greedy=bool(greedy),
            num_samples=int(num_samples), use_top_p=bool(not greedy and top_p < 1.0))
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

    def _pad_prompts(self, tokens_up, mask_up):
        """Left-pad (or trim leading pad columns) to the bucketed width."""
        real_width = int(mask_up.sum(axis=1).max())
        target = real_width if self.max_prompt_len is None else self.max_prompt_len
        width = _round_up(target, PROMPT_BUCKET)
        cur = tokens_up.shape[1]
        if cur > width:  # only leading all-pad columns are dropped (checked above)
            return tokens_up[:, cur - width:], mask_up[:, cur - width:]
        pad = width - cur
        tokens_up = np.concatenate(
            [np.full((tokens_up.shape[0], pad), self.pad_id, np.int32), tokens_up], axis=1)
        mask_up = np.concatenate([np.zeros((mask_up.shape[0], pad), bool), mask_up], axis=1)
        return np.where(mask_up, tokens_up, self.pad_id).astype(np.int32), mask_up


@functools.partial(
    jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "num_samples", "use_top_p"))
def _sample_loop(graphdef, state, tokens_up, mask_up, key, temperature, top_p, stop_sl,
                 stop_len_s, pad_id, eos_id, *, max_new_tokens, greedy, num_samples, use_top_p):
    """The jitted prefill + decode loop; see `Sampler.sample` for the semantics."""
    _TRACES[0] += 1  # runs at trace time only
    model = nnx.merge(graphdef, state)
    num_prompts, width = tokens_up.shape
    n, g = max_new_tokens, num_samples
    rows = num_prompts * g
    max_len = width + n

    positions_up = jnp.maximum(jnp.cumsum(mask_up, axis=1) - 1, 0).astype(jnp.int32)
    kv_mask_us = jnp.concatenate([mask_up, jnp.ones((num_prompts, n), bool)], axis=1)
    cache = model.init_cache(num_prompts, max_len)
    # Prefill all but the last slot (its logits are dead code, so XLA drops the LM head),
    # then the last slot alone for the first next-token logits.
    _, cache = model.decode(tokens_up[:, :-1], positions_up[:, :-1], cache,
                            jnp.int32(0), kv_mask_us)
    logits_u1v, cache = model.decode(tokens_up[:, -1:], positions_up[:, -1:], cache,
                                     jnp.int32(width - 1), kv_mask_us)

    def rep(x, axis):
        return jnp.repeat(x, g, axis=axis)

    cache = jax.tree.map(lambda x: rep(x, 1), cache)  # k/v: [L, B, S, Hkv, Dh]
    kv_mask_bs = rep(kv_mask_us, 0)
    next_pos_b = rep(positions_up[:, -1] + 1, 0)
    logits_bv = rep(logits_u1v[:, 0].astype(jnp.float32), 0)

    stop_width = stop_sl.shape[1]
    stop_valid_sl = stop_sl >= 0

    def pick(logits_bv, step_key):
        if greedy:
            return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        scaled_bv = logits_bv / temperature
        if use_top_p:
            scaled_bv = top_p_filter(scaled_bv, top_p)
        return jax.random.categorical(step_key, scaled_bv, axis=-1).astype(jnp.int32)

    def cond(carry):
        i, done_b = carry[0], carry[5]
        return (i < n) & ~jnp.all(done_b)

    def body(carry):
        i, key, cache, logits_bv, tail_bl, done_b, tokens_bn, logp_bn, lengths_b = carry
        key, step_key = jax.random.split(key)
        tok_b = pick(logits_bv, step_key)
        logp_b = jnp.take_along_axis(
            jax.nn.log_softmax(logits_bv, axis=-1), tok_b[:, None], axis=-1)[:, 0]
        tok_b = jnp.where(done_b, pad_id, tok_b)
        logp_b = jnp.where(done_b, 0.0, logp_b)
        tokens_bn = tokens_bn.at[:, i].set(tok_b)
        logp_bn = logp_bn.at[:, i].set(logp_b)
        lengths_b = lengths_b + (~done_b).astype(jnp.int32)

        tail_bl = jnp.concatenate([tail_bl[:, 1:], tok_b[:, None]], axis=1)
        eq_bsl = (tail_bl[:, None, :] == stop_sl[None]) | ~stop_valid_sl[None]
        hit_b = jnp.any(jnp.all(eq_bsl, axis=-1) & (stop_len_s > 0)[None], axis=-1)
        done_b = done_b | hit_b | (tok_b == eos_id)

        logits_b1v, cache = model.decode(tok_b[:, None], (next_pos_b + i)[:, None], cache,
                                         width + i, kv_mask_bs)
        return (i + 1, key, cache, logits_b1v[:, 0].astype(jnp.float32), tail_bl, done_b,
                tokens_bn, logp_bn, lengths_b)

    carry = (
        jnp.int32(0), key, cache, logits_bv,
        jnp.full((rows, stop_width), -1, jnp.int32),  # -1: never matches a stop token
        jnp.zeros((rows,), bool),
        jnp.full((rows, n), pad_id, jnp.int32),
        jnp.zeros((rows, n), jnp.float32),
        jnp.zeros((rows,), jnp.int32),
    )
    out = jax.lax.while_loop(cond, body, carry)
    return out[6], out[7], out[8]
