"""OpenAIPool end to end through the local pool server, with injected faults."""

import json
import urllib.error
import urllib.request

import pytest

from recal_jax.data.schema import ModelInfo, RoutingLog, RoutingRecord
from recal_jax.routing.pools import Endpoint, OpenAIPool, ReplayPool, SimulatedPool, call_many_sync
from recal_jax.routing.server import FaultConfig, running_server, serve

MODELS = {
    "small": ModelInfo("small", price_in=0.5, price_out=1.5),
    "large": ModelInfo("large", price_in=3.0, price_out=15.0),
}
SIM = SimulatedPool(MODELS, {}, default_skill=0.5, seed=7)


def openai_pool(base_url, **kw):
    eps = {m: Endpoint(base_url, m, i.price_in, i.price_out) for m, i in MODELS.items()}
    kw = {"max_retries": 5, "backoff_base_s": 0.002, "backoff_max_s": 0.01, "timeout_s": 0.3,
          "max_concurrency": 8, "jitter_seed": 0, **kw}
    return OpenAIPool(eps, **kw)


def requests(n):
    return [("small" if i % 2 else "large", f"question number {i}?", None) for i in range(n)]


def test_every_fault_retried_nothing_lost_and_cache_rerun_is_free(tmp_path):
    schedule = ("429", "500", "slow", "drop", "malformed")  # each key fails 5 times, then succeeds
    reqs = requests(6)
    direct = call_many_sync(SIM, reqs)  # what the backend pool answers, without HTTP
    with running_server(SIM, faults=FaultConfig(schedule=schedule, slow_s=0.6)) as srv:
        pool = openai_pool(srv.base_url, cache_path=tmp_path / "cache.sqlite")
        replies = call_many_sync(pool, reqs)
        assert [r.ok for r in replies] == [True] * len(reqs)
        assert [r.text for r in replies] == [d.text for d in direct]  # all answered, in order
        for r, d, (m, q, _) in zip(replies, direct, reqs):
            # usage from the server: the backend's token counts; cost from the usage field
            assert (r.prompt_tokens, r.completion_tokens) == (d.prompt_tokens, d.completion_tokens)
            info = MODELS[m]
            assert r.cost_usd == pytest.approx((d.prompt_tokens * info.price_in + d.completion_tokens * info.price_out) / 1e6)
        n, k = len(reqs), len(schedule)
        assert srv.counters.requests == n * (k + 1)
        assert all(v == k + 1 for v in srv.counters.per_key.values())
        assert dict(srv.counters.faults) == {f: n for f in schedule}
        s = pool.stats
        assert (s.calls, s.http_requests, s.retries, s.failures, s.cache_hits) == (n, n * (k + 1), n * k, 0, 0)
        spent = s.cost_usd
        assert spent == pytest.approx(sum(r.cost_usd for r in replies))

        # rerun with a fresh pool on the same cache file: no HTTP request reaches the server
        pool2 = openai_pool(srv.base_url, cache_path=tmp_path / "cache.sqlite")
        again = call_many_sync(pool2, reqs)
        assert srv.counters.requests == n * (k + 1)
        assert [r.text for r in again] == [r.text for r in replies]
        assert all(r.cached and r.ok for r in again)
        assert [r.cost_usd for r in again] == pytest.approx([r.cost_usd for r in replies])  # nominal price
        assert (pool2.stats.cache_hits, pool2.stats.http_requests, pool2.stats.cost_usd) == (n, 0, 0.0)


def test_retries_exhausted_become_failed_replies():
    with running_server(SIM, faults=FaultConfig.fail_first(4, status=503)) as srv:
        pool = openai_pool(srv.base_url, max_retries=2)
        replies = call_many_sync(pool, requests(3))
        assert all(not r.ok and "3 attempt(s)" in r.error and "503" in r.error for r in replies)
        assert srv.counters.requests == 9
        assert (pool.stats.failures, pool.stats.retries, pool.stats.cost_usd) == (3, 6, 0.0)
        # the 4th attempt of each key is still a fault, the 5th is served
        pool = openai_pool(srv.base_url, max_retries=1)
        replies = call_many_sync(pool, requests(3))
        assert all(r.ok for r in replies) and srv.counters.requests == 9 + 3 * 2


def test_client_errors_are_not_retried():
    with running_server(SIM) as srv:
        eps = {"ghost": Endpoint(srv.base_url, "no-such-model")}
        pool = OpenAIPool(eps, max_retries=4, backoff_base_s=0.001)
        (r,) = call_many_sync(pool, [("ghost", "hi", None)])
        assert not r.ok and "404" in r.error
        assert srv.counters.requests == 1 and pool.stats.retries == 0


def test_replay_pool_behind_server_matches_records():
    recs = [RoutingRecord(id=f"r{i}", dataset="nq", question=f"Who wrote Book {i}?",
                          golden_answers=(f"Author {i}",), scores={"small": 1.0, "large": 0.0},
                          costs={"small": 0.0, "large": 0.0}) for i in range(3)]
    log = RoutingLog(records=recs, models=MODELS, datasets=("nq",))
    replay = ReplayPool(log)
    with running_server(replay) as srv:
        pool = openai_pool(srv.base_url, max_retries=0)
        replies = call_many_sync(pool, [
            ("small", "Who wrote Book 1?", None),          # exact
            ("small", "  who WROTE book 2 ", None),        # normalised
            ("large", "Who wrote Book 0?", None),
            ("small", "Who wrote something else?", None),  # no record: replay cannot answer
        ])
        assert [r.ok for r in replies] == [True, True, True, False]
        assert replies[0].text == "Author 1" and replies[1].text == "Author 2"
        assert "author 0" not in replies[2].text.lower()
        assert "400" in replies[3].error
        with urllib.request.urlopen(srv.base_url + "/models", timeout=5) as resp:
            listed = [m["id"] for m in json.loads(resp.read())["data"]]
        assert listed == ["small", "large"]


def test_delay_and_concurrency_through_server():
    import time

    with running_server(SIM, faults=FaultConfig(delay_s=0.2)) as srv:
        pool = openai_pool(srv.base_url, timeout_s=5.0, max_concurrency=8)
        t0 = time.perf_counter()
        replies = call_many_sync(pool, requests(8))
        assert all(r.ok for r in replies)
        assert time.perf_counter() - t0 < 8 * 0.2 * 0.75  # concurrent, not serial


def test_serve_binds_only_localhost():
    with pytest.raises(ValueError, match="127.0.0.1"):
        serve(SIM, host="0.0.0.0", port=8123)
    with pytest.raises(ValueError, match="unknown fault"):
        FaultConfig(schedule=("explode",))


# ---------------------------------------------------------------- malformed requests: 400 with a JSON error


def _post(base_url, body, timeout=5):
    """(status, parsed JSON body) of a raw POST to chat/completions."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base_url + "/chat/completions", data=data,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _user(content):
    return {"model": "small", "messages": [{"role": "user", "content": content}]}


MALFORMED = [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b'{"model": "small", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "not valid JSON"),
    ([1, 2], "must be a JSON object"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "'model' must be a non-empty string"),
    ({"model": 7, "messages": [{"role": "user", "content": "hi"}]}, "'model' must be a non-empty string"),
    ({"model": "small", "messages": "hi"}, "'messages' must be a list"),
    ({"model": "small", "messages": ["hi"]}, "messages[0] must be an object, got string"),
    ({"model": "small", "messages": [{"role": "system", "content": "hi"}]}, "no user message"),
    (_user(12), "content must be a string or a list of parts, got number"),
    (_user(None), "content must be a string or a list of parts, got null"),
    (_user(["hi"]), "content part 0 must be an object, got string"),
    (_user([{"type": "text", "text": "a"}, {"type": "text", "text": 5}]),
     "content part 1: 'text' must be a string, got number"),
    (_user([{"type": "text", "text": None}]), "'text' must be a string, got null"),
    (_user([{"text": ["a"]}]), "'text' must be a string, got array"),
    (_user("\ud800"), "not valid Unicode"),
]


def test_every_malformed_request_is_a_400_with_a_json_error():
    with running_server(SIM) as srv:
        for body, message in MALFORMED:
            status, reply = _post(srv.base_url, body)
            assert status == 400, (body[:80], reply)
            assert reply["error"]["type"] == "invalid_request_error" and message in reply["error"]["message"]
        # image parts add no text; the text parts are the query
        status, reply = _post(srv.base_url, _user([{"type": "image_url", "image_url": {"url": "x"}},
                                                   {"type": "text", "text": "question number 1?"}]))
        assert status == 200 and reply["choices"][0]["message"]["content"]
        assert srv.counters.served == 1


def test_an_unknown_model_is_echoed_cut_short():
    with running_server(SIM) as srv:
        status, reply = _post(srv.base_url, {"model": "m" * 100_000, "messages": [{"role": "user", "content": "hi"}]})
    message = reply["error"]["message"]
    assert status == 404 and reply["error"]["type"] == "model_not_found"
    assert "m" * 80 + "..." in message and "m" * 81 not in message
    assert len(message) < 200


def test_serves_a_log_directory_in_the_readme_format(tmp_path):
    """train/test records without a header line and a separate pool.json."""
    from recal_jax.routing.server import load_served_log

    rec = lambda i, q, s: json.dumps({"id": i, "dataset": "trivia", "question": q, "golden_answers": [],  # noqa: E731
                                      "scores": {"small": s, "large": 1}})
    (tmp_path / "train.jsonl").write_text(rec("a", "Who wrote Hamlet?", 1) + "\n")
    (tmp_path / "test.jsonl").write_text(rec("b", "Who painted The Night Watch?", 0) + "\n")
    (tmp_path / "pool.json").write_text(json.dumps({"small": {"price_in": 0.1, "price_out": 0.2},
                                                    "large": {"price_in": 2, "price_out": 2}}))
    log = load_served_log(tmp_path)
    assert [r.id for r in log.records] == ["a", "b"] and log.model_names == ("small", "large")
    one = load_served_log(tmp_path / "test.jsonl", tmp_path / "pool.json")  # one headerless file and --pool
    assert [r.id for r in one.records] == ["b"] and one.model_names == log.model_names
    with pytest.raises(ValueError, match="no routing_log header"):
        load_served_log(tmp_path / "test.jsonl")
    with running_server(ReplayPool(log), records=log) as srv:
        status, reply = _post(srv.base_url, {"model": "large", "messages": [
            {"role": "user", "content": "Who painted The Night Watch?"}]})
        assert status == 200 and reply["model"] == "large"
        status, _ = _post(srv.base_url, {"model": "large", "messages": [{"role": "user", "content": "unknown?"}]})
        assert status == 400  # replay needs a logged record
