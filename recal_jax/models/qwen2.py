"""Qwen2 / Qwen2.5 decoder-only transformer in flax.nnx, with a KV-cache decode path."""
from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recal_jax.models import kv_cache as kv_cache_lib
from recal_jax.models.config import ModelConfig
from recal_jax.models.kv_cache import KVCache
from recal_jax.models.layers import DecoderLayer, RMSNorm, param


def _check_tokens(name: str, tokens_bt) -> None:
    if jnp.ndim(tokens_bt) != 2:
        raise ValueError(f"{name} must be 2-D [batch, time], got shape {jnp.shape(tokens_bt)}")
    if not jnp.issubdtype(jnp.result_type(tokens_bt), jnp.integer):
        raise ValueError(f"{name} must hold integer token ids, got {jnp.result_type(tokens_bt)}")


def _check_mask(name: str, mask, shape) -> None:
    if tuple(jnp.shape(mask)) != tuple(shape):
        raise ValueError(f"{name} has shape {jnp.shape(mask)}, expected {tuple(shape)}")


class Qwen2(nnx.Module):
    """Qwen2ForCausalLM equivalent.

    Parameter layout (ours; hf_io converts to/from HF names):
      embed [V, D]; per layer: attn.{q,k,v}_kernel [D, H|K, Dh], attn.{q,k,v}_bias
      [H|K, Dh], attn.o_kernel [H, Dh, D], mlp.{gate,up}_kernel [D, F],
      mlp.down_kernel [F, D], input_norm/post_attn_norm.weight [D]; final_norm.weight
      [D]; lm_head [D, V] unless the embeddings are tied.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, ModelConfig):
            raise ValueError(f"Qwen2 expects a ModelConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.embed = param(rngs, (c.vocab_size, c.hidden_size), c.param_dtype,
                           ("vocab", "embed"))
        self.layers = nnx.List([DecoderLayer(c, rngs=rngs) for _ in range(c.num_layers)])
        self.final_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.param_dtype, c.dtype,
                                  rngs=rngs)
        if not c.tie_word_embeddings:
            self.lm_head = param(rngs, (c.hidden_size, c.vocab_size), c.param_dtype,
                                 ("embed", "vocab"))

    # -- pieces ---------------------------------------------------------------------------

    def _embed(self, tokens_bt: jax.Array) -> jax.Array:
        return jnp.take(self.embed[...], tokens_bt, axis=0).astype(self.config.dtype)

    def lm_logits(self, h_btd: jax.Array) -> jax.Array:
        """Logits f32[B, T, V] from final-normed hidden states (see `hidden`)."""
        dt = self.config.dtype
        x_btd = h_btd.astype(dt)
        if self.config.tie_word_embeddings:
            return jnp.einsum("btd,vd->btv", x_btd, self.embed[...].astype(dt),
                              preferred_element_type=jnp.float32)
        return jnp.einsum("btd,dv->btv", x_btd, self.lm_head[...].astype(dt),
                          preferred_element_type=jnp.float32)

    # -- full forward ---------------------------------------------------------------------

    def __call__(self, tokens_bt: jax.Array, attention_mask_bt: jax.Array | None = None
                 ) -> jax.Array:
        """Logits f32[B, T, V] of a (left- or right-) padded batch.

        tokens_bt: int[B, T]; attention_mask_bt: bool/int[B, T] (True = real token,
        default all True). Positions are cumsum(mask) - 1 clipped at 0; token t attends
        to the real tokens s <= t. Pad rows get finite (meaningless) logits.
        """
        return self.lm_logits(self.hidden(tokens_bt, attention_mask_bt))

    def hidden(self, tokens_bt: jax.Array, attention_mask_bt: jax.Array | None = None
               ) -> jax.Array:
        """Final-normed hidden states [B, T, D] (compute dtype); `lm_logits` maps them to
        logits, so a caller can compute log-probs in chunks of T without [B, T, V]."""
        _check_tokens("tokens_bt", tokens_bt)
        b, t = tokens_bt.shape
        if attention_mask_bt is None:
            mask_bt = jnp.ones((b, t), bool)
        else:
            _check_mask("attention_mask_bt", attention_mask_bt, (b, t))
            mask_bt = jnp.asarray(attention_mask_bt).astype(bool)
        positions_bt = jnp.maximum(jnp.cumsum(mask_bt.astype(jnp.int32), axis=1) - 1, 0)
        causal_tt = jnp.tril(jnp.ones((t, t), bool))
        mask_bts = causal_tt[None, :, :] & mask_bt[:, None, :]

        def self_kv(k, v):
            return k, v, None

        def run_layer(layer, x_btd):
            return layer(x_btd, positions_bt, mask_bts, self_kv)[0]

        if self.config.remat:
            run_layer = nnx.remat(run_layer)
        x = self._embed(tokens_bt)
        for layer in self.layers:
            x = run_layer(layer, x)
        return self.final_norm(x)

    # -- cached decoding ------------------------------------------------------------------

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """Zero KV cache, k/v: [L, batch, max_len, Hkv, Dh] in the compute dtype."""
        c = self.config
        try:
            batch, max_len = operator.index(batch), operator.index(max_len)
        except TypeError:
            raise ValueError(f"init_cache needs integer batch and max_len, got {batch!r}, "
                             f"{max_len!r}") from None
        return kv_cache_lib.init_cache(c.num_layers, batch, max_len, c.num_kv_heads,
                                       c.head_dim, dtype or c.dtype)

    def decode(self, tokens_bt: jax.Array, positions_bt: jax.Array, cache: KVCache,
               cache_index: jax.Array | int, kv_mask_bs: jax.Array
               ) -> tuple[jax.Array, KVCache]:
        """Run T new tokens against the cache.

        Writes the k/v of the T tokens into slots [cache_index, cache_index + T); token t
        attends to the slots s with kv_mask_bs[b, s] and s <= cache_index + t. The caller
        owns positions_bt (int[B, T], RoPE positions) and kv_mask_bs (bool[B, S], which
        must already be True on the slots being written for real tokens).
        cache_index: int32 scalar, may be traced. Returns (logits f32[B, T, V], new cache).
        """
        _check_tokens("tokens_bt", tokens_bt)
        b, t = tokens_bt.shape
        if not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a KVCache, got {type(cache).__name__}")
        c = self.config
        expected = (c.num_layers, b, cache.max_len, c.num_kv_heads, c.head_dim)
        if tuple(cache.k.shape) != expected or tuple(cache.v.shape) != expected:
            raise ValueError(f"cache k/v shapes {cache.k.shape}/{cache.v.shape} do not match "
                             f"{expected} (layers, batch, slots, kv heads, head dim)")
        s = cache.max_len
        _check_mask("positions_bt", positions_bt, (b, t))
        _check_mask("kv_mask_bs", kv_mask_bs, (b, s))
        if jnp.ndim(cache_index) != 0 or not jnp.issubdtype(jnp.result_type(cache_index),
                                                           jnp.integer):
            raise ValueError(f"cache_index must be an integer scalar, got {cache_index!r}")
        if t > s:
            raise ValueError(f"{t} new tokens do not fit a cache of {s} slots")
        if not isinstance(cache_index, jax.core.Tracer):
            start = int(np.asarray(cache_index))
            if start < 0 or start + t > s:
                raise ValueError(f"slots [{start}, {start + t}) do not fit a cache of {s} slots")

        index = jnp.asarray(cache_index, jnp.int32)
        slot_s = jnp.arange(s, dtype=jnp.int32)
        query_slot_t = index + jnp.arange(t, dtype=jnp.int32)
        mask_bts = (jnp.asarray(kv_mask_bs).astype(bool)[:, None, :]
                    & (slot_s[None, None, :] <= query_slot_t[None, :, None]))
        positions_bt = jnp.asarray(positions_bt).astype(jnp.int32)
        zero = jnp.int32(0)
        cache_k, cache_v = cache.k, cache.v

        x = self._embed(tokens_bt)
        for i, layer in enumerate(self.layers):
            def cached_kv(k_new, v_new, i=i, cache_k=cache_k, cache_v=cache_v):
                start = (jnp.int32(i), zero, index, zero, zero)
                cache_k = jax.lax.dynamic_update_slice(
                    cache_k, k_new.astype(cache_k.dtype)[None], start)
                cache_v = jax.lax.dynamic_update_slice(
                    cache_v, v_new.astype(cache_v.dtype)[None], start)
                return (cache_k[i].astype(k_new.dtype), cache_v[i].astype(v_new.dtype),
                        (cache_k, cache_v))

            x, (cache_k, cache_v) = layer(x, positions_bt, mask_bts, cached_kv)
        return self.lm_logits(self.final_norm(x)), KVCache(k=cache_k, v=cache_v)
