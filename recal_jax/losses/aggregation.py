"""Aggregation of a per-token loss matrix into a scalar, as a (sum, denominator) pair.

Modes (spec section 7), with m the loss mask f32[B,T] and l the loss f32[B,T]:

| mode                      | total                                    | denom                 |
|---------------------------|------------------------------------------|-----------------------|
| `token-mean`              | sum_bt m*l                               | sum_bt m              |
| `seq-mean-token-mean`     | sum_b (sum_t m*l / sum_t m) over rows    | rows with any mask    |
|                           | with any mask                            |                       |
| `seq-mean-token-sum`      | sum_b sum_t m*l                          | rows with any mask    |
| `seq-mean-token-sum-norm` | sum_bt m*l                               | B * T                 |

Every denominator is additive over rows, so splitting the batch by rows into
micro-batches (or shards) and adding totals and denominators gives the full-batch value.
A row "has a mask" when sum_t m > 0; fully masked rows (padded rollouts) never count.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from recal_jax.losses.terms import LossTerms, safe_divide

AGG_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def check_mode(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {AGG_MODES}")


def masked(values_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
    """values * mask, and exactly 0 where mask == 0 (whatever the value there)."""
    return jnp.where(mask_bt != 0, values_bt * mask_bt, 0.0)


def aggregate_terms(loss_bt: jax.Array, mask_bt: jax.Array, mode: str) -> LossTerms:
    """Aggregates loss f32[B,T] under mask f32[B,T] into LossTerms (see module table)."""
    check_mode(mode)
    loss_bt = jnp.asarray(loss_bt, jnp.float32)
    mask_bt = jnp.asarray(mask_bt, jnp.float32)
    if loss_bt.ndim != 2 or loss_bt.shape != mask_bt.shape:
        raise ValueError(
            f"aggregate expects loss and mask of the same shape [B, T]; got "
            f"{loss_bt.shape} and {mask_bt.shape}"
        )
    weighted_bt = masked(loss_bt, mask_bt)
    if mode == "token-mean":
        return LossTerms(jnp.sum(weighted_bt), jnp.sum(mask_bt))
    if mode == "seq-mean-token-sum-norm":
        b, t = loss_bt.shape
        return LossTerms(jnp.sum(weighted_bt), jnp.asarray(b * t, jnp.float32))
    row_mask_b = jnp.sum(mask_bt, axis=1)
    row_sum_b = jnp.sum(weighted_bt, axis=1)
    has_tokens_b = (row_mask_b != 0).astype(jnp.float32)
    if mode == "seq-mean-token-mean":
        row_value_b = safe_divide(row_sum_b, row_mask_b)
    else:  # seq-mean-token-sum
        row_value_b = row_sum_b
    return LossTerms(jnp.sum(row_value_b * has_tokens_b), jnp.sum(has_tokens_b))


def aggregate(loss_bt: jax.Array, mask_bt: jax.Array, mode: str) -> jax.Array:
    """Scalar aggregate of loss f32[B,T] under mask f32[B,T]; 0 when nothing counts."""
    return aggregate_terms(loss_bt, mask_bt, mode).value()
