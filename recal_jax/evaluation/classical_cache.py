"""On-disk cache of the trained classical routers: fitting them (L-BFGS over hashed
bag-of-words features, with a held-out choice of k / L2) takes minutes on a large log, and
every run of a grid with the same data and seed fits exactly the same routers.

The key is a SHA-256 over everything the fit reads: both splits' questions, datasets, scores
and call costs, the pool, the seed and the ClassicalConfig. A file that cannot be read back is
ignored (and rewritten), never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Callable

from recal_jax.data.schema import RoutingLog
from recal_jax.evaluation.router_result import RouterResult, score_and_cost_matrices

# bump when the classical routers' definition changes (2: scipy's L-BFGS-B fits the linear models)
CACHE_VERSION = 2


def fingerprint(train: RoutingLog, test: RoutingLog, seed: int, config) -> str:
    """Hex SHA-256 of the inputs of classical_routers(train, test, seed=seed, config=config)."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "seed": int(seed),
                         "config": dataclasses.asdict(config)}, sort_keys=True, default=str).encode())
    for log in (train, test):
        scores, costs = score_and_cost_matrices(log)
        h.update(json.dumps([list(log.model_names), list(log.datasets)]).encode())
        h.update(scores.tobytes())
        h.update(costs.tobytes())
        for record in log.records:
            h.update(f"{log.dataset_id(record)}\x00{record.question}\x01".encode())
    return h.hexdigest()


def load(path: pathlib.Path) -> dict[str, RouterResult] | None:
    """The cached routers at `path`, or None when absent or unreadable."""
    try:
        rows = json.loads(path.read_text())
        return {name: RouterResult.from_json(row) for name, row in rows.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def save(path: pathlib.Path, results: dict[str, RouterResult]) -> None:
    """Writes atomically (a concurrent reader sees the old file or the new one, never a part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({name: r.to_json() for name, r in results.items()}, f)
    os.replace(tmp, path)


def cached(fit: Callable[[], dict[str, RouterResult]], cache_dir: str | os.PathLike | None,
           train: RoutingLog, test: RoutingLog, seed: int, config) -> dict[str, RouterResult]:
    """fit() (the classical routers of these inputs), read from / written to `cache_dir`
    (None: no cache)."""
    if not cache_dir:
        return fit()
    path = pathlib.Path(cache_dir) / f"classical-{fingerprint(train, test, seed, config)[:32]}.json"
    hit = load(path)
    if hit is not None:
        return hit
    results = fit()
    save(path, results)
    return results
