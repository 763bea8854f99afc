"""The KL coefficient as a function of the GRPO step (grpo.kl_schedule): a strong pull
towards the warm start early, while the policy's routing is still the start's, and a weaker
one later, so that what GRPO has learnt is not held back to the start for the whole run.

Evaluated on the host once per step, in float64: optax's float32 schedules lose the start
value to cancellation when the end value is much larger (1e-6 -> 4.5 starts at 1.4e-6)."""
from __future__ import annotations

import math
from typing import Callable

KL_SCHEDULES = ("constant", "linear", "cosine")


def kl_coef_schedule(kind: str, kl_coef: float, kl_coef_final: float, steps: int) -> Callable[[int], float]:
    """step -> coefficient: `kl_coef` throughout (constant), or from `kl_coef` at step 0 to
    `kl_coef_final` at step `steps` (and after), along a line or a half cosine."""
    if kind not in KL_SCHEDULES:
        raise ValueError(f"unknown KL schedule {kind!r}; expected one of {KL_SCHEDULES}")
    if not (kl_coef >= 0 and kl_coef_final >= 0):
        raise ValueError(f"KL coefficients must be >= 0; got kl_coef={kl_coef}, kl_coef_final={kl_coef_final}")
    if kind != "constant" and not kl_coef > 0:
        raise ValueError(f"a {kind} KL schedule starts at kl_coef, which must be > 0 (got {kl_coef}): "
                         f"the reference model is only kept when it is")
    start, end, steps = float(kl_coef), float(kl_coef_final), max(int(steps), 1)

    def coefficient(step: int) -> float:
        if kind == "constant":
            return start
        frac = min(max(int(step), 0), steps) / steps
        weight = 1.0 - frac if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
        return end + (start - end) * weight

    return coefficient
