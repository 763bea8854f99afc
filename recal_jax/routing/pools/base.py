"""The pool interface: `await pool.call(model, query, record) -> PoolReply`, never raising.

Model output is untrusted (the policy writes the model name and the query), so every
problem a call can have (unknown model, missing record, HTTP failure) comes back as a
reply with ok=False and an error message, not as an exception.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import dataclasses
import time
import weakref
from typing import Mapping, Sequence

# estimate_tokens / price_usd live with the log's cost rule; re-exported for the pools.
from recal_jax.data.schema import ModelInfo, RoutingRecord, estimate_tokens, price_usd  # noqa: F401


@dataclasses.dataclass(frozen=True)
class PoolReply:
    """One model call's outcome.

    cost_usd is the nominal price of the call (what the route reward uses), also for cache
    hits; money actually spent is tracked in the pool's stats. tokens = prompt + completion.
    """

    text: str
    cost_usd: float
    tokens: int
    latency_s: float
    ok: bool
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


def error_reply(message: str, latency_s: float = 0.0) -> PoolReply:
    return PoolReply(
        text=f"[error] {message}", cost_usd=0.0, tokens=0, latency_s=latency_s, ok=False, error=message
    )


class Pool(abc.ABC):
    """Base class: model table, unknown-model check, per-event-loop concurrency limit.

    Subclasses implement `_call(model, query, record) -> PoolReply` (the model is known).
    `needs_record` says whether replies depend on a RoutingRecord (replay) or can be made
    from the query alone (the server uses it to decide what to do with unknown questions).
    """

    needs_record: bool = True

    def __init__(self, models: Mapping[str, ModelInfo], max_concurrency: int = 16):
        if not models:
            raise ValueError("a pool needs at least one model")
        for name, info in models.items():
            if not isinstance(info, ModelInfo):
                raise ValueError(f"model {name!r}: expected ModelInfo, got {type(info).__name__}")
            if info.name != name:
                raise ValueError(f"model key {name!r} differs from ModelInfo.name {info.name!r}")
        if int(max_concurrency) < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self._models = dict(models)
        self.max_concurrency = int(max_concurrency)
        # asyncio primitives belong to one event loop; sync callers make a loop per batch.
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def models(self) -> dict[str, ModelInfo]:
        return dict(self._models)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self._models)

    def describe(self) -> dict[str, ModelInfo]:
        return self.models

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._semaphores.get(loop)
        if sem is None:
            sem = asyncio.Semaphore(self.max_concurrency)
            self._semaphores[loop] = sem
        return sem

    async def call(self, model: str, query: str, record: RoutingRecord | None = None) -> PoolReply:
        if model not in self._models:
            return error_reply(f"unknown model {model!r}; pool has {list(self._models)}")
        if not isinstance(query, str):
            return error_reply(f"query must be a string, got {type(query).__name__}")
        start = time.perf_counter()
        async with self._semaphore():
            try:
                reply = await self._call(model, query, record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a pool bug must not kill a rollout batch
                reply = error_reply(f"{type(exc).__name__}: {exc}")
        if reply.latency_s == 0.0:
            reply = dataclasses.replace(reply, latency_s=time.perf_counter() - start)
        return reply

    async def aclose(self) -> None:
        """Release resources bound to the running event loop (this base class holds none)."""

    @abc.abstractmethod
    async def _call(self, model: str, query: str, record: RoutingRecord | None) -> PoolReply:
        """Answer a call to a known model."""


Request = tuple  # (model, query, record | None)


async def call_many(pool: Pool, requests: Sequence[Request]) -> list[PoolReply]:
    """All requests concurrently (the pool's semaphore bounds the concurrency); replies in order."""
    for i, req in enumerate(requests):
        if len(req) != 3:
            raise ValueError(f"request {i} must be (model, query, record), got {req!r}")
    return list(await asyncio.gather(*(pool.call(m, q, r) for m, q, r in requests)))


async def _call_many_and_close(pool: Pool, requests: Sequence[Request]) -> list[PoolReply]:
    try:
        return await call_many(pool, requests)
    finally:
        await pool.aclose()


def call_many_sync(pool: Pool, requests: Sequence[Request]) -> list[PoolReply]:
    """`call_many` for callers outside asyncio. Inside a running loop it runs on a helper thread."""
    if not requests:
        return []
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_call_many_and_close(pool, requests))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
        return ex.submit(asyncio.run, _call_many_and_close(pool, requests)).result()
