"""Building blocks of the Qwen2 decoder: RMSNorm, RoPE, GQA attention, SwiGLU MLP.

Every parameter carries its logical axis names in the `logical_axes` metadata
(names: 'layers' (the stacked-layer axis, never sharded), 'embed', 'mlp', 'heads',
'kv' (= head_dim), 'vocab', None = never tensor-sharded); `recal_jax.models.sharding`
maps them to mesh axes. A module built with `stack=L` holds L layers' parameters, each
with a leading 'layers' axis; the model runs one layer at a time on a slice of that
stack (see `Qwen2`), so the per-layer code below never sees the stack axis.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from recal_jax.models.config import ModelConfig

_INIT_STD = 0.02


def weight_matmul(x: jax.Array, w: jax.Array, in_dims: int = 1) -> jax.Array:
    """x[..., *in] @ w[*in, *out] -> [..., *out]: contracts x's last `in_dims` dims with w's
    first `in_dims` (a weight of the model: no batch dims).

    On CPU as one 2-D GEMM, [rows, prod(in)] @ [prod(in), prod(out)], between reshapes:
    XLA:CPU runs the backward of a dot with several leading dims (e.g. [B, T, D] x [D, F])
    through slower kernels than a plain GEMM's (measured 1.5x on the tiny policy's train
    step). Elsewhere the dot_general as written (what the GPU figures were measured with).
    """
    if jax.default_backend() != "cpu":
        return jnp.tensordot(x, w, axes=in_dims)
    lead, inner, out = x.shape[:x.ndim - in_dims], math.prod(x.shape[x.ndim - in_dims:]), w.shape[in_dims:]
    return (x.reshape(-1, inner) @ w.reshape(inner, math.prod(out))).reshape(*lead, *out)


def param(rngs: nnx.Rngs | None, shape: tuple[int, ...], dtype, axes: tuple, init: str = "normal",
          stack: int | None = None):
    """An nnx.Param of `shape` with logical axis names `axes` (one per dim); with `stack`,
    of shape (stack, *shape) with axes ('layers', *axes)."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {shape}")
    if stack is not None:
        shape, axes = (stack, *shape), ("layers", *axes)
    if init == "normal":
        value = _INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    elif init == "zeros":
        value = jnp.zeros(shape, jnp.float32)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value.astype(dtype), logical_axes=tuple(axes))


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32 (as HF Qwen2RMSNorm)."""

    def __init__(self, dim: int, eps: float, param_dtype, dtype, *, rngs: nnx.Rngs,
                 stack: int | None = None):
        self.weight = param(rngs, (dim,), param_dtype, (None,), init="ones", stack=stack)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        x = x_btd.astype(jnp.float32)
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        x = x * jax.lax.rsqrt(var + self.eps)
        return (self.weight[...].astype(jnp.float32) * x).astype(self.dtype)


def rope_cos_sin(positions_bt: jax.Array, head_dim: int, theta: float):
    """cos, sin of shape [B, T, head_dim] (frequencies repeated twice, HF convention)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs_btf = positions_bt.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs_btf, freqs_btf], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_bthd: jax.Array, cos_btd: jax.Array, sin_btd: jax.Array) -> jax.Array:
    """Rotate-half RoPE: x * cos + rotate_half(x) * sin, in float32."""
    x = x_bthd.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_btd[:, :, None, :] + rotated * sin_btd[:, :, None, :]
    return out.astype(x_bthd.dtype)


def dot_attention(q_bthd: jax.Array, k_bskd: jax.Array, v_bskd: jax.Array, *, impl: str,
                  is_causal: bool = False, kv_lengths_b: jax.Array | None = None,
                  mask_bts: jax.Array | None = None) -> jax.Array:
    """GQA softmax attention through jax.nn.dot_product_attention -> [B, T, H, Dh].

    q: [B, T, H, Dh], k/v: [B, S, K, Dh] with H % K == 0 (query head h uses kv head
    h // (H // K); K/V are never repeated). Query t sees key s when all given conditions
    hold: is_causal (s <= t), kv_lengths_b (s < kv_lengths_b[b]), mask_bts[b, t, s].
    impl: "xla" or "cudnn". Softmax in float32; with impl "xla" a row that sees no key
    gets a finite uniform average. The output is named "attn_out" for remat policies.
    """
    if mask_bts is not None:
        mask_bts = mask_bts[:, None, :, :]
    lengths = None if kv_lengths_b is None else kv_lengths_b.astype(jnp.int32)
    out_bthd = jax.nn.dot_product_attention(
        q_bthd.astype(k_bskd.dtype), k_bskd, v_bskd, mask=mask_bts, is_causal=is_causal,
        key_value_seq_lengths=lengths, implementation=impl)
    return checkpoint_name(out_bthd, "attn_out")


def causal_attention(q_bthd: jax.Array, k_btkd: jax.Array, v_btkd: jax.Array,
                     kv_lengths_b: jax.Array, *, impl: str, query_chunk: int = 0) -> jax.Array:
    """Causal self-attention of right-padded rows (key s < kv_lengths_b[b]) -> [B, T, H, Dh].

    impl "cudnn", or query_chunk 0 / >= T: one dot_attention call (is_causal plus key
    lengths). impl "xla" with 0 < query_chunk < T: lax.scan over blocks of query_chunk
    queries, each rematerialised, so that the float32 scores exist for one block at a time
    ([B, H, query_chunk, T] rather than [B, H, T, T]); the same values.
    """
    t = q_bthd.shape[1]
    if impl != "xla" or not 0 < query_chunk < t:
        return dot_attention(q_bthd, k_btkd, v_btkd, impl=impl, is_causal=True,
                             kv_lengths_b=kv_lengths_b)
    key_s = jnp.arange(t, dtype=jnp.int32)
    visible_bs = key_s[None, :] < kv_lengths_b.astype(jnp.int32)[:, None]

    def mask_bcs(query_c):
        return visible_bs[:, None, :] & (key_s[None, None, :] <= query_c[None, :, None])

    return _query_blocks(q_bthd, k_btkd, v_btkd, mask_bcs, query_chunk)


def prompt_completion_attention(q_bchd: jax.Array, k_bckd: jax.Array, v_bckd: jax.Array,
                                k_upkd: jax.Array, v_upkd: jax.Array, prompt_len_u: jax.Array,
                                *, query_chunk: int = 0) -> jax.Array:
    """Attention of completion tokens over their prompt and their own earlier tokens -> [B, C, H, Dh].

    B = U * G rows; row b continues prompt u = b // G. q/k/v_bc*: the completions' own
    projections (right-padded, so a real token never sees a pad); k/v_up*: the prompts'
    (right-padded: key s is real when s < prompt_len_u[u]). Completion query c sees prompt
    keys s < prompt_len_u[u] and completion keys c' <= c: the attention of row b's query in
    the concatenated sequence [prompt_u[:len], completion_b] (a test checks), with the
    prompt's keys computed once per group. Masked XLA attention (any backend); with
    0 < query_chunk < C, in rematerialised blocks of queries as causal_attention.
    """
    b, c = q_bchd.shape[:2]
    u, p = k_upkd.shape[:2]
    g = b // u
    k_bskd = jnp.concatenate([jnp.repeat(k_upkd, g, axis=0).astype(k_bckd.dtype), k_bckd], axis=1)
    v_bskd = jnp.concatenate([jnp.repeat(v_upkd, g, axis=0).astype(v_bckd.dtype), v_bckd], axis=1)
    key_s = jnp.arange(p + c, dtype=jnp.int32)
    prompt_len_b = jnp.repeat(prompt_len_u.astype(jnp.int32), g)
    prompt_bs = key_s[None, :] < prompt_len_b[:, None]  # prompt_len <= P: only prompt slots

    def mask_bcs(query_c):
        own_cs = (key_s[None, :] >= p) & (key_s[None, :] - p <= query_c[:, None])
        return prompt_bs[:, None, :] | own_cs[None, :, :]

    if not 0 < query_chunk < c:
        return dot_attention(q_bchd, k_bskd, v_bskd, impl="xla",
                             mask_bts=mask_bcs(jnp.arange(c, dtype=jnp.int32)))
    return _query_blocks(q_bchd, k_bskd, v_bskd, mask_bcs, query_chunk)


def _query_blocks(q_bthd, k_bskd, v_bskd, mask_fn, query_chunk: int) -> jax.Array:
    """Masked XLA attention over blocks of `query_chunk` queries (lax.scan, each block
    rematerialised); mask_fn(query_indices_c) -> bool[B, c, S]. -> [B, T, H, Dh]."""
    b, t, h, d = q_bthd.shape
    n = -(-t // query_chunk)
    q_nbchd = jnp.pad(q_bthd, ((0, 0), (0, n * query_chunk - t), (0, 0), (0, 0)))
    q_nbchd = q_nbchd.reshape(b, n, query_chunk, h, d).swapaxes(0, 1)

    @jax.checkpoint
    def block(q_bchd, start):
        query_c = start + jnp.arange(query_chunk, dtype=jnp.int32)
        return dot_attention(q_bchd, k_bskd, v_bskd, impl="xla", mask_bts=mask_fn(query_c))

    starts_n = jnp.arange(n, dtype=jnp.int32) * query_chunk
    _, out_nbchd = jax.lax.scan(lambda _, xs: (None, block(*xs)), None, (q_nbchd, starts_n))
    return out_nbchd.swapaxes(0, 1).reshape(b, n * query_chunk, h, d)[:, :t]


class Attention(nnx.Module):
    """GQA self-attention with q/k/v bias and no output bias (Qwen2)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stack: int | None = None):
        d, h, k, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd, n = cfg.param_dtype, stack
        self.q_kernel = param(rngs, (d, h, dh), pd, ("embed", "heads", "kv"), stack=n)
        self.k_kernel = param(rngs, (d, k, dh), pd, ("embed", "heads", "kv"), stack=n)
        self.v_kernel = param(rngs, (d, k, dh), pd, ("embed", "heads", "kv"), stack=n)
        self.o_kernel = param(rngs, (h, dh, d), pd, ("heads", "kv", "embed"), stack=n)
        if cfg.qkv_bias:
            self.q_bias = param(rngs, (h, dh), pd, ("heads", "kv"), init="zeros", stack=n)
            self.k_bias = param(rngs, (k, dh), pd, ("heads", "kv"), init="zeros", stack=n)
            self.v_bias = param(rngs, (k, dh), pd, ("heads", "kv"), init="zeros", stack=n)
        self.qkv_bias = cfg.qkv_bias
        self.head_dim = dh
        self.rope_theta = cfg.rope_theta
        self.dtype = cfg.dtype

    def _project(self, x_btd, kernel, bias):
        out = weight_matmul(x_btd, kernel[...].astype(self.dtype))
        if bias is not None:
            out = out + bias[...].astype(self.dtype)
        return out

    def qkv(self, x_btd: jax.Array, positions_bt: jax.Array):
        """Rotated queries [B,T,H,Dh], rotated keys and values [B,T,K,Dh]."""
        bias = (lambda name: getattr(self, name)) if self.qkv_bias else (lambda name: None)
        q = self._project(x_btd, self.q_kernel, bias("q_bias"))
        k = self._project(x_btd, self.k_kernel, bias("k_bias"))
        v = self._project(x_btd, self.v_kernel, bias("v_bias"))
        cos, sin = rope_cos_sin(positions_bt, self.head_dim, self.rope_theta)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def output(self, attn_bthd: jax.Array) -> jax.Array:
        return weight_matmul(attn_bthd, self.o_kernel[...].astype(self.dtype), in_dims=2)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stack: int | None = None):
        d, f, pd = cfg.hidden_size, cfg.intermediate_size, cfg.param_dtype
        self.gate_kernel = param(rngs, (d, f), pd, ("embed", "mlp"), stack=stack)
        self.up_kernel = param(rngs, (d, f), pd, ("embed", "mlp"), stack=stack)
        self.down_kernel = param(rngs, (f, d), pd, ("mlp", "embed"), stack=stack)
        self.dtype = cfg.dtype

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        dt = self.dtype
        gate = weight_matmul(x_btd, self.gate_kernel[...].astype(dt))
        up = weight_matmul(x_btd, self.up_kernel[...].astype(dt))
        return weight_matmul(jax.nn.silu(gate) * up, self.down_kernel[...].astype(dt))


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). With `stack=L`, the
    parameters of L such blocks (leading 'layers' axis); call a slice, not the stack."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stack: int | None = None):
        d, eps, pd, dt = cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype, cfg.dtype
        self.input_norm = RMSNorm(d, eps, pd, dt, rngs=rngs, stack=stack)
        self.attn = Attention(cfg, rngs=rngs, stack=stack)
        self.post_attn_norm = RMSNorm(d, eps, pd, dt, rngs=rngs, stack=stack)
        self.mlp = MLP(cfg, rngs=rngs, stack=stack)

    def __call__(self, x_btd, positions_bt, attend_fn):
        """`attend_fn(q_bthd, k_btkd, v_btkd) -> (attn_bthd, aux)` attends the queries to
        the new keys themselves or to an updated cache; aux is passed through."""
        q, k, v = self.attention_inputs(x_btd, positions_bt)
        attn_bthd, aux = attend_fn(q, k, v)
        return self.finish(x_btd, attn_bthd), aux

    def attention_inputs(self, x_btd, positions_bt):
        """The block's first half up to the attention: rotated q [B,T,H,Dh], k and v [B,T,K,Dh]."""
        return self.attn.qkv(self.input_norm(x_btd), positions_bt)

    def finish(self, x_btd, attn_bthd):
        """The block's second half: the attention output added to x, then the MLP."""
        x_btd = x_btd + self.attn.output(attn_bthd)
        return x_btd + self.mlp(self.post_attn_norm(x_btd))
