"""LLM pools: one async interface over replayed logs, simulated models and live endpoints."""

from recal_jax.routing.pools.base import (
    Pool,
    PoolReply,
    call_many,
    call_many_sync,
    error_reply,
    estimate_tokens,
    price_usd,
)
from recal_jax.routing.pools.cache import ReplyCache, cache_key
from recal_jax.routing.pools.openai_pool import Endpoint, OpenAIPool, PoolStats
from recal_jax.routing.pools.replay import ReplayPool
from recal_jax.routing.pools.simulated import SimulatedPool

import recal_jax.routing.pools.compose_pool  # noqa: E402,F401  (registers the pool "compose")

__all__ = [
    "Endpoint",
    "OpenAIPool",
    "Pool",
    "PoolReply",
    "PoolStats",
    "ReplayPool",
    "ReplyCache",
    "SimulatedPool",
    "cache_key",
    "call_many",
    "call_many_sync",
    "error_reply",
    "estimate_tokens",
    "price_usd",
]
