"""SFT demonstrations: well-formed protocol text, masks on the policy's tokens only, and the
information block tokenised exactly as the rollout engine inserts it."""
import numpy as np
import pytest

from recal_jax.data import make_synthetic
from recal_jax.models.tokenizer import protocol_special_tokens, train_bpe
from recal_jax.rollout.engine import RolloutEngine
from recal_jax.routing.pools import ReplayPool, call_many_sync
from recal_jax.routing.protocol import parse
from recal_jax.training.sft_data import (
    answer_from_reply, build_demonstrations, choose_models, dataset_best_models, pack_demonstrations,
)


@pytest.fixture(scope="module")
def setup():
    suite = make_synthetic(seed=0, n_train_per_family=6, n_test_per_family=1)
    log = suite.train
    corpus = [r.question for r in log.records] + [t for r in log.records for t in r.responses.values()]
    tok = train_bpe(corpus * 3, vocab_size=500, special_tokens=protocol_special_tokens(log.model_names))
    pool = ReplayPool(log)
    engine = RolloutEngine(lambda *a, **k: None, tok, pool, protocol=log.protocol, max_info_tokens=12)
    reply = lambda m, q, r: call_many_sync(pool, [(m, q, r)])[0].text  # noqa: E731
    prompt = lambda r: tok.encode(f"question: {r.question}\n")  # noqa: E731
    demos = build_demonstrations(log, tok.encode, prompt, reply, engine.information_ids, rule="random", seed=1)
    return log, tok, pool, engine, prompt, demos


def test_demonstrations_parse_as_valid_protocol(setup):
    log, tok, pool, _, prompt, demos = setup
    assert len(demos) == len(log)
    for record, demo in zip(log.records, demos):
        n_prompt = len(prompt(record))
        completion = tok.decode(demo.token_ids[n_prompt:])
        parsed = parse(completion, log.model_names, protocol="multi_turn")
        assert parsed.format_ok, (parsed.reason, completion)
        assert parsed.calls == [(demo.model, record.question)]
        # the demonstrated answer is copied from the routed model's reply
        assert parsed.answer == answer_from_reply(pool.reply_text(demo.model, record))


def test_loss_mask_covers_exactly_the_policy_tokens(setup):
    log, tok, pool, engine, prompt, demos = setup
    record, demo = log.records[0], demos[0]
    info = engine.information_ids(pool.reply_text(demo.model, record))
    ids, mask = list(demo.token_ids), list(demo.loss_mask)
    n_prompt = len(prompt(record))
    assert mask[:n_prompt] == [0] * n_prompt
    # the information block sits inside the completion, masked, token for token as the engine writes it
    starts = [i for i in range(len(ids)) if ids[i:i + len(info)] == info]
    assert len(starts) == 1
    s = starts[0]
    assert mask[s:s + len(info)] == [0] * len(info)
    assert all(m == 1 for m in mask[n_prompt:s]) and all(m == 1 for m in mask[s + len(info):])


def test_dataset_best_rule_routes_to_the_best_model_per_dataset(setup):
    log = setup[0]
    best = dataset_best_models(log)
    for dataset, model in best.items():
        recs = [r for r in log.records if r.dataset == dataset]
        means = {m: np.mean([r.scores[m] for r in recs]) for m in log.model_names}
        assert means[model] == max(means.values())
    chosen = choose_models(log, "dataset_best", np.random.default_rng(0))
    assert chosen == [best[r.dataset] for r in log.records]
    with pytest.raises(ValueError, match="unknown SFT routing rule"):
        choose_models(log, "greedy", np.random.default_rng(0))


def test_pack_right_pads_and_keeps_the_end_of_long_demos(setup):
    demos = setup[-1]
    arrays = pack_demonstrations(demos[:3], seq_len=20, pad_id=0)
    assert arrays["tokens_bt"].shape == (3, 20) and arrays["tokens_bt"].dtype == np.int32
    for i, demo in enumerate(demos[:3]):
        n = min(len(demo.token_ids), 20)
        np.testing.assert_array_equal(arrays["tokens_bt"][i, :n], demo.token_ids[-n:])
        assert arrays["attention_mask_bt"][i].sum() == n
        np.testing.assert_array_equal(arrays["loss_mask_bt"][i, :n], demo.loss_mask[-n:])


@pytest.mark.parametrize("reply,answer", [
    ("the answer is paris", "paris"), ("Answer: 42", "42"), ("x\n<answer>Rome</answer>", "Rome"),
    ("I believe tokyo", "tokyo"), ("", "unknown"), ("   ", "unknown"),
])
def test_answer_from_reply(reply, answer):
    assert answer_from_reply(reply) == answer


def test_dataset_think_names_the_task_and_stays_valid_protocol(setup):
    log, tok, pool, engine, prompt, _ = setup
    reply = lambda m, q, r: call_many_sync(pool, [(m, q, r)])[0].text  # noqa: E731
    demos = build_demonstrations(log, tok.encode, prompt, reply, engine.information_ids, rule="random",
                                 think="dataset", seed=1)
    for record, demo in zip(log.records, demos):
        completion = tok.decode(demo.token_ids[len(prompt(record)):])
        assert completion.startswith(f"<think> {record.dataset} </think>"), completion
        parsed = parse(completion, log.model_names, protocol="multi_turn")
        assert parsed.format_ok, (parsed.reason, completion)
    with pytest.raises(ValueError, match="think style"):
        build_demonstrations(log, tok.encode, prompt, reply, engine.information_ids, think="dataset_name")


def test_answer_span_covers_the_answer_segment(setup):
    log, tok, _, _, prompt, demos = setup
    for demo in demos[:5]:
        start, end = demo.answer_span
        text = tok.decode(demo.token_ids[start:end])
        assert text.strip().startswith("<answer>") and text.strip().endswith("</answer>"), text
        assert end == len(demo.token_ids)
    arrays = pack_demonstrations(demos[:5], seq_len=max(len(d.token_ids) for d in demos[:5]), pad_id=0)
    for i, demo in enumerate(demos[:5]):
        np.testing.assert_array_equal(np.flatnonzero(arrays["answer_mask_bt"][i]), np.arange(*demo.answer_span))


def test_dataset_random_routing_is_per_task_and_ignores_the_scores(setup):
    import dataclasses

    log = setup[0]
    chosen = choose_models(log, "dataset_random", np.random.default_rng(7), best_prob=1.0)
    by_dataset = {}
    for record, model in zip(log.records, chosen):
        by_dataset.setdefault(record.dataset, set()).add(model)
    assert all(len(models) == 1 for models in by_dataset.values())
    # the same draw on a log whose scores are inverted: routing says nothing about quality
    flipped = log.subset([dataclasses.replace(r, scores={m: 1.0 - s for m, s in r.scores.items()})
                          for r in log.records])
    assert choose_models(flipped, "dataset_random", np.random.default_rng(7), best_prob=1.0) == chosen
    mixed = choose_models(log, "dataset_random", np.random.default_rng(7), best_prob=0.0)
    assert len(set(mixed)) > len(set(chosen)) or len(set(chosen)) == len(log.model_names)
