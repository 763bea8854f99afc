"""(sum, denominator) pairs: the unit in which losses and metrics are reduced.

A mean over a batch is carried as `LossTerms(total, denom)`. Adding the totals and the
denominators of several micro-batches (or data-parallel shards) and dividing once gives
exactly the mean over the whole batch, which averaging per-shard means would not.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossTerms(NamedTuple):
    """A mean kept as its numerator and denominator.

    total: f32 scalar, the (masked) sum.
    denom: f32 scalar, what the sum is divided by; it never depends on parameters, so
        `grad(total) / denom` is the gradient of the mean.
    """

    total: jax.Array
    denom: jax.Array

    def value(self) -> jax.Array:
        """total / denom, and 0 where denom is 0 (an empty batch)."""
        return safe_divide(self.total, self.denom)

    def __add__(self, other: "LossTerms") -> "LossTerms":  # type: ignore[override]
        return LossTerms(self.total + other.total, self.denom + other.denom)


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, 0 where den == 0, with finite gradients everywhere."""
    num = jnp.asarray(num, jnp.float32)
    den = jnp.asarray(den, jnp.float32)
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)


def sum_terms(terms: LossTerms, axis: int | None = None) -> LossTerms:
    """Adds stacked LossTerms (e.g. one per micro-batch, stacked on `axis`)."""
    return LossTerms(jnp.sum(terms.total, axis=axis), jnp.sum(terms.denom, axis=axis))
