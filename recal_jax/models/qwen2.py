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
from recal_jax.models.layers import (
    DecoderLayer, RMSNorm, causal_attention, dot_attention, param, prompt_completion_attention,
)


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

    Parameter layout (ours; hf_io converts to/from HF names): embed [V, D]; `layers`, one
    DecoderLayer whose parameters are stacked over the L layers (leading axis, logical
    name 'layers'): attn.{q,k,v}_kernel [L, D, H|K, Dh], attn.{q,k,v}_bias [L, H|K, Dh],
    attn.o_kernel [L, H, Dh, D], mlp.{gate,up}_kernel [L, D, F], mlp.down_kernel [L, F, D],
    input_norm/post_attn_norm.weight [L, D]; final_norm.weight [D]; lm_head [D, V] unless
    the embeddings are tied. The layers run under lax.scan (config.scan_layers) or an
    unrolled loop over the same stack, rematerialised by config.remat.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, ModelConfig):
            raise ValueError(f"Qwen2 expects a ModelConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.embed = param(rngs, (c.vocab_size, c.hidden_size), c.param_dtype,
                           ("vocab", "embed"))
        self.layers = DecoderLayer(c, rngs=rngs, stack=c.num_layers)
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

    def _run_layers(self, body, carry, *, remat: bool):
        """carry <- body(layer_i, carry, i) for i = 0..L-1, where layer_i is a DecoderLayer
        holding slice i of the stacked parameters; by lax.scan or an unrolled loop."""
        c = self.config
        graphdef, stacked = nnx.split(self.layers)

        def step(carry, xs):
            layer_state, i = xs
            return body(nnx.merge(graphdef, layer_state), carry, i), None

        if remat and c.remat != "none":
            step = jax.checkpoint(step, policy=c.remat_policy, prevent_cse=not c.scan_layers)
        index_l = jnp.arange(c.num_layers, dtype=jnp.int32)
        if c.scan_layers:
            return jax.lax.scan(step, carry, (stacked, index_l))[0]
        for i in range(c.num_layers):
            layer_state = jax.tree.map(lambda a, i=i: a[i], stacked)
            carry = step(carry, (layer_state, index_l[i]))[0]
        return carry

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
        logits, so a caller can compute log-probs in chunks of T without [B, T, V].

        Each row's real tokens are first gathered to its front (stable order), so the
        mask becomes causal + a key length per row (what flash attention takes); the
        hidden states are scattered back to the original slots at the end.
        """
        _check_tokens("tokens_bt", tokens_bt)
        b, t = tokens_bt.shape
        if attention_mask_bt is None:
            mask_bt = jnp.ones((b, t), bool)
        else:
            _check_mask("attention_mask_bt", attention_mask_bt, (b, t))
            mask_bt = jnp.asarray(attention_mask_bt).astype(bool)
        perm_bt = jnp.argsort(~mask_bt, axis=1, stable=True)  # real tokens first, in order
        # >= 1: an all-pad row attends to its first slot (finite, meaningless) on every backend
        lengths_b = jnp.maximum(jnp.sum(mask_bt, axis=1, dtype=jnp.int32), 1)
        positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        impl = self.config.resolved_attention_impl()

        def attend(q_bthd, k_btkd, v_btkd):
            return causal_attention(q_bthd, k_btkd, v_btkd, lengths_b, impl=impl,
                                    query_chunk=self.config.attention_query_chunk), None

        def body(layer, x_btd, _):
            return layer(x_btd, positions_bt, attend)[0]

        x_btd = self._embed(jnp.take_along_axis(tokens_bt, perm_bt, axis=1))
        h_btd = self.final_norm(self._run_layers(body, x_btd, remat=True))
        inverse_bt = jnp.argsort(perm_bt, axis=1)
        return jnp.take_along_axis(h_btd, inverse_bt[:, :, None], axis=1)

    def hidden_after_prompt(self, prompt_tokens_up: jax.Array, prompt_len_u: jax.Array,
                            tokens_bc: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(h_last_ud, h_bcd): final-normed hidden states of each prompt's last real token
        [U, D] and of the completion tokens [B, C, D], for B = U * G rows sharing prompts.

        prompt_tokens_up: int[U, P], right-padded, prompt u's real tokens at s <
        prompt_len_u[u] (1 <= prompt_len_u <= P); tokens_bc: int[B, C], row b = u * G + g
        continues prompt u, right-padded (a real token never attends to a pad after it).
        The prompts run through the layers once per group rather than once per row; the
        values equal `hidden` of the concatenated rows [prompt_u[:len], tokens_b] at the same
        tokens (up to float summation order; a test checks).
        """
        _check_tokens("prompt_tokens_up", prompt_tokens_up)
        _check_tokens("tokens_bc", tokens_bc)
        (u, p), (b, c) = prompt_tokens_up.shape, tokens_bc.shape
        if np.shape(prompt_len_u) != (u,):
            raise ValueError(f"prompt_len_u has shape {np.shape(prompt_len_u)}; expected ({u},)")
        if b % u:
            raise ValueError(f"tokens_bc has {b} rows, not a multiple of the {u} prompts")
        g = b // u
        prompt_len_u = jnp.clip(jnp.asarray(prompt_len_u, jnp.int32), 1, p)
        positions_up = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (u, p))
        positions_bc = jnp.repeat(prompt_len_u, g)[:, None] + jnp.arange(c, dtype=jnp.int32)[None, :]
        impl, chunk = self.config.resolved_attention_impl(), self.config.attention_query_chunk

        def body(layer, carry, _):
            x_upd, x_bcd = carry
            qp, kp, vp = layer.attention_inputs(x_upd, positions_up)
            qc, kc, vc = layer.attention_inputs(x_bcd, positions_bc)
            attn_up = causal_attention(qp, kp, vp, prompt_len_u, impl=impl, query_chunk=chunk)
            attn_bc = prompt_completion_attention(qc, kc, vc, kp, vp, prompt_len_u, query_chunk=chunk)
            return layer.finish(x_upd, attn_up), layer.finish(x_bcd, attn_bc)

        x_upd, x_bcd = self._run_layers(body, (self._embed(prompt_tokens_up), self._embed(tokens_bc)),
                                        remat=True)
        last_ud = jnp.take_along_axis(x_upd, (prompt_len_u - 1)[:, None, None], axis=1)[:, 0]
        return self.final_norm(last_ud), self.final_norm(x_bcd)

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

    def _check_decode(self, tokens_bt, positions_bt, cache, cache_index, kv_mask_bs,
                      attend_len) -> int:
        """Validates decode's arguments; returns the static attended length."""
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
        attend_len = s if attend_len is None else attend_len
        if isinstance(attend_len, bool) or not isinstance(attend_len, int) \
                or not t <= attend_len <= s:
            raise ValueError(f"attend_len must be a static int in [{t}, {s}] (new tokens, "
                             f"cache slots), got {attend_len!r}")
        if not isinstance(cache_index, jax.core.Tracer):
            start = int(np.asarray(cache_index))
            if start < 0 or start + t > s:
                raise ValueError(f"slots [{start}, {start + t}) do not fit a cache of {s} slots")
            if start + t > attend_len:
                raise ValueError(f"slots [{start}, {start + t}) lie beyond attend_len="
                                 f"{attend_len}")
        return attend_len

    def decode(self, tokens_bt: jax.Array, positions_bt: jax.Array, cache: KVCache,
               cache_index: jax.Array | int, kv_mask_bs: jax.Array,
               attend_len: int | None = None) -> tuple[jax.Array, KVCache]:
        """Run T new tokens against the cache.

        Writes the k/v of the T tokens into slots [cache_index, cache_index + T); token t
        attends to the slots s with kv_mask_bs[b, s] and s <= cache_index + t. The caller
        owns positions_bt (int[B, T], RoPE positions) and kv_mask_bs (bool[B, S], which
        must already be True on the slots being written for real tokens).
        cache_index: int32 scalar, may be traced. attend_len (static int, default S): only
        the slots [0, attend_len) are read, so the caller can bucket the live length of
        the cache; it must cover cache_index + T. Returns (logits f32[B, T, V], new cache).
        Attention runs on "xla" unless attention_impl is "cudnn" and T > 1.
        """
        attend_len = self._check_decode(tokens_bt, positions_bt, cache, cache_index,
                                        kv_mask_bs, attend_len)
        b, t = tokens_bt.shape
        index = jnp.asarray(cache_index, jnp.int32)
        slot_s = jnp.arange(attend_len, dtype=jnp.int32)
        query_slot_t = index + jnp.arange(t, dtype=jnp.int32)
        mask_bts = (jnp.asarray(kv_mask_bs).astype(bool)[:, None, :attend_len]
                    & (slot_s[None, None, :] <= query_slot_t[None, :, None]))
        positions_bt = jnp.asarray(positions_bt).astype(jnp.int32)
        impl = "cudnn" if self.config.attention_impl == "cudnn" and t > 1 else "xla"
        window = (1, b, attend_len, self.config.num_kv_heads, self.config.head_dim)

        def body(layer, carry, i):
            x_btd, cache_k, cache_v = carry

            def attend(q_bthd, k_btkd, v_btkd):
                zero = jnp.int32(0)
                k_all = jax.lax.dynamic_update_slice(
                    cache_k, k_btkd.astype(cache_k.dtype)[None], (i, zero, index, zero, zero))
                v_all = jax.lax.dynamic_update_slice(
                    cache_v, v_btkd.astype(cache_v.dtype)[None], (i, zero, index, zero, zero))
                start = (i, zero, zero, zero, zero)
                keys = jax.lax.dynamic_slice(k_all, start, window)[0].astype(k_btkd.dtype)
                values = jax.lax.dynamic_slice(v_all, start, window)[0].astype(v_btkd.dtype)
                out = dot_attention(q_bthd, keys, values, impl=impl, mask_bts=mask_bts)
                return out, (k_all, v_all)

            x_btd, (cache_k, cache_v) = layer(x_btd, positions_bt, attend)
            return x_btd, cache_k, cache_v

        x_btd, cache_k, cache_v = self._run_layers(
            body, (self._embed(tokens_bt), cache.k, cache.v), remat=False)
        return self.lm_logits(self.final_norm(x_btd)), KVCache(k=cache_k, v=cache_v)
