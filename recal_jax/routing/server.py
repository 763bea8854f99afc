"""Serve any pool as an OpenAI-compatible chat API on 127.0.0.1, with fault injection for tests.

    POST /v1/chat/completions   the `model` field picks the pool model; the last user message
                                is the query, matched to a record by question (exact, then
                                SQuAD-normalised); unmatched queries go through as bare queries
                                when the pool does not need records (SimulatedPool, OpenAIPool)
    GET  /v1/models
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import socket
import threading
import time
from typing import Iterator, Sequence

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from recal_jax.data.schema import DataError, RoutingLog, RoutingRecord
from recal_jax.routing.answers import normalize_answer
from recal_jax.routing.pools.base import Pool, estimate_tokens

LOCALHOST = "127.0.0.1"
_FAULTS = ("drop", "malformed", "slow")


@dataclasses.dataclass(frozen=True)
class FaultConfig:
    """Faults per request key (model, query): the i-th request of a key (0-based) gets
    `schedule[i]`, later ones are served normally. Entries: an HTTP status as a string
    ("429", "500", ...), "drop" (headers and part of the body, then the connection closes),
    "malformed" (HTTP 200 with broken JSON), "slow" (sleep `slow_s` first, then serve).
    `delay_s` delays every reply."""

    schedule: tuple[str, ...] = ()
    slow_s: float = 1.0
    delay_s: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "schedule", tuple(self.schedule))
        for f in self.schedule:
            if f not in _FAULTS and not (f.isdigit() and 400 <= int(f) <= 599):
                raise ValueError(f"unknown fault {f!r}; use an HTTP status 400-599 or one of {_FAULTS}")
        if self.slow_s < 0 or self.delay_s < 0:
            raise ValueError("slow_s and delay_s must be >= 0")

    @classmethod
    def fail_first(cls, n: int, status: int = 429, **kw) -> "FaultConfig":
        return cls(schedule=(str(status),) * n, **kw)


@dataclasses.dataclass
class ServerCounters:
    """requests: every POST to chat/completions; per_key: requests per (model, query);
    faults: injected faults by kind; served: successful completions."""

    requests: int = 0
    served: int = 0
    per_key: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    faults: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class _BadRequest(ValueError):
    """A malformed chat request, answered with a 400 that carries this message."""


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters with an ellipsis: what an error may echo of user input."""
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
             dict: "object"}
    return names.get(type(value), type(value).__name__)


def _text_of(content) -> str:
    """A message's text: a string, or a list of parts whose text parts ({"type": "text",
    "text": str}; a part without a type is a text part) are joined; other parts add nothing."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _BadRequest(f"message content must be a string or a list of parts, got {_json_type(content)}")
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise _BadRequest(f"content part {i} must be an object, got {_json_type(part)}")
        if part.get("type", "text") != "text":
            continue
        text = part.get("text")
        if not isinstance(text, str):
            raise _BadRequest(f"content part {i}: 'text' must be a string, got {_json_type(text)}")
        texts.append(text)
    return "".join(texts)


def _user_query(messages) -> str:
    """The text of the last user message, or _BadRequest."""
    if not isinstance(messages, list):
        raise _BadRequest("'messages' must be a list of message objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _BadRequest(f"messages[{i}] must be an object, got {_json_type(m)}")
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise _BadRequest("'messages' has no user message")
    return _text_of(users[-1].get("content"))


def _check_unicode(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadRequest(f"{what} is not valid Unicode (a lone surrogate escape)") from None


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


class _DroppedResponse(Response):
    """Promise a body, send half of it, return: the server closes the connection mid-reply."""

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
        await send({"type": "http.response.body", "body": b'{"id": "chatcmpl-drop", "cho', "more_body": True})


class RecordIndex:
    """Question -> record: exact match first, then SQuAD-normalised match."""

    def __init__(self, records: Sequence[RoutingRecord]):
        self.exact: dict[str, RoutingRecord] = {}
        self.normalised: dict[str, RoutingRecord] = {}
        for r in records:
            self.exact.setdefault(r.question, r)
            self.normalised.setdefault(normalize_answer(r.question), r)

    def find(self, query: str) -> RoutingRecord | None:
        return self.exact.get(query) or self.normalised.get(normalize_answer(query))


def _server_records(pool: Pool, records) -> Sequence[RoutingRecord]:
    """The records queries are matched against: `records` (a list or a RoutingLog), else the
    pool's own log when it has one, else none."""
    if records is None:
        log = getattr(pool, "log", None)
        return log.records if isinstance(log, RoutingLog) else ()
    if isinstance(records, RoutingLog):
        return records.records
    return records


def make_app(
    pool: Pool,
    records: Sequence[RoutingRecord] | RoutingLog | None = None,
    faults: FaultConfig | None = None,
) -> FastAPI:
    """The app; its `state.counters` (ServerCounters) counts requests and injected faults."""
    index = RecordIndex(_server_records(pool, records))
    counters = ServerCounters()
    app = FastAPI(title="recal-jax pool server")
    app.state.counters = counters
    app.get("/v1/models")(_models_endpoint(pool))
    app.post("/v1/chat/completions")(_chat_endpoint(pool, index, faults or FaultConfig(), counters))
    return app


def _models_endpoint(pool: Pool):
    async def list_models():
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "recal-jax"} for n in pool.model_names
        ]}

    return list_models


async def _read_request(request: Request) -> tuple[str, str] | JSONResponse:
    """(model, query) of a chat request, or the 400 error to answer with."""
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's limit
        return _error(400, "request body is not valid JSON", "invalid_request_error")
    try:
        if not isinstance(body, dict):
            raise _BadRequest("request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest("'model' must be a non-empty string")
        query = _user_query(body.get("messages"))
        _check_unicode(model, "'model'")
        _check_unicode(query, "the user message")
    except _BadRequest as e:
        return _error(400, str(e), "invalid_request_error")
    return model, query


async def _injected_fault(fault: str | None, faults: FaultConfig, counters: ServerCounters) -> Response | None:
    """The response of an injected fault, or None to serve the request ('slow' sleeps first)."""
    if fault is None:
        return None
    counters.faults[fault] += 1
    if fault.isdigit():
        return _error(int(fault), f"injected fault {fault}", "injected_fault")
    if fault == "drop":
        return _DroppedResponse()
    if fault == "malformed":
        return Response('{"id": "chatcmpl-bad", "choices": [{"message": ', media_type="application/json")
    await asyncio.sleep(faults.slow_s)  # "slow"
    return None


async def _completion(pool: Pool, index: RecordIndex, counters: ServerCounters, model: str, query: str):
    """Serve one chat completion from the pool (OpenAI's response format)."""
    if model not in pool.model_names:
        return _error(404, f"unknown model {clip(model)!r}; pool has {list(pool.model_names)}", "model_not_found")
    record = index.find(query)
    if record is None and pool.needs_record:
        return _error(400, "no record matches the question", "invalid_request_error")
    reply = await pool.call(model, query, record)
    if not reply.ok:
        return _error(502, reply.error or "pool call failed", "upstream_error")
    pt = reply.prompt_tokens or estimate_tokens(query)
    ct = reply.completion_tokens or estimate_tokens(reply.text)
    counters.served += 1
    return {
        "id": f"chatcmpl-{counters.requests}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
    }


def _chat_endpoint(pool: Pool, index: RecordIndex, faults: FaultConfig, counters: ServerCounters):
    async def chat_completions(request: Request):
        counters.requests += 1
        read = await _read_request(request)
        if isinstance(read, Response):
            return read
        model, query = read
        n = counters.per_key[read]
        counters.per_key[read] += 1
        fault = faults.schedule[n] if n < len(faults.schedule) else None
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        injected = await _injected_fault(fault, faults, counters)
        if injected is not None:
            return injected
        return await _completion(pool, index, counters, model, query)

    return chat_completions


def _check_host(host: str) -> None:
    if host not in (LOCALHOST, "localhost"):
        raise ValueError(f"the pool server binds only {LOCALHOST}, got host={host!r}")


def serve(pool: Pool, host: str = LOCALHOST, port: int = 8000, *, records=None,
          faults: FaultConfig | None = None, log_level: str = "info") -> None:
    """Blocking: serve `pool` until interrupted."""
    _check_host(host)
    uvicorn.run(make_app(pool, records, faults), host=host, port=int(port), log_level=log_level)


@dataclasses.dataclass
class ServerHandle:
    base_url: str  # e.g. http://127.0.0.1:PORT/v1 (what OpenAI clients take)
    port: int
    app: FastAPI

    @property
    def counters(self) -> ServerCounters:
        return self.app.state.counters


@contextlib.contextmanager
def running_server(pool: Pool, *, records=None, faults: FaultConfig | None = None,
                   log_level: str = "critical", startup_timeout_s: float = 20.0) -> Iterator[ServerHandle]:
    """Serve on a free 127.0.0.1 port from a background thread for the duration of the block."""
    app = make_app(pool, records, faults)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOCALHOST, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("pool server did not start")
        time.sleep(0.01)
    try:
        yield ServerHandle(base_url=f"http://{LOCALHOST}:{port}/v1", port=port, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
        sock.close()


def load_served_log(path, pool_path=None) -> RoutingLog:
    """The log `main` serves: a directory in the README's "Bring your own log" format (train
    and test records, pool.json; read by load_jsonl_dir), both splits' records together; or one
    JSONL file, whose pool is `pool_path` (a pool.json) or its header line."""
    import pathlib

    from recal_jax.data.jsonl import read_log_jsonl, read_pool_json
    from recal_jax.data.loaders import load_jsonl_dir

    if pathlib.Path(path).is_dir():
        if pool_path is not None:
            raise DataError(f"--pool is for a single JSONL file; the directory {path} has its own pool.json")
        suite = load_jsonl_dir(path)
        return suite.train.subset(suite.train.records + suite.test.records, name=pathlib.Path(path).name)
    return read_log_jsonl(path, models=None if pool_path is None else read_pool_json(pool_path))


def main(argv: list[str] | None = None) -> None:
    """`python -m recal_jax.routing.server LOG [--pool pool.json] [--port 8000]`: serve a replay
    pool over a routing log as an OpenAI-compatible endpoint on 127.0.0.1. LOG is a log
    directory (train/test records and pool.json, as in the README's "Bring your own log") or
    one JSONL file (recal_jax.data.jsonl) with a header line or --pool. A bad log is one line
    on stderr and exit status 2."""
    import argparse
    import sys

    from recal_jax.routing.pools import ReplayPool

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("log", help="log directory (train/test + pool.json) or JSONL file")
    parser.add_argument("--pool", default=None, help="pool.json of a JSONL file without a header line")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    try:
        log = load_served_log(args.log, args.pool)
    except DataError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    serve(ReplayPool(log), port=args.port, records=log.records)


if __name__ == "__main__":
    main()
