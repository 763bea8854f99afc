"""Reference routers that only some suites have, registered per suite (e.g. the compose
world's scripted decomposers). A suite's module registers a function
`(test_log, pool, seed, suite_options) -> {name: SuiteReference}`; the run's evaluation adds
them to the reference routers every suite has (single models, oracle, classical routers)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from recal_jax.data.schema import RoutingLog
from recal_jax.evaluation.router_result import RouterResult
from recal_jax.routing.pools.base import Pool


@dataclasses.dataclass(frozen=True)
class SuiteReference:
    """A reference router's RouterResult and what summary.json keeps of it (its to_json plus extras)."""

    result: RouterResult
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {**self.result.to_json(), **self.extra}


ReferenceFn = Callable[[RoutingLog, Pool, int, Any], dict[str, SuiteReference]]
SUITE_REFERENCES: dict[str, ReferenceFn] = {}


def register_references(suite: str, fn: ReferenceFn) -> ReferenceFn:
    if suite in SUITE_REFERENCES:
        raise ValueError(f"suite {suite!r} already has registered references")
    SUITE_REFERENCES[suite] = fn
    return fn


def suite_references(suite: str, test_log: RoutingLog, pool: Pool, seed: int, options: Any) -> dict[str, SuiteReference]:
    """The registered references of `suite` on `test_log` ({} for a suite without any)."""
    fn = SUITE_REFERENCES.get(suite)
    return {} if fn is None else fn(test_log, pool, seed, options)
