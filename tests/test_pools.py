"""Pools: replay (logged and score-only), simulated, the batch helpers, the cache, OpenAIPool setup."""

import asyncio
import dataclasses
import math
import re
import socket
import string
import time

import pytest
from hypothesis import given, strategies as st

from recal_jax.data.schema import ModelInfo, RoutingLog, RoutingRecord
from recal_jax.routing.pools import (
    Endpoint,
    OpenAIPool,
    Pool,
    PoolReply,
    ReplayPool,
    ReplyCache,
    SimulatedPool,
    cache_key,
    call_many,
    call_many_sync,
)

MODELS = {
    "small": ModelInfo("small", price_in=0.1, price_out=0.2),
    "large": ModelInfo("large", price_in=2.0, price_out=6.0),
}


def ref_normalize(s):  # SQuAD normalisation, written out independently of the code under test
    s = s.lower()
    s = "".join(c for c in s if c not in string.punctuation)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def ref_sub_em(reply, golds):
    return any(ref_normalize(g) and ref_normalize(g) in ref_normalize(reply) for g in golds)


def ref_cost(info, query, reply):
    n_in, n_out = max(1, math.ceil(len(query) / 4)), max(1, math.ceil(len(reply) / 4))
    return (n_in * info.price_in + n_out * info.price_out) / 1e6


def make_log(score_only=True, n=12):
    recs = []
    for i in range(n):
        kw = {}
        if not score_only:
            kw = dict(responses={"small": f"maybe {i}", "large": f"surely answer-{i}"},
                      costs={"small": 0.001 * i, "large": 0.01 * i})
        recs.append(RoutingRecord(
            id=f"r{i}", dataset="nq" if i % 2 else "hq", question=f"What is item {i}?",
            golden_answers=(f"answer-{i}", f"alt {i}"),
            scores={"small": float(i % 3 == 0), "large": 0.5 if i % 4 else 0.4}, **kw))
    return RoutingLog(records=recs, models=MODELS, datasets=("nq", "hq"), protocol="single_call")


def run(coro):
    return asyncio.run(coro)


def test_replay_logged_reply_and_cost():
    log = make_log(score_only=False)
    pool = ReplayPool(log)
    for r in log.records:
        for m in MODELS:
            rep = run(pool.call(m, "anything", r))
            assert rep.ok and rep.error is None
            assert rep.text == r.responses[m]
            assert rep.cost_usd == pytest.approx(r.costs[m])


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_replay_score_only(threshold):
    log = make_log()
    pool = ReplayPool(log, correct_threshold=threshold)
    for r in log.records:
        for m, info in MODELS.items():
            rep = run(pool.call(m, r.question, r))
            assert rep.ok
            if r.scores[m] >= threshold:
                assert rep.text == r.golden_answers[0]
            else:
                assert rep.text.strip() and not ref_sub_em(rep.text, r.golden_answers), rep.text
            # deterministic; cost is the log's: prices x ceil(chars/4) of question and first gold
            assert run(pool.call(m, r.question, r)).text == rep.text
            assert rep.cost_usd == pytest.approx(ref_cost(info, r.question, r.golden_answers[0]))
            assert rep.cost_usd == pytest.approx(log.call_cost(r, m))


def test_replay_cost_is_the_logs_whatever_the_query():
    # logged replies without logged costs: reply length, not the policy's query wording
    recs = [dataclasses.replace(r, costs=None) for r in make_log(score_only=False).records]
    log = dataclasses.replace(make_log(), records=tuple(recs))
    pool = ReplayPool(log)
    for r in log.records:
        for m, info in MODELS.items():
            short, long = run(pool.call(m, "q", r)), run(pool.call(m, "a much longer query " * 20, r))
            expected = ref_cost(info, r.question, r.responses[m])
            assert short.cost_usd == pytest.approx(expected) and long.cost_usd == pytest.approx(expected)
            assert log.call_cost(r, m) == pytest.approx(expected)


def test_replay_wrong_answers_vary_and_come_from_the_dataset():
    log = make_log(n=40)
    pool = ReplayPool(log, correct_threshold=1.0)
    wrong = [pool.reply_text("large", r) for r in log.records]  # large never scores 1
    assert len(set(wrong)) > 5
    golds = {r.golden_answers[0] for r in log.records}
    assert sum(w in golds for w in wrong) == len(wrong)  # plausible: other instances' gold answers


def test_errors_are_replies_not_exceptions():
    log = make_log()
    pool = ReplayPool(log)
    rep = run(pool.call("gpt-9", "q", log.records[0]))
    assert not rep.ok and "unknown model 'gpt-9'" in rep.error and "small" in rep.error and "large" in rep.error
    rep = run(pool.call("small", "q", None))
    assert not rep.ok and "RoutingRecord" in rep.error
    bare = RoutingRecord(id="x", dataset="nq", question="q", golden_answers=("a",), scores={})
    rep = run(pool.call("small", "q", bare))
    assert not rep.ok and "no logged reply" in rep.error
    assert isinstance(rep, PoolReply) and rep.text.startswith("[error]")
    assert run(pool.call("small", 123, log.records[0])).ok is False


def sim_records(n, dataset="nq"):
    return [RoutingRecord(id=f"{dataset}-{i}", dataset=dataset, question=f"q{i}",
                          golden_answers=(f"gold {i}",), scores={}) for i in range(n)]


def test_simulated_accuracy_matches_skill():
    skill = {("small", "nq"): 0.2, ("large", "nq"): 0.85}
    pool = SimulatedPool(MODELS, skill, seed=3)
    recs = sim_records(1500)
    for m, p in (("small", 0.2), ("large", 0.85)):
        replies = call_many_sync(pool, [(m, r.question, r) for r in recs])
        correct = [rep.text == r.golden_answers[0] for rep, r in zip(replies, recs)]
        acc = sum(correct) / len(recs)
        assert abs(acc - p) < 4 * math.sqrt(p * (1 - p) / len(recs))
        for rep, r, c in zip(replies, recs, correct):
            assert rep.ok and (c or not ref_sub_em(rep.text, r.golden_answers))
            assert rep.cost_usd == pytest.approx(ref_cost(MODELS[m], r.question, rep.text))


def test_simulated_determinism_and_seed():
    skill = {("small", "nq"): 0.5, ("large", "nq"): 0.5}
    recs = sim_records(200)
    reqs = [("small", r.question, r) for r in recs]
    a = [x.text for x in call_many_sync(SimulatedPool(MODELS, skill, seed=1), reqs)]
    b = [x.text for x in call_many_sync(SimulatedPool(MODELS, skill, seed=1), reqs)]
    c = [x.text for x in call_many_sync(SimulatedPool(MODELS, skill, seed=2), reqs)]
    assert a == b and a != c


@given(p=st.sampled_from([0.0, 1.0]), seed=st.integers(0, 10**6))
def test_simulated_extreme_skills(p, seed):
    pool = SimulatedPool(MODELS, {("small", "nq"): p}, seed=seed)
    recs = sim_records(10)
    for rep, r in zip(call_many_sync(pool, [("small", r.question, r) for r in recs]), recs):
        assert (rep.text == r.golden_answers[0]) == (p == 1.0)


def test_simulated_missing_skill_and_bare_query():
    pool = SimulatedPool(MODELS, {("small", "nq"): 1.0})
    rep = run(pool.call("large", "q", sim_records(1)[0]))
    assert not rep.ok and "no skill" in rep.error
    pool = SimulatedPool(MODELS, {}, default_skill=1.0)
    rep = run(pool.call("large", "who?", None))
    assert rep.ok and rep.text  # no gold known: a distractor
    with pytest.raises(ValueError, match="unknown model"):
        SimulatedPool(MODELS, {("nope", "nq"): 0.5})
    with pytest.raises(ValueError, match="probability"):
        SimulatedPool(MODELS, {("small", "nq"): 1.5})


class InFlightPool(Pool):
    """Counts concurrent calls."""

    needs_record = False

    def __init__(self, limit):
        super().__init__(MODELS, max_concurrency=limit)
        self.now = self.peak = 0

    async def _call(self, model, query, record):
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.02)
        self.now -= 1
        return PoolReply(text=query.upper(), cost_usd=0.0, tokens=1, latency_s=0.0, ok=True)


def test_call_many_order_and_concurrency_limit():
    pool = InFlightPool(limit=3)
    reqs = [("small", f"q{i}", None) for i in range(12)]
    replies = call_many_sync(pool, reqs)
    assert [r.text for r in replies] == [f"Q{i}" for i in range(12)]
    assert pool.peak == 3
    assert all(r.latency_s > 0 for r in replies)


def test_call_many_sync_inside_running_loop():
    pool = InFlightPool(limit=4)

    async def main():
        inner = call_many_sync(pool, [("small", "a", None)])  # from inside a loop: helper thread
        outer = await call_many(pool, [("large", "b", None), ("small", "c", None)])
        return inner + outer

    assert [r.text for r in run(main())] == ["A", "B", "C"]
    with pytest.raises(ValueError, match="request 0"):
        call_many_sync(pool, [("small", "a")])


def test_reply_cache_persists(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    k1 = cache_key({"model": "m", "query": "q", "temperature": 0.0})
    assert k1 == cache_key({"temperature": 0.0, "query": "q", "model": "m"})
    assert k1 != cache_key({"model": "m", "query": "q", "temperature": 0.5})
    c = ReplyCache(path)
    assert c.get(k1) is None
    c.put(k1, {"text": "héllo", "prompt_tokens": 3})
    c.close()
    c2 = ReplyCache(path)
    assert c2.get(k1) == {"text": "héllo", "prompt_tokens": 3} and len(c2) == 1


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_openai_pool_key_hygiene_and_unreachable_endpoint(monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("RECAL_TEST_KEY", secret)
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    eps = {"small": Endpoint(url, "m-small", 1.0, 2.0, api_key_env="RECAL_TEST_KEY")}
    pool = OpenAIPool(eps, max_retries=2, backoff_base_s=0.001, timeout_s=2.0)
    assert secret not in repr(pool) and "RECAL_TEST_KEY" in repr(pool)
    assert set(pool.models) == {"small"} and pool.models["small"].price_out == 2.0
    t0 = time.perf_counter()
    (rep,) = call_many_sync(pool, [("small", "hello", None)])
    assert time.perf_counter() - t0 < 10
    assert not rep.ok and "3 attempt(s)" in rep.error and "connection" in rep.error
    assert secret not in rep.text and secret not in rep.error
    s = pool.stats
    assert (s.calls, s.http_requests, s.retries, s.failures, s.cost_usd) == (1, 3, 2, 1, 0.0)
    monkeypatch.delenv("RECAL_TEST_KEY")
    with pytest.raises(ValueError, match="RECAL_TEST_KEY"):
        OpenAIPool(eps)
    with pytest.raises(ValueError, match="Endpoint"):
        OpenAIPool({"x": {"base_url": url}})
