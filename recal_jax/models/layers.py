"""Building blocks of the Qwen2 decoder: RMSNorm, RoPE, GQA attention, SwiGLU MLP.

Every parameter carries its logical axis names in the `logical_axes` metadata
(names: 'embed', 'mlp', 'heads', 'kv' (= head_dim), 'vocab', None = never sharded);
`recal_jax.models.sharding` maps them to mesh axes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from recal_jax.models.config import ModelConfig

_INIT_STD = 0.02
_MASK_VALUE = -1e30  # finite, so fully masked rows give a uniform softmax instead of NaN


def param(rngs: nnx.Rngs | None, shape: tuple[int, ...], dtype, axes: tuple, init: str = "normal"):
    """An nnx.Param of `shape` with logical axis names `axes` (one per dim)."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes} do not match shape {shape}")
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

    def __init__(self, dim: int, eps: float, param_dtype, dtype, *, rngs: nnx.Rngs):
        self.weight = param(rngs, (dim,), param_dtype, (None,), init="ones")
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


def grouped_attention(q_bthd, k_bskd, v_bskd, mask_bts) -> jax.Array:
    """Softmax attention with GQA; query head h uses kv head h // (H // K).

    q: [B, T, H, Dh], k/v: [B, S, K, Dh], mask: bool [B, T, S] -> [B, T, H, Dh].
    Scores and softmax are float32; a row with no visible key gets a uniform average.
    """
    b, t, h, d = q_bthd.shape
    k_heads = k_bskd.shape[2]
    q_btkgd = q_bthd.reshape(b, t, k_heads, h // k_heads, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q_btkgd, k_bskd,
                        preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(d))
    scores = jnp.where(mask_bts[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bskd.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v_bskd)
    return out.reshape(b, t, h, d)


class Attention(nnx.Module):
    """GQA self-attention with q/k/v bias and no output bias (Qwen2)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, k, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pd = cfg.param_dtype
        self.q_kernel = param(rngs, (d, h, dh), pd, ("embed", "heads", "kv"))
        self.k_kernel = param(rngs, (d, k, dh), pd, ("embed", "heads", "kv"))
        self.v_kernel = param(rngs, (d, k, dh), pd, ("embed", "heads", "kv"))
        self.o_kernel = param(rngs, (h, dh, d), pd, ("heads", "kv", "embed"))
        if cfg.qkv_bias:
            self.q_bias = param(rngs, (h, dh), pd, ("heads", "kv"), init="zeros")
            self.k_bias = param(rngs, (k, dh), pd, ("heads", "kv"), init="zeros")
            self.v_bias = param(rngs, (k, dh), pd, ("heads", "kv"), init="zeros")
        self.qkv_bias = cfg.qkv_bias
        self.head_dim = dh
        self.rope_theta = cfg.rope_theta
        self.dtype = cfg.dtype

    def _project(self, x_btd, kernel, bias):
        out = jnp.einsum("btd,dhk->bthk", x_btd, kernel[...].astype(self.dtype))
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
        return jnp.einsum("bthk,hkd->btd", attn_bthd, self.o_kernel[...].astype(self.dtype))


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, pd = cfg.hidden_size, cfg.intermediate_size, cfg.param_dtype
        self.gate_kernel = param(rngs, (d, f), pd, ("embed", "mlp"))
        self.up_kernel = param(rngs, (d, f), pd, ("embed", "mlp"))
        self.down_kernel = param(rngs, (f, d), pd, ("mlp", "embed"))
        self.dtype = cfg.dtype

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        dt = self.dtype
        gate = x_btd @ self.gate_kernel[...].astype(dt)
        up = x_btd @ self.up_kernel[...].astype(dt)
        return (jax.nn.silu(gate) * up) @ self.down_kernel[...].astype(dt)


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype,
                                  cfg.dtype, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype,
                                      cfg.dtype, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_btd, positions_bt, mask_bts, kv_fn):
        """`kv_fn(k_btkd, v_btkd) -> (keys_bskd, values_bskd, aux)` picks what the queries
        attend to (the new keys themselves, or the updated cache); aux is passed through."""
        q, k, v = self.attn.qkv(self.input_norm(x_btd), positions_bt)
        keys, values, aux = kv_fn(k, v)
        attn = grouped_attention(q, keys, values, mask_bts)
        x_btd = x_btd + self.attn.output(attn)
        x_btd = x_btd + self.mlp(self.post_attn_norm(x_btd))
        return x_btd, aux
