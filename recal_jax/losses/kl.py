"""KL estimators between the policy and a reference, per token (spec section 7)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

KL_KINDS = ("k1", "k2", "k3")
LOG_RATIO_CLIP = 20.0
K3_CLIP = 10.0


def kl_penalty(logp_bt: jax.Array, logp_ref_bt: jax.Array, kind: str) -> jax.Array:
    """Per-token KL estimate f32[B,T] from log-probs of the sampled tokens.

    With d = logp - logp_ref:
      k1: d
      k2: d^2 / 2
      k3: exp(x) - x - 1 with x = clip(logp_ref - logp, -20, 20), clipped to [-10, 10]
          (Schulman's unbiased, low-variance estimator of KL(pi || pi_ref)).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")
    logp_bt = jnp.asarray(logp_bt, jnp.float32)
    logp_ref_bt = jnp.asarray(logp_ref_bt, jnp.float32)
    if logp_bt.shape != logp_ref_bt.shape:
        raise ValueError(
            f"kl_penalty: logp {logp_bt.shape} and logp_ref {logp_ref_bt.shape} differ in shape"
        )
    d = logp_bt - logp_ref_bt
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * jnp.square(d)
    x = jnp.clip(-d, -LOG_RATIO_CLIP, LOG_RATIO_CLIP)
    return jnp.clip(jnp.exp(x) - x - 1.0, -K3_CLIP, K3_CLIP)
