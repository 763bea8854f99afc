"""Chunked token log-probs / entropy == a plain unchunked log-softmax, values and gradients."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recal_jax.models import ModelConfig, Qwen2
from recal_jax.training.train_step import (
    chunk_len_for, chunked_token_logprobs, compute_logprobs, token_logprobs,
)

B, T, D, V = 3, 11, 8, 13


def plain_logprobs(logits_btv, tokens_bt):
    """Unchunked reference: full [B, T, V] log_softmax; logp[:, t] scores token t with the
    logits at t - 1; entropy -sum p log p; position 0 is 0."""
    logq = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logq, tokens_bt[:, 1:, None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logq) * logq, axis=-1)
    zero = jnp.zeros((tokens_bt.shape[0], 1), jnp.float32)
    return jnp.concatenate([zero, picked], 1), jnp.concatenate([zero, ent], 1)


def problem(seed=0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(D, V)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(2, B, T)), jnp.float32)  # a loss mixing both outputs
    return h, w, tokens, weights


@pytest.mark.parametrize("chunk_len", [1, 3, 4, 10, 64])  # 3, 4: T-1 = 10 not a multiple
def test_values_and_gradients_match_unchunked(chunk_len):
    h, w, tokens, weights = problem()

    def loss(h, w, chunked):
        logits_fn = lambda x: jnp.einsum("bcd,dv->bcv", x, w)  # noqa: E731
        if chunked:
            logp, ent = chunked_token_logprobs(logits_fn, h, tokens, chunk_len)
        else:
            logp, ent = plain_logprobs(logits_fn(h), tokens)
        return jnp.sum(weights[0] * logp + weights[1] * ent), (logp, ent)

    (val_c, (logp_c, ent_c)), grads_c = jax.value_and_grad(loss, (0, 1), has_aux=True)(h, w, True)
    (val_p, (logp_p, ent_p)), grads_p = jax.value_and_grad(loss, (0, 1), has_aux=True)(h, w, False)
    chex.assert_shape([logp_c, ent_c], (B, T))
    np.testing.assert_allclose(logp_c, logp_p, atol=1e-5)
    np.testing.assert_allclose(ent_c, ent_p, atol=1e-5)
    np.testing.assert_allclose(val_c, val_p, atol=1e-4, rtol=1e-6)
    for gc, gp in zip(grads_c, grads_p):
        np.testing.assert_allclose(gc, gp, atol=1e-5)
    assert float(jnp.abs(grads_p[0]).max()) > 1e-2  # a non-trivial gradient was compared


def test_agrees_with_token_logprobs_and_no_full_logits_in_jaxpr():
    h, w, tokens, _ = problem(1)
    logits_fn = lambda x: jnp.einsum("bcd,dv->bcv", x, w)  # noqa: E731
    got = chunked_token_logprobs(logits_fn, h, tokens, 4)
    want = token_logprobs(logits_fn(h), tokens)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda h: chunked_token_logprobs(logits_fn, h, tokens, 4))(h))
    assert f"{B},{T},{V}]" not in jaxpr.replace(" ", "")  # never [B, T, V]
    assert f"{B},4,{V}]" in jaxpr.replace(" ", "")


def test_model_gradients_match_full_logits():
    """Through the real model: d(sum logp) / d params equals the unchunked computation."""
    cfg = ModelConfig.preset("tiny", vocab_size=61, hidden_size=32, intermediate_size=48,
                             num_layers=2, num_heads=4, num_kv_heads=2)
    model = Qwen2(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, 61, (4, 9)), jnp.int32)
    mask = jnp.asarray(np.arange(9)[None, :] < np.array([[9], [7], [5], [9]]))

    def loss(p, chunked):
        m = nnx.merge(graphdef, p)
        h = m.hidden(tokens, mask)
        if chunked:
            logp, ent = chunked_token_logprobs(m.lm_logits, h, tokens, 3)
        else:
            logp, ent = plain_logprobs(m.lm_logits(h), tokens)
        return jnp.sum(logp * mask) + 0.5 * jnp.sum(ent * mask)

    g_c = jax.jit(jax.grad(lambda p: loss(p, True)))(params)
    g_p = jax.jit(jax.grad(lambda p: loss(p, False)))(params)
    chex.assert_trees_all_close(g_c, g_p, atol=1e-5, rtol=0)
    logp, _ = compute_logprobs(graphdef, params, tokens, mask)
    ref, _ = plain_logprobs(model(tokens, mask), tokens)
    np.testing.assert_allclose(logp, ref, atol=1e-5)


def test_chunk_len_for_and_errors():
    assert chunk_len_for(32, 2048) == 64
    assert chunk_len_for(4096, 2048) == 1
    with pytest.raises(ValueError, match="chunk_len"):
        h, w, tokens, _ = problem()
        chunked_token_logprobs(lambda x: x @ w, h, tokens, 0)
