"""Qwen2 decoder: reference forward, KV-cache decode, padding, dtypes, config, sharding."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import PartitionSpec as P

from recal_jax.models import ModelConfig, Qwen2, param_shardings, shard_model
from recal_jax.models.sharding import logical_to_mesh_rules, make_mesh, partition_spec

SMALL = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2,
                    num_heads=4, num_kv_heads=2, rope_theta=500.0, rms_norm_eps=1e-5,
                    tie_word_embeddings=False)


def randomized(cfg: ModelConfig, seed: int = 0, scale: float = 0.2) -> Qwen2:
    """A model whose every weight (biases and norm scales included) is random."""
    model = Qwen2(cfg, rngs=nnx.Rngs(seed))
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [(1.0 if leaf.ndim == 1 else 0.0) + scale * jax.random.normal(k, leaf.shape)
              for k, leaf in zip(keys, leaves)]
    leaves = [leaf.astype(cfg.param_dtype) for leaf in leaves]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model


def reference_logits(model: Qwen2, tokens_bt, mask_bt) -> np.ndarray:
    """Float64 numpy Qwen2 forward, one row, token and head at a time (from the spec's
    words: RMSNorm, rotate-half RoPE at positions cumsum(mask)-1, GQA with q/k/v bias,
    causal attention over real tokens only, SwiGLU, final norm, lm head). Pad query
    positions are left as NaN: they are never compared."""
    cfg = model.config

    def p(v):
        return np.asarray(v[...], np.float64)

    def layer_params(i):
        """Layer i's weights, sliced from the stacked (leading layer axis) parameters."""
        pick = lambda v: np.asarray(v[...], np.float64)[i]  # noqa: E731
        st = model.layers
        return dict(in_norm=pick(st.input_norm.weight), post_norm=pick(st.post_attn_norm.weight),
                    q=pick(st.attn.q_kernel), k=pick(st.attn.k_kernel), v=pick(st.attn.v_kernel),
                    o=pick(st.attn.o_kernel), qb=pick(st.attn.q_bias), kb=pick(st.attn.k_bias),
                    vb=pick(st.attn.v_bias), gate=pick(st.mlp.gate_kernel),
                    up=pick(st.mlp.up_kernel), down=pick(st.mlp.down_kernel))

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + cfg.rms_norm_eps) * w

    half = cfg.head_dim // 2
    inv_freq = cfg.rope_theta ** (-np.arange(half) * 2.0 / cfg.head_dim)

    def rope(vec, pos):
        a, b = vec[:half], vec[half:]
        cos, sin = np.cos(pos * inv_freq), np.sin(pos * inv_freq)
        return np.concatenate([a * cos - b * sin, b * cos + a * sin])

    tokens_bt, mask_bt = np.asarray(tokens_bt), np.asarray(mask_bt, bool)
    b_size, t_size = tokens_bt.shape
    head_out = p(model.embed).T if cfg.tie_word_embeddings else p(model.lm_head)
    out = np.full((b_size, t_size, cfg.vocab_size), np.nan)
    for b in range(b_size):
        pos = np.maximum(np.cumsum(mask_bt[b]) - 1, 0)
        x = p(model.embed)[tokens_bt[b]]
        for i in range(cfg.num_layers):
            lw = layer_params(i)
            h = rms(x, lw["in_norm"])
            q = np.einsum("td,dhk->thk", h, lw["q"]) + lw["qb"]
            k = np.einsum("td,dhk->thk", h, lw["k"]) + lw["kb"]
            v = np.einsum("td,dhk->thk", h, lw["v"]) + lw["vb"]
            attn = np.zeros_like(q)
            for t in range(t_size):
                visible = [s for s in range(t + 1) if mask_bt[b, s]]
                for head in range(cfg.num_heads):
                    kv = head // (cfg.num_heads // cfg.num_kv_heads)
                    qr = rope(q[t, head], pos[t])
                    scores = np.array([qr @ rope(k[s, kv], pos[s]) for s in visible])
                    scores /= np.sqrt(cfg.head_dim)
                    w = np.exp(scores - scores.max()) if visible else scores
                    w = w / w.sum() if visible else w
                    attn[t, head] = sum(wi * v[s, kv] for wi, s in zip(w, visible))
            x = x + np.einsum("thk,hkd->td", attn, lw["o"])
            h = rms(x, lw["post_norm"])
            gate, up = h @ lw["gate"], h @ lw["up"]
            x = x + (gate / (1 + np.exp(-gate)) * up) @ lw["down"]
        logits = rms(x, p(model.final_norm.weight)) @ head_out
        out[b][mask_bt[b]] = logits[mask_bt[b]]
    return out


FORWARD = nnx.jit(lambda m, tokens, mask: m(tokens, mask))
DECODE = nnx.jit(lambda m, *args: m.decode(*args))


def random_batch(seed, b, t, vocab, pads):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
    mask = np.ones((b, t), bool)
    for row, n in enumerate(pads):
        mask[row, :n] = False
    return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.parametrize("tied", [False, True])
def test_forward_matches_numpy_reference(tied):
    cfg = SMALL.replace(tie_word_embeddings=tied)
    model = randomized(cfg)
    tokens, mask = random_batch(0, 3, 6, cfg.vocab_size, pads=[0, 2, 5])
    logits = FORWARD(model, tokens, mask)
    chex.assert_shape(logits, (3, 6, cfg.vocab_size))
    chex.assert_type(logits, jnp.float32)
    ref = reference_logits(model, tokens, mask)
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(logits)[m], ref[m], atol=2e-4, rtol=1e-4)
    assert np.isfinite(np.asarray(logits)).all()  # pad rows too


def test_pad_rows_finite_and_fully_padded_row():
    model = randomized(SMALL)
    tokens, mask = random_batch(1, 2, 5, SMALL.vocab_size, pads=[5, 3])
    assert np.isfinite(np.asarray(FORWARD(model, tokens, mask))).all()


def test_decode_with_cache_matches_forward_left_padded():
    model = randomized(SMALL, seed=3)
    b, prompt, steps, s = 3, 5, 4, 12
    tokens, mask = random_batch(2, b, prompt + steps, SMALL.vocab_size, pads=[0, 2, 4])
    full = np.asarray(FORWARD(model, tokens, mask))
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)

    cache = model.init_cache(b, s)
    chex.assert_shape([cache.k, cache.v], (SMALL.num_layers, b, s, SMALL.num_kv_heads,
                                           SMALL.head_dim))
    kv_mask = jnp.zeros((b, s), bool).at[:, :prompt].set(mask[:, :prompt])
    decode = DECODE
    logits, cache = decode(model, tokens[:, :prompt], positions[:, :prompt], cache,
                           jnp.int32(0), kv_mask)
    chex.assert_shape(logits, (b, prompt, SMALL.vocab_size))
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(logits)[m[:, :prompt]],
                               full[:, :prompt][m[:, :prompt]], atol=1e-5)
    for j in range(prompt, prompt + steps):  # traced cache_index: one compilation
        kv_mask = kv_mask.at[:, j].set(True)
        logits, cache = decode(model, tokens[:, j:j + 1], positions[:, j:j + 1], cache,
                               jnp.int32(j), kv_mask)
        chex.assert_shape(logits, (b, 1, SMALL.vocab_size))
        np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, j], atol=1e-5)


def test_decode_chunk_after_prefill_and_cache_untouched_elsewhere():
    model = randomized(SMALL, seed=4)
    tokens, mask = random_batch(5, 3, 9, SMALL.vocab_size, pads=[1, 0, 3])
    full = np.asarray(FORWARD(model, tokens, mask))
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    cache = model.init_cache(3, 12)
    kv_mask = jnp.zeros((3, 12), bool).at[:, :5].set(mask[:, :5])
    _, cache = DECODE(model, tokens[:, :5], positions[:, :5], cache, jnp.int32(0), kv_mask)
    kv_mask = kv_mask.at[:, 5:9].set(True)
    logits, cache = DECODE(model, tokens[:, 5:], positions[:, 5:], cache, jnp.int32(5),
                           kv_mask)
    np.testing.assert_allclose(np.asarray(logits), full[:, 5:], atol=1e-5)
    assert not np.asarray(cache.k[:, :, 9:]).any() and not np.asarray(cache.v[:, :, 9:]).any()
    assert np.asarray(cache.k[:, :, :9]).any()


def test_cached_slots_masked_out_are_ignored():
    """Garbage in a slot whose kv_mask is False must not change the logits."""
    model = randomized(SMALL, seed=6)
    tokens, _ = random_batch(7, 3, 5, SMALL.vocab_size, pads=[0, 0, 0])
    positions = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (3, 5))
    clean = model.init_cache(3, 12)
    dirty = clean._replace(k=clean.k.at[:, :, 9].set(7.0), v=clean.v.at[:, :, 9].set(-3.0))
    kv_mask = jnp.zeros((3, 12), bool).at[:, :5].set(True)
    a, _ = DECODE(model, tokens, positions, clean, jnp.int32(0), kv_mask)
    b, _ = DECODE(model, tokens, positions, dirty, jnp.int32(0), kv_mask)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@given(pad=st.integers(0, 6), right=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_padding_invariance(pad, right, seed):
    """A row padded left by `pad` and right by `right` gives the unpadded row's logits."""
    model = _PAD_MODEL
    t = 4
    rng = np.random.default_rng(seed)
    row = rng.integers(0, SMALL.vocab_size, t).astype(np.int32)
    width = 10 + 3  # fixed shape: a single compilation
    tokens = np.full((2, width), 0, np.int32)
    mask = np.zeros((2, width), bool)
    tokens[0, :t], mask[0, :t] = row, True
    tokens[1, pad:pad + t], mask[1, pad:pad + t] = row, True
    tokens[1, :pad] = rng.integers(0, SMALL.vocab_size, pad)  # junk under the pad
    tokens[1, pad + t:pad + t + right] = rng.integers(0, SMALL.vocab_size, right)
    logits = np.asarray(_PAD_FORWARD(model, jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_allclose(logits[1, pad:pad + t], logits[0, :t], atol=1e-5)


_PAD_MODEL = randomized(SMALL, seed=9)
_PAD_FORWARD = nnx.jit(lambda m, t, k: m(t, k))


def test_default_mask_is_all_ones():
    model = randomized(SMALL)
    tokens, mask = random_batch(0, 2, 5, SMALL.vocab_size, pads=[0, 0])
    no_mask = nnx.jit(lambda m, t: m(t))(model, tokens)
    np.testing.assert_allclose(np.asarray(no_mask), np.asarray(FORWARD(model, tokens, mask)),
                               atol=1e-5)


def test_bf16_compute_close_to_fp32():
    f32 = randomized(SMALL, seed=11, scale=0.1)
    tokens, mask = random_batch(3, 2, 6, SMALL.vocab_size, pads=[0, 2])
    ref = np.asarray(FORWARD(f32, tokens, mask))
    for kw in (dict(dtype=jnp.bfloat16), dict(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)):
        cfg = SMALL.replace(**kw)
        model = Qwen2(cfg, rngs=nnx.Rngs(0))
        nnx.update(model, jax.tree.map(lambda x: x.astype(cfg.param_dtype),
                                       nnx.state(f32, nnx.Param)))
        chex.assert_type(model.embed[...], cfg.param_dtype)
        logits = FORWARD(model, tokens, mask)
        chex.assert_type(logits, jnp.float32)
        out = np.asarray(logits)
        m = np.asarray(mask)
        assert np.isfinite(out).all()
        err = np.abs(out[m] - ref[m]).max() / np.abs(ref[m]).max()
        assert err < 0.05, err
        cache = model.init_cache(2, 8)
        chex.assert_type(cache.k, jnp.bfloat16)


def test_decode_validation_errors():
    model = randomized(SMALL)
    tokens = jnp.zeros((2, 3), jnp.int32)
    pos = jnp.zeros((2, 3), jnp.int32)
    cache = model.init_cache(2, 8)
    kv = jnp.ones((2, 8), bool)
    with pytest.raises(ValueError, match="do not fit"):
        model.decode(tokens, pos, cache, 6, kv)
    with pytest.raises(ValueError, match="kv_mask_bs"):
        model.decode(tokens, pos, cache, 0, kv[:, :5])
    with pytest.raises(ValueError, match="positions_bt"):
        model.decode(tokens, pos[:, :2], cache, 0, kv)
    with pytest.raises(ValueError, match="cache k/v shapes"):
        model.decode(tokens, pos, model.init_cache(3, 8), 0, kv)
    with pytest.raises(ValueError, match="integer"):
        model.decode(tokens.astype(jnp.float32), pos, cache, 0, kv)
    with pytest.raises(ValueError, match="cache_index"):
        model.decode(tokens, pos, cache, jnp.zeros(2, jnp.int32), kv)
    with pytest.raises(ValueError, match="2-D"):
        model(jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask_bt"):
        model(tokens, jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="max_len"):
        model.init_cache(2, 0)
    with pytest.raises(ValueError, match="integer batch"):
        model.init_cache(2.5, 8)


# -- config -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (dict(num_heads=4, num_kv_heads=3), "not divisible by num_kv_heads"),
    (dict(hidden_size=30, num_heads=4), "pass head_dim"),  # head_dim re-derived
    (dict(head_dim=7), "must be even"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(num_layers=2.0), "num_layers"),
    (dict(rope_theta=0.0), "rope_theta"),
    (dict(rms_norm_eps=-1.0), "rms_norm_eps"),
    (dict(dtype="int8"), "unsupported dtype"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        SMALL.replace(**bad)


def test_presets():
    tiny = ModelConfig.preset("tiny")
    assert (tiny.vocab_size, tiny.hidden_size, tiny.num_layers, tiny.num_heads,
            tiny.num_kv_heads, tiny.intermediate_size, tiny.head_dim) == (1024, 128, 4, 4, 2,
                                                                           384, 32)
    assert tiny.tie_word_embeddings and tiny.rope_theta == 10000.0
    assert ModelConfig.preset("tiny", num_layers=2).num_layers == 2
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("gpt5")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.preset("tiny", layers=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.hidden_size = 3


@pytest.mark.parametrize("name, billions", [
    # Parameter counts published on the Qwen2.5 model cards.
    ("qwen2.5-0.5b", 0.49), ("qwen2.5-1.5b", 1.54), ("qwen2.5-3b", 3.09), ("qwen2.5-7b", 7.61),
])
def test_qwen25_presets_parameter_count(name, billions):
    cfg = ModelConfig.preset(name)

    def count(layers):
        abstract = nnx.eval_shape(lambda: Qwen2(cfg.replace(num_layers=layers),
                                                rngs=nnx.Rngs(0)))
        return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))

    one, two = count(1), count(2)  # every layer has the same size: extrapolate
    total = one + (cfg.num_layers - 1) * (two - one)
    assert abs(total / 1e9 - billions) < 0.006, total


def test_hf_config_round_trip_v4_and_v5_styles():
    cfg = ModelConfig.preset("qwen2.5-1.5b")
    hf = cfg.to_hf_config()
    assert hf["model_type"] == "qwen2" and hf["architectures"] == ["Qwen2ForCausalLM"]
    assert ModelConfig.from_hf_config(hf) == cfg
    v4 = {k: v for k, v in hf.items() if k != "rope_parameters"}
    assert ModelConfig.from_hf_config(v4).rope_theta == 1e6
    v5 = {k: v for k, v in hf.items() if k not in ("rope_theta", "head_dim")}
    v5["rope_parameters"] = {"rope_type": "default", "rope_theta": 1234.0}
    got = ModelConfig.from_hf_config(v5)
    assert got.rope_theta == 1234.0 and got.head_dim == 128
    no_kv = {k: v for k, v in v5.items() if k != "num_key_value_heads"}
    assert ModelConfig.from_hf_config(no_kv).num_kv_heads == cfg.num_heads


@pytest.mark.parametrize("patch, match", [
    (dict(model_type="llama"), "model_type"),
    (dict(use_sliding_window=True), "sliding_window"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1.0}), "rope type"),
    (dict(layer_types=["full_attention", "sliding_attention"]), "full-attention"),
    (dict(num_attention_heads=12, num_key_value_heads=5), "not divisible"),
])
def test_hf_config_errors(patch, match):
    hf = SMALL.to_hf_config()
    hf.update(patch)
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf_config(hf)
    hf = SMALL.to_hf_config()
    del hf["vocab_size"]
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig.from_hf_config(hf)


# -- sharding ---------------------------------------------------------------------------

def test_partition_spec_rules():
    mesh_shape = {"data": 1, "fsdp": 4, "tensor": 2}
    assert logical_to_mesh_rules(True)["mlp"] == "tensor"
    assert logical_to_mesh_rules(False)["mlp"] is None
    # fsdp goes on the largest remaining dimension, tensor on the named one.
    assert partition_spec((128, 384), ("embed", "mlp"), mesh_shape, True) == P("fsdp", "tensor")
    assert partition_spec((128, 384), ("embed", "mlp"), mesh_shape, False) == P(None, "fsdp")
    assert partition_spec((1024, 128), ("vocab", "embed"), mesh_shape, True) == P("tensor", "fsdp")
    # 3 kv heads do not split over tensor=2: replicated on that dim.
    assert partition_spec((128, 3, 32), ("embed", "heads", "kv"), mesh_shape, True) == \
        P("fsdp", None, None)
    assert partition_spec((6,), (None,), mesh_shape, True) == P(None)
    with pytest.raises(ValueError, match="unknown logical axes"):
        partition_spec((4,), ("batch",), mesh_shape, True)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
@pytest.mark.parametrize("decode", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_sharded_forward_and_decode_match_single_device(decode):
    model = randomized(SMALL, seed=12)
    tokens, mask = random_batch(4, 4, 6, SMALL.vocab_size, pads=[0, 1, 2, 3])
    ref = np.asarray(FORWARD(model, tokens, mask))
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    kv_mask = jnp.zeros((4, 8), bool).at[:, :6].set(mask)
    if decode:
        ref_dec, ref_cache = DECODE(model, tokens, positions, model.init_cache(4, 8),
                                    jnp.int32(0), kv_mask)
    mesh = make_mesh(fsdp=4, tensor=2)
    shardings = param_shardings(model, mesh)
    # the stacked layer axis is never sharded
    assert shardings["layers"]["mlp"]["gate_kernel"].get_value().spec == \
        P(None, "fsdp", "tensor")
    shard_model(model, mesh)
    # vocab 97 divides neither axis, so only the embed dim (32) is split, over fsdp.
    assert model.embed[...].sharding.spec == P(None, "fsdp")
    assert model.layers.attn.q_kernel[...].sharding.spec == P(None, "fsdp", "tensor", None)
    out = FORWARD(model, tokens, mask)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    if decode:
        dec, cache = DECODE(model, tokens, positions, model.init_cache(4, 8), jnp.int32(0),
                            kv_mask)
        np.testing.assert_allclose(np.asarray(dec), np.asarray(ref_dec), atol=1e-5)
        np.testing.assert_allclose(np.asarray(cache.k), np.asarray(ref_cache.k), atol=1e-5)
    with pytest.raises(ValueError, match="AxisType.Auto"):
        param_shardings(model, jax.make_mesh((8,), ("fsdp",),
                                             axis_types=(jax.sharding.AxisType.Explicit,)))


def test_remat_gives_same_gradients_and_hidden_split_matches():
    plain = randomized(SMALL, seed=13)
    remat = Qwen2(SMALL.replace(remat=True), rngs=nnx.Rngs(0))
    nnx.update(remat, nnx.state(plain, nnx.Param))
    tokens, mask = random_batch(14, 3, 6, SMALL.vocab_size, pads=[0, 2, 1])

    def loss(model):
        return jnp.mean(jax.nn.log_softmax(model(tokens, mask))[..., 0] * mask)

    grads = [nnx.jit(nnx.grad(loss))(m) for m in (plain, remat)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    graphdef, state = nnx.split(remat)
    jaxpr = str(jax.make_jaxpr(lambda s: loss(nnx.merge(graphdef, s)))(state))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    h = nnx.jit(lambda m, t, k: m.hidden(t, k))(plain, tokens, mask)
    chex.assert_shape(h, (3, 6, SMALL.hidden_size))
    np.testing.assert_allclose(np.asarray(plain.lm_logits(h)),
                               np.asarray(FORWARD(plain, tokens, mask)), atol=1e-5)
