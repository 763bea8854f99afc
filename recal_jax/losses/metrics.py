"""Reduction of policy_loss aux metrics across micro-batches and to plain scalars."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from recal_jax.losses.terms import LossTerms

_MIN_KEYS = ("ratio_min",)
_MAX_KEYS = ("ratio_max",)


def reduce_stacked_aux(aux: dict, count_key: str = "ratio_mean") -> dict:
    """Reduces aux stacked on a leading micro-batch axis (e.g. the output of lax.scan).

    LossTerms add up; ratio_min / ratio_max take min / max over micro-batches that had
    any masked token (those with `aux[count_key].denom > 0`).
    """
    out = {}
    counted = aux[count_key].denom > 0 if count_key in aux else None
    for key, val in aux.items():
        if isinstance(val, LossTerms):
            out[key] = LossTerms(jnp.sum(val.total, 0), jnp.sum(val.denom, 0))
        elif key in _MIN_KEYS or key in _MAX_KEYS:
            is_min = key in _MIN_KEYS
            neutral = jnp.inf if is_min else -jnp.inf
            pick = jnp.where(counted, val, neutral) if counted is not None else val
            red = jnp.min(pick, 0) if is_min else jnp.max(pick, 0)
            out[key] = jnp.where(jnp.isfinite(red), red, 1.0)
        else:
            out[key] = jnp.mean(val, 0)
    return out


def aux_to_metrics(aux: dict) -> dict[str, jax.Array]:
    """LossTerms -> their value (total / denom); scalars pass through."""
    return {k: (v.value() if isinstance(v, LossTerms) else v) for k, v in aux.items()}
