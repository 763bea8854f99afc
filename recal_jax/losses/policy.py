"""GRPO/PPO clipped policy objective (spec section 7)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax.losses.aggregation import aggregate_terms, check_mode
from recal_jax.losses.kl import KL_KINDS, LOG_RATIO_CLIP, kl_penalty
from recal_jax.losses.terms import LossTerms


def _check_inputs(logp, logp_old, advantages, loss_mask, logp_ref, entropy):
    shape = jnp.shape(logp)
    if len(shape) != 2:
        raise ValueError(f"policy_loss: logp must be [B, T]; got shape {shape}")
    for name, arr in (("logp_old", logp_old), ("loss_mask", loss_mask),
                      ("logp_ref", logp_ref), ("entropy", entropy)):
        if arr is not None and jnp.shape(arr) != shape:
            raise ValueError(f"policy_loss: {name} has shape {jnp.shape(arr)}, logp has {shape}")
    adv_shape = jnp.shape(advantages)
    if adv_shape not in ((shape[0],), shape):
        raise ValueError(
            f"policy_loss: advantages must be [B]={shape[0]} or [B, T]={shape}; got {adv_shape}"
        )


def policy_loss(logp: jax.Array, logp_old: jax.Array, advantages: jax.Array, loss_mask: jax.Array, *,
                clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float | None = None,
                agg: str = "token-mean", logp_ref: jax.Array | None = None, kl_coef: float | jax.Array = 0.0,
                kl_kind: str = "k3", entropy: jax.Array | None = None) -> tuple[LossTerms, dict]:
    """Clipped surrogate loss with optional dual clip and KL penalty.

    Args:
      logp: f32[B,T] log-probs of the sampled tokens under the current policy.
      logp_old: f32[B,T] the same under the policy that sampled them.
      advantages: f32[B] (one per rollout, A_i) or f32[B,T].
      loss_mask: f32[B,T], 1 on policy-written tokens.
      clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high].
      dual_clip: c > 1; where A < 0 the token loss is capped at -A * c. None: off.
      agg: aggregation mode (recal_jax.losses.AGG_MODES).
      logp_ref, kl_coef, kl_kind: add kl_coef * kl_penalty(logp, logp_ref, kl_kind) per
        token (needs logp_ref when kl_coef != 0). kl_coef: a number, or f32[B] one per row
        (a scheduled coefficient, traced, so that a new value does not recompile the step).
      entropy: f32[B,T] per-token entropy, reported as a metric only.

    Per token: rho = exp(clip(logp - logp_old, -20, 20)),
    l = max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high)) [+ dual clip] [+ beta KL].

    Returns:
      (loss, aux). loss: LossTerms(total, denom) under `agg`; loss.value() is the scalar.
      aux: dict of metrics, all computed without gradient:
        LossTerms (token means over the mask, additive across micro-batches):
          pg_loss (the policy term alone, under `agg`), clipfrac_high (A > 0 and
          rho > 1 + clip_high: upper clip binds), clipfrac_low (A < 0 and
          rho < 1 - clip_low: lower clip binds), dualclip_frac (dual clip binds),
          approx_kl (k3 estimate of KL(pi_old || pi)), ratio_mean, and kl (when logp_ref
          is given), entropy (when given).
        scalars: ratio_min, ratio_max over masked tokens (1.0 when no token counts);
          reduce them across micro-batches with min / max.
    """
    _check_inputs(logp, logp_old, advantages, loss_mask, logp_ref, entropy)
    _check_options(agg, kl_kind, clip_low, clip_high, dual_clip, kl_coef, logp_ref, jnp.shape(logp)[0])
    logp = jnp.asarray(logp, jnp.float32)
    logp_old = jnp.asarray(logp_old, jnp.float32)
    mask = jnp.asarray(loss_mask, jnp.float32)
    adv = jnp.asarray(advantages, jnp.float32)
    adv_bt = jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, logp.shape)
    pg_bt, ratio_bt, dual_active_bt = clipped_surrogate(logp, logp_old, adv_bt, clip_low=clip_low,
                                                        clip_high=clip_high, dual_clip=dual_clip)
    loss_bt = pg_bt
    aux = {}
    if logp_ref is not None:
        kl_bt = kl_penalty(logp, logp_ref, kl_kind)
        if _is_array(kl_coef):
            loss_bt = loss_bt + jnp.asarray(kl_coef, jnp.float32)[:, None] * kl_bt
        elif kl_coef != 0.0:
            loss_bt = loss_bt + kl_coef * kl_bt
        aux["kl"] = aggregate_terms(jax.lax.stop_gradient(kl_bt), mask, "token-mean")
    loss = aggregate_terms(loss_bt, mask, agg)
    aux.update(_surrogate_metrics(pg_bt, ratio_bt, dual_active_bt, adv_bt, logp, logp_old, mask,
                                  clip_low=clip_low, clip_high=clip_high, agg=agg))
    if entropy is not None:
        aux["entropy"] = aggregate_terms(jax.lax.stop_gradient(jnp.asarray(entropy, jnp.float32)), mask,
                                         "token-mean")
    aux.update(_ratio_extremes(ratio_bt, mask))
    return loss, aux


def _is_array(x) -> bool:
    """kl_coef given per row (an array) rather than as one number (a Python or numpy scalar)."""
    return not isinstance(x, (int, float, np.integer, np.floating))


def _check_options(agg, kl_kind, clip_low, clip_high, dual_clip, kl_coef, logp_ref, rows) -> None:
    check_mode(agg)
    if _is_array(kl_coef) and jnp.shape(kl_coef) != (rows,):
        raise ValueError(f"policy_loss: kl_coef must be a number or f32[B]=({rows},); got shape {jnp.shape(kl_coef)}")
    if kl_kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kl_kind!r}; expected one of {KL_KINDS}")
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(f"policy_loss: need 0 <= clip_low < 1 and clip_high >= 0; "
                         f"got clip_low={clip_low}, clip_high={clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"policy_loss: dual_clip must be > 1; got {dual_clip}")
    if (_is_array(kl_coef) or kl_coef != 0.0) and logp_ref is None:
        raise ValueError("policy_loss: kl_coef != 0 needs logp_ref")


def clipped_surrogate(logp_bt, logp_old_bt, adv_bt, *, clip_low: float = 0.2, clip_high: float = 0.2,
                      dual_clip: float | None = None):
    """Per-token clipped surrogate (spec section 7) -> (loss f32[B,T], ratio f32[B,T],
    dual_active bool[B,T]).

    rho = exp(clip(logp - logp_old, -20, 20)); l = max(-A rho, -A clip(rho, 1 - clip_low,
    1 + clip_high)); with dual_clip c, where A < 0: l = min(l, -A c) (dual_active: the cap binds).
    All inputs f32[B,T] (advantages broadcast per token).
    """
    log_ratio = jnp.clip(logp_bt - logp_old_bt, -LOG_RATIO_CLIP, LOG_RATIO_CLIP)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv_bt * ratio
    clipped = -adv_bt * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg_bt = jnp.maximum(unclipped, clipped)
    if dual_clip is not None:
        capped = jnp.minimum(pg_bt, -adv_bt * dual_clip)
        dual_active = (adv_bt < 0) & (capped < pg_bt)
        pg_bt = jnp.where(adv_bt < 0, capped, pg_bt)
    else:
        dual_active = jnp.zeros(logp_bt.shape, bool)
    return pg_bt, ratio, dual_active


def _surrogate_metrics(pg_bt, ratio_bt, dual_active_bt, adv_bt, logp_bt, logp_old_bt, mask_bt, *,
                       clip_low, clip_high, agg) -> dict:
    """LossTerms metrics of the surrogate (no gradient): pg_loss, clip / dual-clip fractions,
    approx_kl, ratio_mean."""
    sg = jax.lax.stop_gradient
    ratio_sg = sg(ratio_bt)

    def frac(cond):
        return aggregate_terms(cond.astype(jnp.float32), mask_bt, "token-mean")

    return {
        "pg_loss": aggregate_terms(sg(pg_bt), mask_bt, agg),
        "clipfrac_high": frac((adv_bt > 0) & (ratio_sg > 1.0 + clip_high)),
        "clipfrac_low": frac((adv_bt < 0) & (ratio_sg < 1.0 - clip_low)),
        "dualclip_frac": frac(sg(dual_active_bt)),
        "approx_kl": aggregate_terms(kl_penalty(sg(logp_old_bt), sg(logp_bt), "k3"), mask_bt, "token-mean"),
        "ratio_mean": aggregate_terms(ratio_sg, mask_bt, "token-mean"),
    }


def _ratio_extremes(ratio_bt, mask_bt) -> dict:
    """ratio_min / ratio_max over masked tokens (1.0 when no token counts), no gradient."""
    ratio_sg = jax.lax.stop_gradient(ratio_bt)
    has_any = jnp.any(mask_bt != 0)
    return {
        "ratio_min": jnp.where(has_any, jnp.min(jnp.where(mask_bt != 0, ratio_sg, jnp.inf)), 1.0),
        "ratio_max": jnp.where(has_any, jnp.max(jnp.where(mask_bt != 0, ratio_sg, -jnp.inf)), 1.0),
    }
