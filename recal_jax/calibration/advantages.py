"""Stage 2(a)-(b): group baselines, group / batch scales, GDPO's batch normalisation.

All functions take scores f32[U,G] or f32[U,G,C] (C components handled independently)
and valid bool[U,G]; invalid rollouts always get 0.
"""

from __future__ import annotations

import jax.numpy as jnp

BASELINES = ("mean", "loo")
GROUP_SCALES = ("group", "batch", "none")


def _expand(valid_ug, x):
    valid = jnp.asarray(valid_ug, bool)
    return valid.reshape(valid.shape + (1,) * (x.ndim - 2))


def _shifted(x, v):
    """x minus its group's largest valid value (0 where invalid): all-equal groups become
    exact zeros, and large offsets do not cost float precision in the group mean."""
    top = jnp.max(jnp.where(v, x, -jnp.inf), axis=1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return jnp.where(v, x - top, 0.0)


def group_advantages(scores, valid, *, baseline="mean", scale="group", eps=1e-6):
    """Group-baselined (and optionally scaled) advantages, same shape as `scores`.

    scores f32[U,G] (or f32[U,G,C]); valid bool[U,G].
    baseline 'mean': a = r - mean of the group's valid rollouts; 'loo': a = r - mean of the
        OTHER valid rollouts of the group (RLOO). A group with < 2 valid rollouts gives 0.
    scale 'group': a / (unbiased std of the group's valid scores + eps) (GRPO);
        'batch': a / (population std of a over all valid rollouts + eps); 'none': a.
    ('dataset' scale needs dataset ids: see `dataset_scale`.)
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if scale not in GROUP_SCALES:
        raise ValueError(f"group_advantages scale must be one of {GROUP_SCALES} "
                         f"(use dataset_scale for 'dataset'), got {scale!r}")
    x = jnp.asarray(scores, jnp.float32)
    if x.ndim not in (2, 3) or jnp.shape(valid) != x.shape[:2]:
        raise ValueError(f"scores must be [U,G] or [U,G,C] and valid [U,G]; got {x.shape} and {jnp.shape(valid)}")
    v = _expand(valid, x)
    d = _shifted(x, v)
    n = jnp.sum(v, axis=1, keepdims=True).astype(jnp.float32)
    total = jnp.sum(d, axis=1, keepdims=True)
    mean = total / jnp.maximum(n, 1.0)
    if baseline == "mean":
        a = d - mean
    else:
        a = d - (total - d) / jnp.maximum(n - 1.0, 1.0)
    a = jnp.where(v & (n >= 2), a, 0.0)
    if scale == "group":
        var = jnp.sum(jnp.where(v, (d - mean) ** 2, 0.0), axis=1, keepdims=True) / jnp.maximum(n - 1.0, 1.0)
        a = a / (jnp.sqrt(var) + eps)
    elif scale == "batch":
        a = batch_scale(a, valid, eps=eps)
    return a


def _batch_moments(x, v):
    n = jnp.maximum(jnp.sum(v, axis=(0, 1)).astype(jnp.float32), 1.0)
    mean = jnp.sum(jnp.where(v, x, 0.0), axis=(0, 1)) / n
    var = jnp.sum(jnp.where(v, (x - mean) ** 2, 0.0), axis=(0, 1)) / n
    return mean, jnp.sqrt(var)


def batch_std(x, valid):
    """Population std over all valid rollouts (per trailing component), f32[] or f32[C]."""
    x = jnp.asarray(x, jnp.float32)
    return _batch_moments(x, _expand(valid, x))[1]


def batch_scale(x, valid, *, eps=1e-6):
    """x / (population std of x over all valid rollouts + eps); 0 where invalid."""
    x = jnp.asarray(x, jnp.float32)
    v = _expand(valid, x)
    _, std = _batch_moments(x, v)
    return jnp.where(v, x / (std + eps), 0.0)


def batch_normalize(x, valid, *, eps=1e-6):
    """GDPO's final normalisation (x - mean) / (std + eps) over all valid rollouts."""
    x = jnp.asarray(x, jnp.float32)
    v = _expand(valid, x)
    mean, std = _batch_moments(x, v)
    return jnp.where(v, (x - mean) / (std + eps), 0.0)
