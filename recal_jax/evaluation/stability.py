"""Stability figures of a run, from its training metrics."""

from __future__ import annotations

import numpy as np


def stability(train_rows: list[dict]) -> dict[str, float]:
    """Stability figures of a run: std of the training reward (answer) over the last third,
    grad-norm spikes (> 5x the run's median), and collapse (format-valid rate < 0.5 at any
    GRPO step)."""
    if not train_rows:
        return {}
    answer = np.array([r.get("reward/answer", np.nan) for r in train_rows], float)
    fmt = np.array([r.get("format_valid", np.nan) for r in train_rows], float)
    grad = np.array([r.get("loss/grad_norm", np.nan) for r in train_rows], float)
    last = answer[-max(len(answer) // 3, 1):]
    med = np.nanmedian(grad) if np.isfinite(grad).any() else np.nan
    return {
        "reward_std_last_third": float(np.nanstd(last)),
        "grad_norm_spikes": int(np.sum(grad > 5 * med)) if np.isfinite(med) else 0,
        "collapsed": bool(np.nanmin(fmt) < 0.5) if np.isfinite(fmt).any() else False,
        "min_format_valid": float(np.nanmin(fmt)) if np.isfinite(fmt).any() else float("nan"),
    }
