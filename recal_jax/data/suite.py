"""A suite (train and test routing logs), seeded splits, and dataset-stratified batches."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np

from recal_jax.data.schema import RoutingLog, RoutingRecord


@dataclasses.dataclass(frozen=True)
class Suite:
    train: RoutingLog
    test: RoutingLog

    def __post_init__(self):
        if dict(self.train.models) != dict(self.test.models):
            raise ValueError("train and test logs of a suite must share the model pool")
        if self.train.datasets != self.test.datasets:
            raise ValueError("train and test logs of a suite must share the dataset order")


def random_split(log: RoutingLog, n_train: int, n_test: int, seed: int) -> Suite:
    """A seeded split of `log` into disjoint train (n_train) and test (n_test) logs."""
    n = len(log.records)
    if n_train < 0 or n_test < 0 or n_train + n_test > n:
        raise ValueError(f"cannot split {n} records into {n_train} train + {n_test} test")
    order = np.random.default_rng(seed).permutation(n)
    pick = lambda idx: tuple(log.records[i] for i in sorted(idx))  # noqa: E731
    return Suite(
        train=log.subset(pick(order[:n_train]), name=f"{log.name}/train"),
        test=log.subset(pick(order[n_train: n_train + n_test]), name=f"{log.name}/test"),
    )


def stratified_batches(
    log: RoutingLog, batch_size: int, rng: np.random.Generator, *, weighting: str = "proportional"
) -> Iterator[list[RoutingRecord]]:
    """Endless batches of `batch_size` records, stratified by dataset.

    Each batch gives dataset d floor(batch_size * w_d) slots, and the leftover slots go to
    distinct datasets by systematic sampling (dataset d gets one with probability equal to
    its fractional part), so every dataset's expected share is exactly w_d (w_d: its share of the records when
    weighting="proportional", 1/D over the datasets present when "uniform"). Within a
    dataset, records are drawn without replacement from a reshuffled queue (epochs).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if weighting not in ("proportional", "uniform"):
        raise ValueError(f"unknown weighting {weighting!r}; expected 'proportional' or 'uniform'")
    by_dataset: dict[str, list[RoutingRecord]] = {}
    for r in log.records:
        by_dataset.setdefault(r.dataset, []).append(r)
    if not by_dataset:
        raise ValueError(f"routing log {log.name!r} has no records")
    names = [d for d in log.datasets if d in by_dataset]
    sizes = np.array([len(by_dataset[d]) for d in names], np.float64)
    weights = sizes / sizes.sum() if weighting == "proportional" else np.full(len(names), 1.0 / len(names))
    queues: dict[str, list[int]] = {d: [] for d in names}

    def take(d: str) -> RoutingRecord:
        if not queues[d]:
            queues[d] = list(rng.permutation(len(by_dataset[d])))
        return by_dataset[d][queues[d].pop()]

    while True:
        exact = batch_size * weights
        slots = np.floor(exact).astype(int)
        frac = exact - slots
        left = batch_size - int(slots.sum())
        if left > 0:  # systematic sampling: dataset d gets an extra slot with probability frac[d]
            order = rng.permutation(len(names))
            edges = np.cumsum(frac[order])
            points = rng.uniform() + np.arange(left)
            hit = np.minimum(np.searchsorted(edges, points, side="right"), len(names) - 1)
            slots[order[hit]] += 1
        batch = [take(d) for d, n in zip(names, slots) for _ in range(n)]
        yield batch


def data_dir(path=None) -> Path:
    """The shared data directory: `path`, else $RECAL_DATA_DIR, else ../shared/data next to the repo."""
    import os

    if path is not None:
        return Path(path)
    env = os.environ.get("RECAL_DATA_DIR")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
