"""dot_product_attention-based GQA attention vs a plain einsum reference; decode over a
bucketed live cache prefix; scanned vs unrolled layers; remat policies."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recal_jax.models import ModelConfig, Qwen2
from recal_jax.models.config import REMAT_POLICIES
from recal_jax.models.layers import causal_attention, dot_attention

CFG = ModelConfig(vocab_size=89, hidden_size=32, intermediate_size=48, num_layers=3,
                  num_heads=4, num_kv_heads=2, rope_theta=500.0, tie_word_embeddings=False)


def einsum_attention(q_bthd, k_bskd, v_bskd, mask_bts):
    """The plain reference: f32 scores [B, K, G, T, S] with a dense bool mask, a masked
    score of -1e30 (a row that sees nothing averages uniformly), K/V shared by G heads."""
    b, t, h, d = q_bthd.shape
    k_heads = k_bskd.shape[2]
    q = q_bthd.reshape(b, t, k_heads, h // k_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k_bskd,
                        preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(d))
    scores = jnp.where(mask_bts[:, None, None], scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bskd.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v_bskd).reshape(b, t, h, d)


def qkv(seed, b=3, t=6, s=6, h=4, k=2, d=8):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=shape), jnp.float32)
                 for shape in ((b, t, h, d), (b, s, k, d), (b, s, k, d)))


def test_causal_with_key_lengths_matches_reference():
    q, k, v = qkv(0)
    lengths = jnp.asarray([6, 4, 0], jnp.int32)  # full row, right-padded row, empty row
    got = dot_attention(q, k, v, impl="xla", is_causal=True, kv_lengths_b=lengths)
    mask = (jnp.tril(jnp.ones((6, 6), bool))[None]
            & (jnp.arange(6)[None, None, :] < lengths[:, None, None]))
    np.testing.assert_allclose(got, einsum_attention(q, k, v, mask), atol=1e-5)
    assert np.isfinite(np.asarray(got)).all()


def test_dense_mask_gqa_matches_reference_and_no_repeat():
    q, k, v = qkv(1, t=2, s=7)
    mask = jnp.asarray(np.random.default_rng(2).uniform(size=(3, 2, 7)) < 0.6)
    got = dot_attention(q, k, v, impl="xla", mask_bts=mask)
    chex.assert_shape(got, q.shape)
    np.testing.assert_allclose(got, einsum_attention(q, k, v, mask), atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: dot_attention(q, k, v, impl="xla",
                                                             mask_bts=mask))(q, k, v))
    assert "3,7,4,8]" not in jaxpr.replace(" ", "")  # K/V never repeated to H heads


def test_bf16_close_to_reference():
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv(3))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((6, 6), bool)), (3, 6, 6))
    got = dot_attention(q, k, v, impl="xla", is_causal=True).astype(jnp.float32)
    want = einsum_attention(q, k, v, mask).astype(jnp.float32)
    np.testing.assert_allclose(got, want, atol=3e-2)


@pytest.mark.parametrize("chunk", [3, 4, 16])  # 3 does not divide T = 10
def test_query_chunked_causal_attention_values_and_gradients(chunk):
    q, k, v = qkv(4, t=10, s=10)
    lengths = jnp.asarray([10, 7, 1], jnp.int32)
    mask = (jnp.tril(jnp.ones((10, 10), bool))[None]
            & (jnp.arange(10)[None, None, :] < lengths[:, None, None]))
    real = np.arange(10)[None] < np.asarray(lengths)[:, None]  # pad queries: meaningless
    cot = jnp.asarray(np.random.default_rng(5).normal(size=q.shape), jnp.float32)
    cot = cot * real[:, :, None, None]

    def chunked(q, k, v):
        return causal_attention(q, k, v, lengths, impl="xla", query_chunk=chunk)

    def reference(q, k, v):
        return einsum_attention(q, k, v, mask)

    np.testing.assert_allclose(np.asarray(chunked(q, k, v))[real],
                               np.asarray(reference(q, k, v))[real], atol=1e-5)
    grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cot), (0, 1, 2))(q, k, v)
             for f in (chunked, reference)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert float(jnp.abs(grads[1][1]).max()) > 1e-2


def randomized(cfg, seed=0):
    model = Qwen2(cfg, rngs=nnx.Rngs(seed))
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    nnx.update(model, jax.tree.unflatten(treedef, [
        leaf + 0.2 * jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves)]))
    return model


def test_decode_attend_len_prefix_equals_whole_cache():
    model = randomized(CFG, 4)
    rng = np.random.default_rng(5)
    b, prompt, s = 2, 4, 16  # two chunks of 4 tokens: one compile per attend_len
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (b, prompt + 4)), jnp.int32)
    kv_mask = jnp.zeros((b, s), bool).at[:, :prompt + 4].set(True).at[1, :2].set(False)
    positions = jnp.maximum(jnp.cumsum(kv_mask[:, :prompt + 4], axis=1) - 1, 0)
    dirty = model.init_cache(b, s)
    dirty = dirty._replace(k=dirty.k.at[:, :, 12:].set(5.0))  # garbage beyond the live prefix

    def run(attend_len, cache):
        fn = nnx.jit(lambda m, *a: m.decode(*a, attend_len=attend_len))
        out1, cache = fn(model, tokens[:, :prompt], positions[:, :prompt], cache,
                         jnp.int32(0), kv_mask)
        out2, cache = fn(model, tokens[:, prompt:], positions[:, prompt:], cache,
                         jnp.int32(prompt), kv_mask)
        return np.concatenate([out1, out2], axis=1), cache

    full, _ = run(None, model.init_cache(b, s))
    short, cache = run(8, dirty)
    real = np.asarray(kv_mask[:, :prompt + 4])  # pad queries (see nothing) are meaningless
    np.testing.assert_allclose(short[real], full[real], atol=1e-5)
    assert float(jnp.abs(cache.k[:, :, 8:12]).max()) == 0.0  # untouched beyond the writes
    with pytest.raises(ValueError, match="attend_len"):
        model.decode(tokens[:, :3], positions[:, :3], cache, 6, kv_mask, attend_len=8)
    with pytest.raises(ValueError, match="attend_len"):
        model.decode(tokens[:, :3], positions[:, :3], cache, 0, kv_mask, attend_len=17)


def test_unrolled_layers_equal_scanned():
    scanned = randomized(CFG, 6)
    unrolled = Qwen2(CFG.replace(scan_layers=False), rngs=nnx.Rngs(0))
    nnx.update(unrolled, nnx.state(scanned, nnx.Param))
    rng = np.random.default_rng(7)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 7)), jnp.int32)
    mask = jnp.asarray(np.arange(7)[None] >= np.array([[0], [3]]))
    fwd = nnx.jit(lambda m, t, k: m(t, k))
    np.testing.assert_allclose(fwd(unrolled, tokens, mask), fwd(scanned, tokens, mask),
                               atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda s: nnx.merge(nnx.graphdef(scanned), s)(tokens))(
        nnx.state(scanned)))
    assert "scan" in jaxpr


@pytest.mark.parametrize("policy", [
    "full", "save_dots", *(pytest.param(p, marks=pytest.mark.slow)
                           for p in sorted(REMAT_POLICIES) if p not in ("full", "save_dots"))])
def test_remat_policies_same_gradients(policy):
    plain = randomized(CFG, 8)
    model = Qwen2(CFG.replace(remat=policy), rngs=nnx.Rngs(0))
    nnx.update(model, nnx.state(plain, nnx.Param))
    rng = np.random.default_rng(9)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 6)), jnp.int32)

    def loss(m):
        return jnp.mean(jax.nn.log_softmax(m(tokens))[..., 1])

    want = nnx.jit(nnx.grad(loss))(plain)
    got = nnx.jit(nnx.grad(loss))(model)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
    graphdef, state = nnx.split(model)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda s: loss(nnx.merge(graphdef, s))))(state))
    assert ("checkpoint" in jaxpr or "remat" in jaxpr) == (policy != "none")


def test_config_values():
    assert CFG.replace(remat=True).remat == "full"
    assert CFG.replace(remat=False).remat == "none"
    assert CFG.remat == "none" and CFG.scan_layers and CFG.attention_impl == "auto"
    assert CFG.resolved_attention_impl() == ("cudnn" if False else "xla")  # f32 on CPU
    assert CFG.replace(attention_impl="cudnn").resolved_attention_impl() == "cudnn"
    with pytest.raises(ValueError, match="ModelConfig.remat 'dots'"):
        CFG.replace(remat="dots")
    with pytest.raises(ValueError, match="attention_impl 'flash'"):
        CFG.replace(attention_impl="flash")
    with pytest.raises(ValueError, match="scan_layers"):
        CFG.replace(scan_layers=1)
