"""Aggregation over seeds: mean and the two-sided 95% Student-t confidence interval."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats


def mean_ci95(values: Iterable[float]) -> tuple[float, float | None]:
    """(mean, half-width) of the 95% CI of the mean: t_{0.975, n-1} * s / sqrt(n), s with ddof=1.

    The half-width is None for a single value (no spread to estimate)."""
    x = np.asarray(list(values), dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mean_ci95 needs a non-empty list of numbers, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"mean_ci95 got non-finite values {x.tolist()}")
    mean = float(x.mean())
    if x.size < 2:
        return mean, None
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, half


def finite_mean(values: Iterable[float | None]) -> float | None:
    """Mean of the finite values (None and NaN skipped); None when there are none."""
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(x)) if x else None


def finite_or_none(value) -> float | None:
    """value as a float, or None when it is None or not finite (pandas holds a missing value as NaN)."""
    return None if value is None or not math.isfinite(value) else float(value)


def mean_curve(curves: Iterable[dict[int, float]]) -> tuple[list[int], list[float]]:
    """Pointwise mean over runs of step -> value maps, at every step any run logged (None
    and non-finite values skipped)."""
    frame = pd.DataFrame([(int(step), value) for curve in curves for step, value in curve.items()],
                         columns=["step", "value"])
    means = frame.groupby("step")["value"].agg(finite_mean).dropna()
    return [int(step) for step in means.index], [float(v) for v in means]
