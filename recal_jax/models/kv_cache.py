"""The decode-time key/value cache: a plain pytree of two stacked arrays."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class KVCache(NamedTuple):
    """k, v: [L, B, S, Hkv, Dh] (layers, batch, slots, kv heads, head dim).

    Slot s of row b holds the key/value of whatever token the caller decoded into it;
    which slots are valid is the caller's `kv_mask_bs` (see `Qwen2.decode`).
    """

    k: jax.Array
    v: jax.Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]


def init_cache(num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
               dtype) -> KVCache:
    """A zero cache of shape [num_layers, batch, max_len, num_kv_heads, head_dim]."""
    for name, value in (("batch", batch), ("max_len", max_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"init_cache: {name} must be a positive int, got {value!r}")
    shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))
