"""The one per-dataset mean of the project: evaluation, the reference routers and the GRPO
training metrics all report accuracy per dataset through it."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def per_dataset_mean(values_n, dataset_ids_n, datasets: Sequence[str]) -> dict[str, float]:
    """datasets[d] -> mean of values_n over the entries whose dataset id is d, in `datasets`
    order; a dataset without any entry is absent (not 0, not NaN). values_n and
    dataset_ids_n: 1-D, the same length; the mean keeps values_n's dtype until the float()."""
    values_n, ids_n = np.asarray(values_n), np.asarray(dataset_ids_n)
    if values_n.ndim != 1 or values_n.shape != ids_n.shape:
        raise ValueError(f"per_dataset_mean needs 1-D values and dataset ids of one length, got shapes "
                         f"{values_n.shape} and {ids_n.shape}")
    out = {}
    for d, name in enumerate(datasets):
        sel_n = ids_n == d
        if sel_n.any():
            out[name] = float(values_n[sel_n].mean())
    return out


__all__ = ["per_dataset_mean"]
