"""Sampler vs a naive reference that recomputes the full forward for every new token."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from recal_jax.models import ModelConfig, Qwen2
from recal_jax.rollout.sampler import Sampler, live_segments, top_p_filter

VOCAB = 97
PAD = 0


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.preset("tiny", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                             num_layers=2, num_heads=4, num_kv_heads=2,
                             tie_word_embeddings=False)
    return Qwen2(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def sampler(model):
    """Shared across tests so compiled shapes are reused (the static-argument combinations
    are kept few on purpose: compiles dominate this file's runtime)."""
    return Sampler(model, pad_id=PAD, eos_id=None)


@pytest.fixture(scope="module")
def prompts():
    """Three left-padded prompts of lengths 3, 7, 5 in a [3, 7] array."""
    rng = np.random.default_rng(0)
    lens = [3, 7, 5]
    width = max(lens)
    toks = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), bool)
    raw = []
    for i, n in enumerate(lens):
        r = rng.integers(1, VOCAB, size=n).tolist()
        raw.append(r)
        toks[i, width - n:] = r
        mask[i, width - n:] = True
    return toks, mask, raw


REF_WIDTH = 32
_forward = nnx.jit(lambda m, t: m(t))


def full_logits(model, seq):
    """Full forward of one unpadded sequence, f64[len, V]. Right-padded to a fixed width so
    one compile serves all calls; causal attention keeps trailing filler out of the result."""
    assert len(seq) <= REF_WIDTH
    padded = jnp.asarray([list(seq) + [PAD] * (REF_WIDTH - len(seq))], jnp.int32)
    return np.asarray(_forward(model, padded)[0, :len(seq)], np.float64)


def _last_logits(model, seq):
    return full_logits(model, seq)[-1]


def reference_greedy(model, prompt, n, eos=None, stops=()):
    """Plain loop from the contract's words: argmax of the full forward, stop after EOS or
    a stop sequence in the generated tokens (kept), then pad."""
    gen = []
    for _ in range(n):
        tok = int(np.argmax(_last_logits(model, prompt + gen)))
        gen.append(tok)
        if tok == eos or any(len(gen) >= len(s) and gen[-len(s):] == list(s) for s in stops):
            break
    return gen + [PAD] * (n - len(gen)), len(gen)


def log_softmax_np(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def test_greedy_matches_full_forward_reference(model, sampler, prompts):
    toks, mask, raw = prompts
    out = sampler.sample(toks, mask, jax.random.key(0), max_new_tokens=8, greedy=True)
    chex.assert_shape([out.tokens_bn, out.logprobs_bn], (3, 8))
    chex.assert_shape(out.lengths_b, (3,))
    chex.assert_type([out.tokens_bn, out.lengths_b, out.logprobs_bn], [jnp.int32, jnp.int32,
                                                                       jnp.float32])
    for u, p in enumerate(raw):
        exp, n = reference_greedy(model, p, 8)
        assert out.tokens_bn[u].tolist() == exp
        assert int(out.lengths_b[u]) == n == 8


def test_logprobs_are_untempered_log_softmax_of_full_forward(model, sampler, prompts):
    toks, mask, raw = prompts
    out = sampler.sample(toks, mask, jax.random.key(3), max_new_tokens=8, temperature=0.7,
                         top_p=0.9, num_samples=2)
    tokens, logps = np.asarray(out.tokens_bn), np.asarray(out.logprobs_bn)
    for b in range(6):
        seq = raw[b // 2] + tokens[b].tolist()
        logits = full_logits(model, seq)
        p = len(raw[b // 2])
        for t in range(8):
            exp = log_softmax_np(logits[p - 1 + t])[tokens[b, t]]
            np.testing.assert_allclose(logps[b, t], exp, atol=1e-4)


def test_stop_sequences_and_eos_stop_the_right_rows(model, prompts):
    toks, mask, raw = prompts
    n = 8
    free = [reference_greedy(model, p, n)[0] for p in raw]
    stop = free[0][3:5]  # row 0 must stop at (or before) its 5th token
    eos = free[1][2]  # row 1 must stop at (or before) its 3rd token
    stops = [stop, [VOCAB - 1, VOCAB - 2, VOCAB - 3]]
    sampler = Sampler(model, pad_id=PAD, eos_id=eos)
    out = sampler.sample(toks, mask, jax.random.key(0), max_new_tokens=n, greedy=True,
                         stop_sequences=stops)
    for u, p in enumerate(raw):
        exp, length = reference_greedy(model, p, n, eos=eos, stops=stops)
        assert out.tokens_bn[u].tolist() == exp
        assert int(out.lengths_b[u]) == length
        assert np.all(np.asarray(out.logprobs_bn[u, length:]) == 0.0)
        assert np.all(np.asarray(out.logprobs_bn[u, :length]) < 0.0)
    assert int(out.lengths_b[0]) <= 5 and int(out.lengths_b[1]) <= 3


def test_num_samples_rows_differ_when_sampling_identical_when_greedy(model, sampler, prompts):
    toks, mask, raw = prompts
    g = 2
    out = sampler.sample(toks, mask, jax.random.key(1), max_new_tokens=8, num_samples=g,
                         temperature=1.5)
    chex.assert_shape(out.tokens_bn, (3 * g, 8))
    rows = np.asarray(out.tokens_bn).reshape(3, g, 8)
    for u in range(3):
        assert len({tuple(r) for r in rows[u]}) > 1
    greedy = sampler.sample(toks, mask, jax.random.key(1), max_new_tokens=8, num_samples=g,
                            greedy=True)
    rows = np.asarray(greedy.tokens_bn).reshape(3, g, 8)
    for u, p in enumerate(raw):
        exp = reference_greedy(model, p, 8)[0]
        for r in rows[u]:
            assert r.tolist() == exp


def test_deterministic_for_a_key(model, sampler, prompts):
    toks, mask, _ = prompts
    kw = dict(max_new_tokens=8, num_samples=2)
    a = sampler.sample(toks, mask, jax.random.key(7), **kw)
    b = sampler.sample(toks, mask, jax.random.key(7), **kw)
    c = sampler.sample(toks, mask, jax.random.key(8), **kw)
    np.testing.assert_array_equal(a.tokens_bn, b.tokens_bn)
    np.testing.assert_array_equal(a.logprobs_bn, b.logprobs_bn)
    assert not np.array_equal(a.tokens_bn, c.tokens_bn)


def test_tiny_top_p_equals_greedy(model, sampler, prompts):
    toks, mask, _ = prompts
    g = sampler.sample(toks, mask, jax.random.key(0), max_new_tokens=8, greedy=True)
    s = sampler.sample(toks, mask, jax.random.key(5), max_new_tokens=8, top_p=1e-6,
                       temperature=2.0, num_samples=2)
    np.testing.assert_array_equal(np.repeat(g.tokens_bn, 2, axis=0), s.tokens_bn)
    np.testing.assert_allclose(np.repeat(g.logprobs_bn, 2, axis=0), s.logprobs_bn, atol=1e-6)


def _nucleus_probs_np(logits, temperature, top_p):
    z = logits / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    mass = 0.0
    for i in order:
        keep[i] = True
        mass += p[i]
        if mass >= top_p:
            break
    q = np.where(keep, p, 0.0)
    return q / q.sum()


@pytest.mark.parametrize("temperature,top_p", [
    pytest.param(1.0, 1.0, marks=pytest.mark.slow), (0.5, 0.8)])
def test_first_token_distribution(model, sampler, prompts, temperature, top_p):
    """Empirical first-token frequencies over many samples match the nucleus distribution."""
    toks, mask, raw = prompts
    g = 4000
    out = sampler.sample(toks[:1], mask[:1], jax.random.key(11), max_new_tokens=1,
                         num_samples=g, temperature=temperature, top_p=top_p)
    freq = np.bincount(np.asarray(out.tokens_bn[:, 0]), minlength=VOCAB) / g
    exp = _nucleus_probs_np(_last_logits(model, raw[0]), temperature, top_p)
    assert np.all(freq[exp == 0] == 0)
    np.testing.assert_allclose(freq, exp, atol=0.03)


@given(st.integers(0, 2**31 - 1), st.floats(0.05, 1.0))
def test_top_p_filter_matches_numpy(seed, top_p):
    logits = np.random.default_rng(seed).normal(size=(3, 11)).astype(np.float32) * 3
    got = np.asarray(top_p_filter(jnp.asarray(logits), jnp.float32(top_p)))
    for b in range(3):
        exp_keep = _nucleus_probs_np(logits[b].astype(np.float64), 1.0, top_p) > 0
        got_keep = np.isfinite(got[b])
        # float32 cumsum may move a token sitting exactly at the boundary; allow that only
        if not np.array_equal(got_keep, exp_keep):
            p = np.exp(logits[b] - logits[b].max())
            p /= p.sum()
            diff = np.flatnonzero(got_keep != exp_keep)
            mass_before = np.array([p[p > p[i]].sum() for i in diff])
            np.testing.assert_allclose(mass_before, top_p, atol=1e-5)
        np.testing.assert_array_equal(got[b][got_keep], logits[b][got_keep])


def test_bucketed_shapes_limit_recompiles(sampler, prompts):
    toks, mask, _ = prompts
    kw = dict(max_new_tokens=8, greedy=True)
    a = sampler.sample(toks, mask, jax.random.key(0), **kw)
    c0 = sampler.num_compiles
    # a wider left-padded batch (12 columns) falls in the same 16-slot bucket
    wide_t = np.concatenate([np.zeros((3, 5), np.int32), toks], axis=1)
    wide_m = np.concatenate([np.zeros((3, 5), bool), mask], axis=1)
    b = sampler.sample(wide_t, wide_m, jax.random.key(0), stop_sequences=[[VOCAB - 1, 2]],
                       **kw)
    assert sampler.num_compiles == c0
    np.testing.assert_array_equal(a.tokens_bn, b.tokens_bn)
    sampler.sample(toks, mask, jax.random.key(0), max_new_tokens=5, greedy=True)
    assert sampler.num_compiles == c0 + 1


def test_update_weights_uses_new_state(model, sampler, prompts):
    toks, mask, raw = prompts
    other = Qwen2(model.config, rngs=nnx.Rngs(1))
    sampler.sample(toks, mask, jax.random.key(0), max_new_tokens=8, greedy=True)
    c0 = sampler.num_compiles
    sampler.update_weights(other)
    try:
        out = sampler.sample(toks, mask, jax.random.key(0), max_new_tokens=8, greedy=True)
    finally:
        sampler.update_weights(model)
    assert sampler.num_compiles == c0
    assert out.tokens_bn[1].tolist() == reference_greedy(other, raw[1], 8)[0]
    assert out.tokens_bn[1].tolist() != reference_greedy(model, raw[1], 8)[0]


def test_max_prompt_len(model, prompts):
    toks, mask, _ = prompts
    sampler = Sampler(model, pad_id=PAD, eos_id=None, max_prompt_len=6)
    with pytest.raises(ValueError, match="max_prompt_len"):
        sampler.sample(toks, mask, jax.random.key(0), max_new_tokens=2, greedy=True)


@pytest.mark.parametrize("bad,match", [
    (dict(mask=np.array([[True, True, False]])), "LEFT-padded"),
    (dict(mask=np.array([[False, False, False]])), "at least one real token"),
    (dict(tokens=np.array([[1, 2, VOCAB]])), "outside"),
    (dict(temperature=0.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(num_samples=0), "num_samples"),
    (dict(stop_sequences=[[]]), "non-empty"),
])
def test_bad_input_raises(model, bad, match):
    sampler = Sampler(model, pad_id=PAD, eos_id=None)
    args = dict(tokens=np.array([[1, 2, 3]]), mask=np.array([[True, True, True]]),
                max_new_tokens=2)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        sampler.sample(args.pop("tokens"), args.pop("mask"), jax.random.key(0), **args)


def test_live_segments_cover_every_step_with_a_live_prefix():
    assert live_segments(16, 8, 128) == [(0, 8, 24)]
    assert live_segments(16, 8, 4) == [(0, 4, 20), (4, 8, 24)]
    for width, n, bucket in [(16, 40, 8), (64, 300, 128), (5, 3, 2)]:
        segs = live_segments(width, n, bucket)
        assert segs[0][0] == 0 and segs[-1][1] == n
        for (a, end, attend), nxt in zip(segs, segs[1:] + [None]):
            assert width + end <= attend <= width + n  # step end - 1 writes slot width+end-1
            assert attend % bucket == 0 or attend == width + n
            assert nxt is None or nxt[0] == end


def test_bucketed_live_cache_equals_whole_cache(model, sampler, prompts):
    """Decoding over a live prefix bucketed by 4 slots (two while_loops) changes nothing."""
    toks, mask, _ = prompts
    small = Sampler(model, pad_id=PAD, eos_id=None, decode_bucket=4)
    kw = dict(max_new_tokens=8, temperature=1.0)
    a = sampler.sample(toks, mask, jax.random.key(3), **kw)
    b = small.sample(toks, mask, jax.random.key(3), **kw)
    np.testing.assert_array_equal(a.tokens_bn, b.tokens_bn)
    np.testing.assert_allclose(a.logprobs_bn, b.logprobs_bn, atol=1e-5)


def test_prompt_width_is_bucketed_and_capped(model):
    s = Sampler(model, pad_id=PAD, eos_id=None, max_prompt_len=100, prompt_bucket=64)
    assert [s.prompt_width(n) for n in (1, 7, 64, 65, 100)] == [64, 64, 64, 112, 112]
    assert Sampler(model, pad_id=PAD, eos_id=None).prompt_width(7) == 16
    with pytest.raises(ValueError, match="prompt_bucket"):
        Sampler(model, pad_id=PAD, eos_id=None, prompt_bucket=0)
