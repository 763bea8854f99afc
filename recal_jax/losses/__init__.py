"""Policy losses (spec section 7): clipped surrogate, KL estimators, (sum, denom) aggregation."""
from recal_jax.losses.aggregation import AGG_MODES, aggregate, aggregate_terms
from recal_jax.losses.kl import KL_KINDS, kl_penalty
from recal_jax.losses.kl_schedule import KL_SCHEDULES, kl_coef_schedule
from recal_jax.losses.metrics import aux_to_metrics, reduce_stacked_aux
from recal_jax.losses.policy import policy_loss
from recal_jax.losses.terms import LossTerms, safe_divide, sum_terms

__all__ = [
    "AGG_MODES",
    "KL_KINDS",
    "KL_SCHEDULES",
    "LossTerms",
    "aggregate",
    "aggregate_terms",
    "aux_to_metrics",
    "kl_coef_schedule",
    "kl_penalty",
    "policy_loss",
    "reduce_stacked_aux",
    "safe_divide",
    "sum_terms",
]
