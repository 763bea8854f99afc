"""Stage 2(c): variance-aware instance reweighting (spec 5(c))."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

INFORMATIVE_TOL = 1e-6


def group_std(scalar_rewards_ug, valid_ug):
    """Population std of each instance's valid rollouts, f32[U] (0 with < 2 valid)."""
    x = jnp.asarray(scalar_rewards_ug, jnp.float32)
    v = jnp.asarray(valid_ug, bool)
    top = jnp.max(jnp.where(v, x, -jnp.inf), axis=1, keepdims=True)
    d = jnp.where(v, x - jnp.where(jnp.isfinite(top), top, 0.0), 0.0)
    n = jnp.maximum(jnp.sum(v, axis=1, keepdims=True).astype(jnp.float32), 1.0)
    mean = jnp.sum(d, axis=1, keepdims=True) / n
    var = jnp.sum(jnp.where(v, (d - mean) ** 2, 0.0), axis=1) / n[:, 0]
    return jnp.sqrt(var)


def variance_weights(scalar_rewards, valid, *, w_min=0.5, w_max=2.0, kappa=2.0, eps=1e-6,
                     tol=INFORMATIVE_TOL):
    """Instance weights v f32[U] (spec 5(c)).

    sigma_u = population std of the instance's valid scalar rewards S. Informative instances
    have sigma_u > tol (1e-6). With sbar their mean sigma:
    v_u = w_min + (w_max - w_min) * sigmoid(kappa * (sigma_u - sbar) / (sbar + eps)),
    then v is divided by its mean over informative instances; others get v = 1.
    """
    for name, value in (("w_min", w_min), ("w_max", w_max), ("kappa", kappa), ("eps", eps)):
        if isinstance(value, (int, float)) and not math.isfinite(value):
            raise ValueError(f"variance_weights: {name} must be finite, got {value}")
    if isinstance(w_min, (int, float)) and isinstance(w_max, (int, float)) and not 0 < w_min <= w_max:
        raise ValueError(f"variance_weights needs 0 < w_min <= w_max, got {w_min}, {w_max}")
    if jnp.ndim(scalar_rewards) != 2 or jnp.shape(valid) != jnp.shape(scalar_rewards):
        raise ValueError(f"scalar_rewards and valid must both be [U,G]; got {jnp.shape(scalar_rewards)}, {jnp.shape(valid)}")
    sigma = group_std(scalar_rewards, valid)
    informative = sigma > tol
    n_inf = jnp.maximum(jnp.sum(informative).astype(jnp.float32), 1.0)
    sbar = jnp.sum(jnp.where(informative, sigma, 0.0)) / n_inf
    v = w_min + (w_max - w_min) * jax.nn.sigmoid(kappa * (sigma - sbar) / (sbar + eps))
    mean_v = jnp.sum(jnp.where(informative, v, 0.0)) / n_inf
    return jnp.where(informative, v / jnp.maximum(mean_v, w_min), 1.0)
