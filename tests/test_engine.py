"""RolloutEngine with a scripted generate_fn (no model): masks, information blocks, budgets,
concurrent pool calls, single_call."""

import asyncio
import re
import threading
import time

import chex
import jax
import numpy as np
import pytest

from recal_jax.data.schema import ModelInfo, RoutingRecord
from recal_jax.models.tokenizer import protocol_special_tokens, train_bpe
from recal_jax.rollout.engine import RolloutEngine
from recal_jax.rollout.sampler import SampleOutput
from recal_jax.routing.pools import Pool, PoolReply

MODELS = {"small": ModelInfo("small", 0.1, 0.2), "large": ModelInfo("large", 1.0, 2.0)}
OPEN, CLOSE = "\n\n<information> ", " </information>\n\n"  # written out: a change must be deliberate
CORPUS = [
    "<think>s0 plan the route</think>\n<search>small : capital of France?</search>",
    "<think>I know it</think>\n<answer>Paris</answer> user: Q0 what? assistant: ",
    "small heard capital of France? large heard who wrote it? information done",
] * 20


def make_tokenizer(special=True):
    specials = protocol_special_tokens(list(MODELS)) if special else []
    return train_bpe(CORPUS, vocab_size=420, special_tokens=specials)


class EchoPool(Pool):
    """Replies '<model> heard <query>' after `delay_s`; records calls and peak concurrency."""

    needs_record = False

    def __init__(self, delay_s=0.0):
        super().__init__(MODELS, max_concurrency=64)
        self.delay_s, self.log, self.now, self.peak = delay_s, [], 0, 0
        self._lock = threading.Lock()

    async def _call(self, model, query, record):
        with self._lock:
            self.log.append((model, query, record.id))
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(self.delay_s)
        self.now -= 1
        return PoolReply(text=f"{model} heard {query}", cost_usd=0.0, tokens=1, latency_s=0.0, ok=True)


def fake_logp(ids):
    return [-(int(t) + 1) / 1000.0 for t in ids]


class Scripted:
    """generate_fn that writes scripts[(u, g)][turn]: u from 'Q<u>' in the prompt, g from the
    's<g>' marker of the first think (resumed rows), turn = number of information blocks.
    Emulates the sampler: stops after a stop sequence or EOS (unless honour_stops=False),
    at most max_new_tokens, pad after, logprob -(id+1)/1000 per generated token."""

    def __init__(self, tok, scripts, honour_stops=True):
        self.tok, self.scripts, self.honour_stops = tok, scripts, honour_stops
        self.calls = []

    def __call__(self, tokens_bp, mask_bp, key, *, max_new_tokens, temperature, top_p, greedy,
                 stop_sequences, num_samples):
        tokens_bp, mask_bp = np.asarray(tokens_bp), np.asarray(mask_bp)
        assert tokens_bp.dtype == np.int32 and mask_bp.dtype == bool
        self.calls.append(dict(shape=tokens_bp.shape, max_new=max_new_tokens, num_samples=num_samples,
                               stops=[list(s) for s in stop_sequences]))
        rows = []
        for i in range(tokens_bp.shape[0]):
            real = tokens_bp[i][mask_bp[i]]
            assert mask_bp[i, tokens_bp.shape[1] - len(real):].all()  # left-padded
            prefix = self.tok.decode(real)
            u = int(re.search(r"Q(\d+)", prefix).group(1))
            turn = prefix.count("<information>")
            if num_samples > 1 or "<think>" not in prefix:  # first round: samples 0..G-1
                gs = range(num_samples)
            else:  # resumed row: its sample index is the marker of its first think
                gs = [int(re.search(r"<think>s(\d+)", prefix).group(1))]
            for g in gs:
                ids = self.tok.encode(self.scripts[(u, g)][turn])
                rows.append(self._emit(ids, max_new_tokens, stop_sequences))
        n = max_new_tokens
        toks = np.full((len(rows), n), self.tok.pad_id, np.int32)
        logp = np.zeros((len(rows), n), np.float32)
        for i, ids in enumerate(rows):
            toks[i, :len(ids)] = ids
            logp[i, :len(ids)] = fake_logp(ids)
        return SampleOutput(toks, logp, np.array([len(r) for r in rows], np.int32))

    def _emit(self, ids, max_new, stops):
        out = []
        for t in ids[:max_new]:
            out.append(t)
            if t == self.tok.eos_id:
                break
            if self.honour_stops and any(out[-len(s):] == list(s) for s in stops):
                break
        return out


def records(n):
    return [RoutingRecord(id=f"r{u}", dataset="nq", question=f"Question {u}?", golden_answers=("x",),
                          scores={}) for u in range(n)]


def prompts(n):
    return [f"user: Q{u} what?\nassistant: " for u in range(n)]


SCRIPTS = {
    (0, 0): ["<think>s0 plan</think>\n<search>small : capital of France?</search>",
             "<think>s0 ok</think>\n<answer>Paris</answer>"],
    (0, 1): ["<think>s1 direct</think>\n<answer>Lyon</answer>"],
    (0, 2): ["<think>s2 a</think>\n<search>large : who wrote it?</search>",
             "<think>s2 b</think>\n<search>small : when?</search>",
             "<think>s2 c</think>\n<answer>1900</answer>"],
    (1, 0): ["<think>s0 hm</think>\n<search>medium : anything?</search>",
             "<think>s0 no</think>\n<answer>none</answer>"],
    (1, 1): ["<think>s1 nothing</think> I give up<eos>"],
    (1, 2): ["<think>s2 x</think>\n<search>small</search>", "<think>s2 y</think>\n<answer>y</answer>"],
}


def expected_completion(tok, turns, replies):
    """Independent construction: policy turn ids (mask 1) interleaved with information blocks (mask 0)."""
    ids, mask = [], []
    for i, text in enumerate(turns):
        t = tok.encode(text)
        ids += t
        mask += [1.0] * len(t)
        if i < len(replies):
            info = tok.encode(OPEN) + tok.encode(replies[i]) + tok.encode(CLOSE)
            ids += info
            mask += [0.0] * len(info)
    return ids, mask


def make_engine(tok, scripts, pool, **kw):
    kw = {"max_turns": 4, "max_new_tokens_per_turn": 64, "max_total_tokens": 400, **kw}
    honour = kw.pop("honour_stops", True)
    gen = Scripted(tok, scripts, honour_stops=honour)
    return RolloutEngine(gen, tok, pool, **kw), gen


def check_row(batch, b, tok, prompt, comp_ids, comp_mask):
    p, n = len(prompt), len(comp_ids)
    assert batch.prompt_len_b[b] == p and batch.completion_len_b[b] == n
    np.testing.assert_array_equal(batch.tokens_bt[b, :p + n], prompt + comp_ids)
    assert (batch.tokens_bt[b, p + n:] == tok.pad_id).all()
    np.testing.assert_array_equal(batch.attention_mask_bt[b], np.arange(batch.tokens_bt.shape[1]) < p + n)
    np.testing.assert_array_equal(batch.loss_mask_bt[b, p:p + n], comp_mask)
    assert (batch.loss_mask_bt[b, :p] == 0).all() and (batch.loss_mask_bt[b, p + n:] == 0).all()
    ref = np.where(batch.loss_mask_bt[b] > 0, -(batch.tokens_bt[b].astype(np.float64) + 1) / 1000, 0.0)
    np.testing.assert_allclose(batch.logp_old_bt[b], ref, rtol=1e-6)


def test_multi_turn_masks_information_and_calls():
    tok = make_tokenizer()
    pool = EchoPool()
    eng, gen = make_engine(tok, SCRIPTS, pool)
    batch = eng.run(records(2), prompts(2), num_samples=3, key=jax.random.key(0))
    b_count, t_len = 6, max(len(tok.encode(p)) for p in prompts(2)) + 400
    for name in ("tokens_bt", "attention_mask_bt", "loss_mask_bt", "logp_old_bt"):
        chex.assert_shape(getattr(batch, name), (b_count, t_len))
    chex.assert_type([batch.tokens_bt, batch.loss_mask_bt, batch.logp_old_bt], [np.int32, np.float32, np.float32])
    np.testing.assert_array_equal(batch.record_index_b, [0, 0, 0, 1, 1, 1])
    assert [tok.encode("</search>"), tok.encode("</answer>")] == gen.calls[0]["stops"][:2]
    assert gen.calls[0]["num_samples"] == 3 and all(c["num_samples"] == 1 for c in gen.calls[1:])

    replies = {
        (0, 0): ["small heard capital of France?"],
        (0, 1): [],
        (0, 2): ["large heard who wrote it?", "small heard when?"],
        (1, 0): ["[error] unknown model 'medium'; pool has ['small', 'large']"],
        (1, 1): [],
        (1, 2): ["[error] invalid search: search must be 'NAME : QUERY'"],
    }
    for b, (u, g) in enumerate((u, g) for u in range(2) for g in range(3)):
        ids, mask = expected_completion(tok, SCRIPTS[(u, g)], replies[(u, g)])
        check_row(batch, b, tok, tok.encode(prompts(2)[u]), ids, mask)
        assert batch.num_turns_b[b] == len(SCRIPTS[(u, g)])
        assert [c[2].text for c in batch.calls[b]] == [r for r in replies[(u, g)] if "[error]" not in r]
        assert [c[:2] for c in batch.calls[b]] == batch.parsed[b].calls  # aligned with the parser
    assert batch.finish_reasons == ["answer", "answer", "answer", "answer", "eos", "answer"]
    # the pool saw the real calls (unknown models are answered by the pool's own error)
    assert sorted(pool.log) == sorted([("small", "capital of France?", "r0"), ("large", "who wrote it?", "r0"),
                                       ("small", "when?", "r0")])
    assert [c[:2] for c in batch.calls[2]] == [("large", "who wrote it?"), ("small", "when?")]
    assert [p.format_ok for p in batch.parsed] == [True, True, True, False, False, False]
    assert batch.parsed[0].answer == "Paris" and batch.parsed[2].calls == [("large", "who wrote it?"), ("small", "when?")]
    assert batch.completion_texts[0].startswith("<think>s0 plan</think>") and "<information> small heard" in batch.completion_texts[0]
    assert np.isfinite(batch.logp_old_bt).all()


def test_pool_calls_of_a_turn_run_concurrently():
    tok = make_tokenizer()
    pool = EchoPool(delay_s=0.25)
    scripts = {(u, g): [f"<think>s{g} go</think>\n<search>small : q{u}{g}</search>", "<think>s0 k</think><answer>a</answer>"]
               for u in range(3) for g in range(2)}
    eng, _ = make_engine(tok, scripts, pool)
    t0 = time.perf_counter()
    batch = eng.run(records(3), prompts(3), num_samples=2, key=jax.random.key(1))
    elapsed = time.perf_counter() - t0
    assert len(pool.log) == 6 and pool.peak == 6
    assert elapsed < 6 * 0.25 * 0.6, elapsed
    assert all(len(c) == 1 for c in batch.calls)


def test_token_budget_truncates_and_masks():
    tok = make_tokenizer()
    turn0 = tok.encode(SCRIPTS[(0, 2)][0])
    info_fixed = len(tok.encode(OPEN)) + len(tok.encode(CLOSE))
    budget = len(turn0) + info_fixed + 2  # room for only 2 reply tokens
    eng, _ = make_engine(tok, SCRIPTS, EchoPool(), max_total_tokens=budget)
    batch = eng.run(records(1), prompts(1), num_samples=3, key=jax.random.key(2))
    assert (batch.completion_len_b <= budget).all()
    assert batch.tokens_bt.shape[1] == len(tok.encode(prompts(1)[0])) + budget
    reply = tok.encode("large heard who wrote it?")[:2]
    ids = turn0 + tok.encode(OPEN) + reply + tok.encode(CLOSE)
    check_row(batch, 2, tok, tok.encode(prompts(1)[0]), ids, [1.0] * len(turn0) + [0.0] * (len(ids) - len(turn0)))
    assert batch.finish_reasons[2] == "budget"
    # a per-turn cap that cuts the first turn ends the rollout there
    eng, gen = make_engine(tok, SCRIPTS, EchoPool(), max_new_tokens_per_turn=5)
    batch = eng.run(records(1), prompts(1), num_samples=3, key=jax.random.key(2))
    assert batch.finish_reasons == ["turn_budget"] * 3 and (batch.completion_len_b == 5).all()
    assert batch.loss_mask_bt.sum() == 15 and all(c["max_new"] == 5 for c in gen.calls)


def test_max_turns_stops_further_searches():
    tok = make_tokenizer()
    pool = EchoPool()
    eng, _ = make_engine(tok, SCRIPTS, pool, max_turns=1)
    batch = eng.run(records(1), prompts(1), num_samples=3, key=jax.random.key(3))
    assert batch.finish_reasons[2] == "max_turns" and len(batch.calls[2]) == 1
    assert [c[:2] for c in batch.calls[2]] == batch.parsed[2].calls[:1] and len(batch.parsed[2].calls) == 2
    ids, mask = expected_completion(tok, SCRIPTS[(0, 2)][:2], ["large heard who wrote it?"])
    check_row(batch, 2, tok, tok.encode(prompts(1)[0]), ids, mask)
    assert not batch.parsed[2].format_ok


def test_single_call_routes_without_information():
    tok = make_tokenizer()
    pool = EchoPool()
    scripts = {(0, 0): ["<think>s0 easy</think>\n<search> large </search>"],
               (0, 1): ["<think>s1 hard</think>\n<search>small : ignored query</search>"]}
    eng, _ = make_engine(tok, scripts, pool, protocol="single_call")
    batch = eng.run(records(1), prompts(1), num_samples=2, key=jax.random.key(4))
    for b in range(2):
        ids = tok.encode(scripts[(0, b)][0])
        check_row(batch, b, tok, tok.encode(prompts(1)[0]), ids, [1.0] * len(ids))
    assert [c[:2] for row in batch.calls for c in row] == [("large", "Question 0?"), ("small", "Question 0?")]
    assert [row[0][2].text for row in batch.calls] == ["large heard Question 0?", "small heard Question 0?"]
    assert batch.finish_reasons == ["routed", "routed"]
    assert all(p.format_ok for p in batch.parsed) and "<information>" not in "".join(batch.completion_texts)


def test_stop_found_in_text_when_tags_are_not_single_tokens():
    tok = make_tokenizer(special=False)
    scripts = {(0, 0): ["<think>s0 plan</think>\n<search>small : capital of France?</search> trailing junk",
                        "<think>s0 ok</think>\n<answer>Paris</answer> more junk<eos>"]}
    eng, _ = make_engine(tok, scripts, EchoPool(), honour_stops=False)
    batch = eng.run(records(1), prompts(1), num_samples=1, key=jax.random.key(5))
    text = batch.completion_texts[0]
    assert "junk" not in text and text.endswith("</answer>")
    assert "<information> small heard capital of France? </information>" in text
    assert batch.finish_reasons == ["answer"] and batch.parsed[0].format_ok
    n_policy = int(batch.loss_mask_bt[0].sum())
    p = batch.prompt_len_b[0]
    policy_ids = batch.tokens_bt[0][batch.loss_mask_bt[0] > 0]
    assert "junk" not in tok.decode(policy_ids) and n_policy == len(policy_ids)
    assert p + batch.completion_len_b[0] <= batch.tokens_bt.shape[1]


def test_bad_inputs_raise_clear_errors():
    tok = make_tokenizer()
    eng, _ = make_engine(tok, SCRIPTS, EchoPool())
    with pytest.raises(ValueError, match="as many records as prompts"):
        eng.run(records(2), prompts(1), num_samples=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_samples"):
        eng.run(records(1), prompts(1), num_samples=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="not in the pool"):
        RolloutEngine(lambda *a, **k: None, tok, EchoPool(), model_names=["small", "huge"])
    with pytest.raises(ValueError, match="protocol"):
        RolloutEngine(lambda *a, **k: None, tok, EchoPool(), protocol="chat")

    def wrong_rows(tokens_bp, mask_bp, key, **kw):
        return SampleOutput(np.zeros((1, 4), np.int32), np.zeros((1, 4), np.float32), np.zeros((1,), np.int32))

    with pytest.raises(ValueError, match="expected 4 rows"):
        RolloutEngine(wrong_rows, tok, EchoPool()).run(records(2), prompts(2), num_samples=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="seq_len"):
        eng.run(records(1), prompts(1), num_samples=3, key=jax.random.key(0), seq_len=10)


def test_with_the_real_sampler_logprobs_align_with_a_forward_pass():
    """Engine + Sampler + tiny random Qwen2: logp_old_bt[b, t] must equal the model's
    log-prob of tokens_bt[b, t] given tokens_bt[b, :t] (recomputed by a full forward)."""
    from flax import nnx

    from recal_jax.models import ModelConfig, Qwen2
    from recal_jax.rollout.sampler import Sampler

    tok = make_tokenizer()
    config = ModelConfig.preset("tiny", num_layers=1, hidden_size=64, intermediate_size=128, vocab_size=512)
    assert tok.vocab_size <= config.vocab_size
    model = Qwen2(config, rngs=nnx.Rngs(0))
    sampler = Sampler(model, pad_id=tok.pad_id, eos_id=tok.eos_id)
    eng = RolloutEngine(sampler.sample, tok, EchoPool(), max_new_tokens_per_turn=6, max_total_tokens=12)
    batch = eng.run(records(2), prompts(2), num_samples=2, key=jax.random.key(7))
    chex.assert_shape(batch.tokens_bt, (4, None))
    assert (batch.completion_len_b >= 1).all() and (batch.completion_len_b <= 12).all()
    logits = model(jax.numpy.asarray(batch.tokens_bt), jax.numpy.asarray(batch.attention_mask_bt))
    logp_all = np.asarray(jax.nn.log_softmax(logits.astype(np.float32), axis=-1))
    for b in range(4):
        p = batch.prompt_len_b[b]
        for t in np.nonzero(batch.loss_mask_bt[b])[0]:
            assert t >= p
            np.testing.assert_allclose(batch.logp_old_bt[b, t], logp_all[b, t - 1, batch.tokens_bt[b, t]], atol=2e-3)
        assert batch.logp_old_bt[b][batch.loss_mask_bt[b] == 0].sum() == 0
