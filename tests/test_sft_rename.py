"""SFT with fresh names (sft.rename_share): every entity name of a renamed demonstration is
replaced consistently (the question's subject is the first sub-question's, the last reply is the
answer), none of the world's names is left, the pool is still asked the world's queries, and the
demonstrations that are not renamed are the same as without renaming."""
import re
import types

import jax
import numpy as np
import pytest

from launch.configs import quickstart as quickstart_config
from tests.compose_configs import tiny_compose
from recal_jax.data.compose import compose_world
from recal_jax.data.compose_world import (
    CONSONANTS, NAME_SYLLABLES, RESERVED_WORDS, VOWELS, _template_words, parse_query, renamer,
)
from recal_jax.training import sft
from recal_jax.training.run_config import ConfigError, parse_config
from recal_jax.training.setup import set_up

# an entity name, written out independently of compose_world.NAME_REGEX
_NAME = re.compile(r"\b(?:[" + CONSONANTS + "][" + VOWELS + "]){" + str(NAME_SYLLABLES) + r"}\b")


def _tiny(rename_share: float):
    return tiny_compose(rename_share=rename_share, rename_after_copy=0.0)


def test_the_renamer_maps_each_name_to_one_fresh_name_and_leaves_other_words():
    rename = renamer(np.random.default_rng(0))
    text = "where was bakome born? bakome works for tisalu; the capital of pokira is bakome's"
    out = rename(text)
    words_in, words_out = re.findall(r"[a-z']+|\S", text), re.findall(r"[a-z']+|\S", out)
    assert len(words_in) == len(words_out)
    mapping = {}
    for a, b in zip(words_in, words_out):
        if _NAME.fullmatch(a.rstrip("'s")) or _NAME.fullmatch(a):
            key = a[:6]
            assert _NAME.fullmatch(b[:6]) and b[:6] != key
            assert mapping.setdefault(key, b[:6]) == b[:6]  # the same name, the same replacement
        else:
            assert a == b
    assert len(set(mapping.values())) == len(mapping) == 3
    assert rename("where was pokira born?") == f"where was {mapping['pokira']} born?"  # one map per demonstration
    assert renamer(np.random.default_rng(0))("tisalu") == renamer(np.random.default_rng(0))("tisalu")


def test_no_template_or_reserved_word_looks_like_a_name():
    assert not [w for w in _template_words() | set(RESERVED_WORDS) if _NAME.fullmatch(w)]


@pytest.fixture(scope="module")
def runs():
    return {share: set_up(parse_config(_tiny(share))) for share in (0.0, 0.5, 1.0)}


def _calls(run, demo):
    text = run.tokenizer.decode(demo.token_ids)
    queries = [c.split("</search>")[0].split(":", 1)[1].strip() for c in text.split("<search>")[1:]]
    replies = [b.split("</information>")[0].strip() for b in text.split("<information>")[1:]]
    answer = text.split("<answer>")[-1].split("</answer>")[0].strip()
    return text, queries, replies, answer


def test_renamed_demonstrations_show_no_name_of_the_world_and_stay_consistent(runs):
    run = runs[1.0]
    world_names = {n for names in compose_world(run.cfg.run.seed, run.cfg.suite_options).entities.values()
                   for n in names}
    questions = {r.id: r for r in run.suite.train.records}
    demos = sft.demonstrations(run, run.cfg.sft)
    assert len(demos) == len(run.suite.train)
    chains = 0
    for demo in demos:
        text, queries, replies, answer = _calls(run, demo)
        assert not set(_NAME.findall(text)) & world_names, text
        record = questions[demo.record_id]
        asked = parse_query(queries[0])
        assert asked is not None, queries[0]
        if len(queries) == 1:  # a direct call: the whole (renamed) question
            assert parse_query(record.question).key.split("|")[0] == asked.key.split("|")[0]
        else:
            chains += 1
            assert parse_query(queries[1]).subject == replies[0]  # the hop copies the renamed reply
        assert answer == replies[-1]  # the answer copies the renamed last reply
        shown_question = run.tokenizer.decode(demo.token_ids).split("<search>")[0]
        assert asked.subject in shown_question  # the subject is copied out of the renamed question
    assert chains > 0


def test_the_pool_is_asked_the_worlds_queries(runs):
    run = runs[1.0]
    asked = []
    def reply(model, query, record):
        asked.append(query)
        return "kalosi"

    sft._demonstrations_of(run, run.cfg.sft, run.suite.train, run.train_runner.prompt_ids, reply, 0)
    world_names = {n for names in compose_world(run.cfg.run.seed, run.cfg.suite_options).entities.values()
                   for n in names}
    firsts = [q for q in asked if parse_query(q) is not None and parse_query(q).subject != "kalosi"]
    assert firsts and all(parse_query(q).subject in world_names for q in firsts)


def test_demonstrations_not_renamed_are_those_of_no_renaming(runs):
    plain = sft.demonstrations(runs[0.0], runs[0.0].cfg.sft)
    half = sft.demonstrations(runs[0.5], runs[0.5].cfg.sft)
    assert [d.record_id for d in plain] == [d.record_id for d in half]
    same = [a == b for a, b in zip(plain, half)]
    assert 0 < sum(same) < len(same)  # about half renamed, the others untouched
    for a, b in zip(plain, half):
        if a != b:  # renamed: the same layout, other names
            assert len(a.query_spans) == len(b.query_spans) and a.model == b.model


def test_a_suite_without_a_renamer_is_refused_by_the_parser():
    c = quickstart_config.get_config()
    c.sft.rename_share = 0.5
    with pytest.raises(ConfigError, match="sft.rename_share"):
        parse_config(c)
    c = _tiny(1.5)
    with pytest.raises(ConfigError, match="sft.rename_share"):
        parse_config(c)


def test_the_switch_trains_on_the_renamed_demonstrations_from_the_first_check_that_reaches_it(runs, monkeypatch):
    plain = sft.demonstrations(runs[0.0], runs[0.0].cfg.sft)
    renamed = sft.demonstrations(runs[1.0], runs[1.0].cfg.sft)
    plain_rows = {tuple(d.token_ids) for d in plain}
    accuracies = iter([0.0, 0.4, 0.6, 0.7, 0.8])  # the scripted held-out checks: the third reaches 0.5
    monkeypatch.setattr(sft, "answer_copy_accuracy", lambda *a, **k: next(accuracies))
    seen = []

    def step(state, batch):
        pads = batch["attention_mask_bt"].sum(axis=1)
        seen.append([tuple(int(t) for t in row[:n]) in plain_rows for row, n in zip(batch["tokens_bt"], pads)])
        return state, {"loss": np.float32(0.0)}

    until = sft.HeldOutCriterion(plain[:3], target=0.95, every=2, check="all")
    state = types.SimpleNamespace(params=np.zeros(2))  # the scripted step never reads it
    _, info = sft.run_sft(state, step, plain, steps=10, batch_size=4, seq_len=256, pad_id=0, seed=0,
                          progress=False, until=until, switch=sft.SwitchAfterCopy(renamed, at=0.5))
    assert info["switched_at_step"] == 6 and info["steps"] == 10
    assert all(all(rows) for rows in seen[:6])  # the world's names until the check that reached 0.5
    assert not any(any(rows) for rows in seen[6:])  # then only the renamed ones


def test_warm_start_switches_to_the_renamed_version_of_the_same_training_demonstrations(monkeypatch):
    run = set_up(parse_config(tiny_compose(rename_share=1.0, rename_after_copy=0.5)))
    captured = {}

    def fake_run_sft(state, step, demos, **kw):
        captured.update(demos=demos, **kw)
        return state, {"steps": 0}

    monkeypatch.setattr(sft, "run_sft", fake_run_sft)
    sft.warm_start(run, run.cfg.sft, jax.random.key(0))
    demos, switch, until = captured["demos"], captured["switch"], captured["until"]
    assert switch.at == 0.5 and [d.record_id for d in switch.demos] == [d.record_id for d in demos]
    assert all(a.token_ids != b.token_ids for a, b in zip(demos, switch.demos))  # all renamed
    held = {d.record_id for d in until.demos}
    questions = {r.id: r.question for r in run.suite.train.records}
    assert not {questions[i] for i in held} & {questions[d.record_id] for d in switch.demos}
    world_names = {n for names in compose_world(run.cfg.run.seed, run.cfg.suite_options).entities.values()
                   for n in names}
    text = run.tokenizer.decode(demos[0].token_ids)
    assert set(_NAME.findall(text)) & world_names  # the first phase shows the world's own names


def test_renaming_after_the_copy_needs_renaming_and_a_held_out_criterion():
    for fields in (dict(rename_share=0.0, rename_after_copy=0.5),
                   dict(rename_share=0.5, rename_after_copy=0.5, until_copy_accuracy=0.0)):
        with pytest.raises(ConfigError, match="sft.rename_after_copy"):
            parse_config(tiny_compose(**fields))


def test_copy_weight_scales_the_loss_of_the_queries_and_the_answer_only(runs):
    demos = sft.demonstrations(runs[0.0], runs[0.0].cfg.sft)[:6]
    plain = sft._train_arrays(demos, seq_len=256, pad_id=0, copy_weight=1.0)
    heavy = sft._train_arrays(demos, seq_len=256, pad_id=0, copy_weight=4.0)
    for i, demo in enumerate(demos):
        copied = np.zeros(256, bool)
        for start, end in [*demo.query_spans, demo.answer_span]:
            copied[start:end] = True
        assert copied.any()
        own = np.asarray(demo.loss_mask)[copied[:len(demo.loss_mask)]]
        np.testing.assert_allclose(heavy["loss_mask_bt"][i][copied], 4.0 * own)
        np.testing.assert_array_equal(heavy["loss_mask_bt"][i][~copied], plain["loss_mask_bt"][i][~copied])
    np.testing.assert_array_equal(heavy["tokens_bt"], plain["tokens_bt"])
