"""OpenAIPool: live OpenAI-compatible endpoints with retries, a disk cache and cost accounting.

API keys are read only from the environment variables the endpoints name, when a client is
made; they are never stored on the pool, printed, logged or cached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
import weakref
from typing import Mapping

import openai

from recal_jax.data.schema import ModelInfo
from recal_jax.routing.pools.base import Pool, PoolReply, error_reply, estimate_tokens, price_usd
from recal_jax.routing.pools.cache import ReplyCache, cache_key

_LOCAL_KEY = "EMPTY"  # what keyless (local) endpoints get, so a real OPENAI_API_KEY never leaks there


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where one pool model lives. Prices: USD per 1M prompt / completion tokens.
    api_key_env: NAME of the environment variable holding the key (None: keyless server)."""

    base_url: str
    model_id: str
    price_in: float = 0.0
    price_out: float = 0.0
    api_key_env: str | None = None
    description: str = ""


@dataclasses.dataclass
class PoolStats:
    """calls: pool.call invocations; http_requests: attempts sent; cost_usd: money spent
    (cache hits add 0); failures: calls that still failed after all retries."""

    calls: int = 0
    cache_hits: int = 0
    http_requests: int = 0
    retries: int = 0
    failures: int = 0
    cost_usd: float = 0.0


class _MalformedReply(Exception):
    pass


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return isinstance(exc, (openai.APIConnectionError, openai.APIResponseValidationError, _MalformedReply, ValueError))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} ({type(exc).__name__})"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection error"
    if isinstance(exc, (ValueError, _MalformedReply, openai.APIResponseValidationError)):
        return f"malformed response ({type(exc).__name__})"
    return type(exc).__name__


def _extract(resp) -> tuple[str, int | None, int | None]:
    """(text, prompt_tokens, completion_tokens) of a chat completion; raises on malformed ones."""
    try:
        text = resp.choices[0].message.content
    except (AttributeError, IndexError, TypeError) as exc:
        raise _MalformedReply(f"no choices[0].message.content: {exc}") from exc
    if not isinstance(text, str):
        raise _MalformedReply("message content is not a string")
    usage = getattr(resp, "usage", None)
    pt = getattr(usage, "prompt_tokens", None)
    ct = getattr(usage, "completion_tokens", None)
    return text, pt if isinstance(pt, int) else None, ct if isinstance(ct, int) else None


class OpenAIPool(Pool):
    """Chat-completion calls to per-model OpenAI-compatible endpoints.

    Each call: disk-cache lookup (key: model, model id, query, system prompt, sampling
    params; a hit costs nothing and sends nothing), then up to 1 + max_retries attempts,
    retrying 408/409/429/5xx, timeouts, connection errors and malformed replies with
    exponential backoff min(backoff_max_s, backoff_base_s * 2**attempt) times a uniform
    jitter in [0.5, 1.5) (at least the server's Retry-After, capped). The client's own
    retries are off. A call that still fails returns ok=False and counts in stats.failures.
    Reply cost = (prompt_tokens * price_in + completion_tokens * price_out) / 1e6 from the
    usage field (estimated from characters when absent).
    """

    needs_record = False

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        *,
        cache_path: str | os.PathLike | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 512,
        system_prompt: str | None = None,
        jitter_seed: int | None = None,
    ):
        for name, ep in endpoints.items():
            if not isinstance(ep, Endpoint):
                raise ValueError(f"endpoint of {name!r} must be an Endpoint, got {type(ep).__name__}")
            if ep.api_key_env is not None and not os.environ.get(ep.api_key_env):
                raise ValueError(f"environment variable {ep.api_key_env!r} (API key for model {name!r}) is not set")
        models = {
            n: ModelInfo(n, price_in=e.price_in, price_out=e.price_out, description=e.description)
            for n, e in endpoints.items()
        }
        super().__init__(models, max_concurrency=max_concurrency)
        if timeout_s <= 0 or max_retries < 0 or backoff_base_s < 0 or backoff_max_s < 0 or max_tokens < 1:
            raise ValueError(
                f"need timeout_s > 0, max_retries >= 0, backoffs >= 0, max_tokens >= 1; got {timeout_s}, "
                f"{max_retries}, {backoff_base_s}, {backoff_max_s}, {max_tokens}"
            )
        self.endpoints = dict(endpoints)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.sampling = {"temperature": float(temperature), "top_p": float(top_p), "max_tokens": int(max_tokens)}
        self.system_prompt = system_prompt
        self.cache = ReplyCache(cache_path) if cache_path is not None else None
        self.stats = PoolStats()
        self._rng = random.Random(jitter_seed)
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        eps = {n: (e.base_url, e.model_id, e.api_key_env) for n, e in self.endpoints.items()}
        return f"OpenAIPool(endpoints={eps}, cache={self.cache!r})"

    def _client(self, ep: Endpoint) -> openai.AsyncOpenAI:
        per_loop = self._clients.setdefault(asyncio.get_running_loop(), {})
        key = (ep.base_url, ep.api_key_env)
        if key not in per_loop:
            api_key = os.environ.get(ep.api_key_env, "") if ep.api_key_env else _LOCAL_KEY
            per_loop[key] = openai.AsyncOpenAI(
                base_url=ep.base_url, api_key=api_key, timeout=self.timeout_s, max_retries=0
            )
        return per_loop[key]

    async def aclose(self) -> None:
        """Close the HTTP clients bound to the running event loop."""
        per_loop = self._clients.pop(asyncio.get_running_loop(), {})
        for client in per_loop.values():
            await client.close()

    def _backoff_s(self, attempt: int, exc: BaseException) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt) * (0.5 + self._rng.random())
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            delay = max(delay, min(float(retry_after), self.backoff_max_s)) if retry_after else delay
        except ValueError:
            pass
        return delay

    def _messages(self, query: str) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": query}]

    async def _call(self, model, query, record):
        ep = self.endpoints[model]
        info = self._models[model]
        self.stats.calls += 1
        start = time.perf_counter()
        key = cache_key({"model": model, "model_id": ep.model_id, "query": query,
                         "system": self.system_prompt, **self.sampling})
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                return PoolReply(
                    text=hit["text"], cost_usd=price_usd(info, hit["prompt_tokens"], hit["completion_tokens"]),
                    tokens=hit["prompt_tokens"] + hit["completion_tokens"], latency_s=time.perf_counter() - start,
                    ok=True, prompt_tokens=hit["prompt_tokens"], completion_tokens=hit["completion_tokens"],
                    cached=True,
                )
        client = self._client(ep)
        last: BaseException | None = None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            attempts += 1
            self.stats.http_requests += 1
            try:
                resp = await client.chat.completions.create(
                    model=ep.model_id, messages=self._messages(query), **self.sampling
                )
                text, pt, ct = _extract(resp)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                last = exc
                if not _retryable(exc) or attempt == self.max_retries:
                    break
                self.stats.retries += 1
                await asyncio.sleep(self._backoff_s(attempt, exc))
                continue
            pt = pt if pt is not None else estimate_tokens(query)
            ct = ct if ct is not None else estimate_tokens(text)
            cost = price_usd(info, pt, ct)
            self.stats.cost_usd += cost
            if self.cache is not None:
                self.cache.put(key, {"text": text, "prompt_tokens": pt, "completion_tokens": ct})
            return PoolReply(
                text=text, cost_usd=cost, tokens=pt + ct, latency_s=time.perf_counter() - start, ok=True,
                prompt_tokens=pt, completion_tokens=ct,
            )
        self.stats.failures += 1
        return error_reply(
            f"model {model!r} failed after {attempts} attempt(s): {_describe(last)}",
            latency_s=time.perf_counter() - start,
        )
