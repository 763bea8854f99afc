"""The pools that can answer a run's calls, registered in one place.

A pool kind is a name and a builder `PoolRequest -> Pool`. `--config.pool.kind` names one,
or 'auto' (the default): live endpoints when `pool.endpoints` names a file, else the
suite's own pool when its registry entry names one, else a replay pool over a log with
scores, else a simulated pool (price-ranked skill) for a reply-less log such as qa7.
Adding a pool is one `register_pool(PoolSpec(...))` plus its class.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable

from recal_jax.data.schema import DataError, RoutingLog
from recal_jax.routing.pools.base import Pool
from recal_jax.routing.pools.openai_pool import Endpoint, OpenAIPool
from recal_jax.routing.pools.replay import ReplayPool
from recal_jax.routing.pools.simulated import SimulatedPool


@dataclasses.dataclass(frozen=True)
class PoolRequest:
    """What a pool builder gets: the split's log, the run's seed, the suite's options (None
    without), and the pool section's endpoints file, reply cache and concurrency."""

    log: RoutingLog
    seed: int
    suite_options: Any = None
    endpoints: str = ""
    cache_dir: str = ""
    concurrency: int = 32


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    name: str
    build: Callable[[PoolRequest], Pool]
    description: str = ""


POOLS: dict[str, PoolSpec] = {}
AUTO = "auto"


def register_pool(spec: PoolSpec) -> PoolSpec:
    if spec.name in POOLS or spec.name == AUTO:
        raise ValueError(f"pool {spec.name!r} is registered twice (or is the reserved name {AUTO!r})")
    POOLS[spec.name] = spec
    return spec


def resolve_pool_kind(kind: str, *, endpoints: str, suite_pool: str, log: RoutingLog) -> str:
    """The pool kind a run uses (see the module docstring for 'auto')."""
    if kind != AUTO:
        return kind
    if endpoints:
        return "openai"
    if suite_pool != AUTO:
        return suite_pool
    return "replay" if any(r.scores for r in log.records) else "simulated"


def build_pool(kind: str, request: PoolRequest) -> Pool:
    if kind not in POOLS:
        raise KeyError(f"unknown pool {kind!r}; expected one of {(AUTO,) + tuple(POOLS)}")
    return POOLS[kind].build(request)


def read_endpoints(path: str) -> dict[str, Endpoint]:
    """endpoints.json: {model: {base_url, model, price_in, price_out, api_key_env?, description?}}."""
    try:
        raw = json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"pool.endpoints file {path!r} does not exist") from None
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError) as e:
        raise DataError(f"pool.endpoints file {path!r} is not valid JSON: {e}") from None
    except OSError as e:
        raise DataError(f"pool.endpoints file {path!r} cannot be read: {e.strerror}") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"pool.endpoints file {path!r} must be a non-empty JSON object of models")
    endpoints = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise DataError(f"pool.endpoints {path!r}: model {name!r} must be an object")
        missing = [k for k in ("base_url", "model") if k not in spec]
        if missing:
            raise DataError(f"pool.endpoints {path!r}: model {name!r} lacks {missing}")
        try:
            endpoints[name] = Endpoint(
                base_url=str(spec["base_url"]), model_id=str(spec["model"]),
                price_in=float(spec.get("price_in", 0.0)), price_out=float(spec.get("price_out", 0.0)),
                api_key_env=spec.get("api_key_env"), description=str(spec.get("description", "")))
        except (TypeError, ValueError) as e:
            raise DataError(f"pool.endpoints {path!r}: model {name!r}: {e}") from None
    return endpoints


def _openai(request: PoolRequest) -> Pool:
    endpoints = read_endpoints(request.endpoints)
    unknown = sorted(set(request.log.model_names) - set(endpoints))
    if unknown:
        raise DataError(f"pool.endpoints file {request.endpoints!r} lacks the suite's model(s) {unknown}")
    unset = sorted({e.api_key_env for m, e in endpoints.items()
                    if m in request.log.model_names and e.api_key_env and not os.environ.get(e.api_key_env)})
    if unset:
        raise DataError(f"pool.endpoints file {request.endpoints!r} names API key variable(s) {unset}, "
                        "which are not set in the environment")
    return OpenAIPool({m: endpoints[m] for m in request.log.model_names},
                      cache_path=request.cache_dir or None, max_concurrency=request.concurrency)


def price_ranked_skill(log: RoutingLog, low: float = 0.3, high: float = 0.8) -> dict[tuple[str, str], float]:
    """Simulated skill for reply-less logs: from `low` for the cheapest model to `high` for the
    dearest, the same on every dataset (a dry-run stand-in for live endpoints)."""
    names = sorted(log.model_names, key=lambda m: log.models[m].price_in + log.models[m].price_out)
    step = (high - low) / max(len(names) - 1, 1)
    return {(m, d): low + i * step for i, m in enumerate(names) for d in log.datasets}


register_pool(PoolSpec("openai", _openai, "live OpenAI-compatible endpoints (pool.endpoints)"))
register_pool(PoolSpec("replay", lambda req: ReplayPool(req.log), "the log's own replies and scores"))
register_pool(PoolSpec("simulated", lambda req: SimulatedPool(req.log.models, price_ranked_skill(req.log),
                                                               seed=req.seed),
                       "price-ranked skill for reply-less logs"))
