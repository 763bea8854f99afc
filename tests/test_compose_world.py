"""The compose world and suite: ground truth against a re-derivation written here, the split,
determinism, query parsing, the suite's records and options, and its registration."""

import dataclasses
import re
import string
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recal_jax.data.answer_text import normalize_answer
from recal_jax.data.compose import (
    MODEL_TABLE, ComposeOptions, compose_world, fresh_compose, make_compose, multi_hop_datasets,
)
from recal_jax.data.compose_world import SYLLABLES, make_world, parse_query
from recal_jax.data.registry import SUITES, OptionError, SuiteRequest
from recal_jax.data.schema import estimate_tokens, price_usd

# The datasets as this test understands them, written independently of the module: the question
# wording (subject in the slot), the subject's type, and the answer walked through the fact dicts.
SPEC = {
    "birthplace": ("where was {} born?", "person", lambda F, x: F["born_in"][x]),
    "employer": ("which company does {} work for?", "person", lambda F, x: F["works_for"][x]),
    "capital": ("what is the capital of {}?", "country", lambda F, x: F["capital"][x]),
    "birth_country": ("in which country was {} born?", "person", lambda F, x: F["city_in"][F["born_in"][x]]),
    "founder_of_employer": ("who founded the company {} works for?", "person",
                           lambda F, x: F["founded_by"][F["works_for"][x]]),
    "founder_birthplace": ("where was the founder of {} born?", "org",
                           lambda F, x: F["born_in"][F["founded_by"][x]]),
}
TWO_HOP = ("birth_country", "founder_of_employer", "founder_birthplace")
DOMAIN_RANGE = {"born_in": ("person", "city"), "works_for": ("person", "org"), "city_in": ("city", "country"),
                "capital": ("country", "city"), "founded_by": ("org", "person")}


@pytest.fixture(scope="module")
def suite():
    return make_compose(seed=0, n_train_per_dataset=60, n_test_per_dataset=20)


@pytest.fixture(scope="module")
def world():
    return compose_world(0, ComposeOptions(60, 20))


def _subject(dataset: str, question: str) -> str:
    template = SPEC[dataset][0]
    head, tail = template.split("{}")
    m = re.fullmatch(re.escape(head) + "([a-z]+)" + re.escape(tail), question)
    assert m, f"{question!r} is not worded as {template!r}"
    return m.group(1)


def test_ground_truth_matches_an_independent_walk_of_the_facts(suite, world):
    kind = {name: t for t, names in world.entities.items() for name in names}
    for log in (suite.train, suite.test):
        assert log.datasets == tuple(SPEC)
        for record in log.records:
            template, subject_type, walk = SPEC[record.dataset]
            subject = _subject(record.dataset, record.question)
            assert kind[subject] == subject_type
            assert record.golden_answers == (walk(world.facts, subject),)


def test_relations_are_total_functions_between_the_right_types(world):
    kind = {name: t for t, names in world.entities.items() for name in names}
    for relation, (domain, range_) in DOMAIN_RANGE.items():
        facts = world.facts[relation]
        assert set(facts) == set(world.entities[domain])
        assert {kind[v] for v in facts.values()} == {range_}
    # a capital lies in its own country; capitals are distinct cities
    assert all(world.facts["city_in"][world.facts["capital"][k]] == k for k in world.entities["country"])
    assert len(set(world.facts["capital"].values())) == len(world.entities["country"])


def test_entity_names_are_short_unique_syllabic_and_never_a_protocol_word(world):
    names = [n for names in world.entities.values() for n in names]
    assert len(names) == len(set(names))
    assert len({len(n) for n in names}) == 1 and 5 <= len(names[0]) <= 8  # one length: no name inside another
    syllables = set(SYLLABLES)
    forbidden = {"think", "search", "information", "answer", "question"} | set(MODEL_TABLE.models)
    forbidden |= {w for t, _, _ in SPEC.values() for w in normalize_answer(t.format("")).split()}
    for n in names:
        assert normalize_answer(n) == n and n not in forbidden
        assert all(n[i:i + 2] in syllables for i in range(0, len(n), 2))


def test_test_subjects_are_never_train_subjects_and_sizes_are_exact(suite):
    subjects = {}
    for split, log in (("train", suite.train), ("test", suite.test)):
        for record in log.records:
            subjects.setdefault(split, set()).add(_subject(record.dataset, record.question))
        counts = {d: sum(r.dataset == d for r in log.records) for d in SPEC}
        assert counts == {d: 60 if split == "train" else 20 for d in SPEC}
    assert not subjects["train"] & subjects["test"]
    for log in (suite.train, suite.test):  # distinct questions within a split
        assert len({r.question for r in log.records}) == len(log.records)


def test_the_world_is_deterministic_in_seed_and_sizes():
    a, b = make_world(3, 40, 10), make_world(3, 40, 10)
    assert a == b and a.facts == b.facts
    c = make_world(4, 40, 10)
    assert set(c.entities["person"]) != set(a.entities["person"])
    s1, s2 = make_compose(3, 10, 5), make_compose(3, 10, 5)
    assert s1 == s2
    assert make_compose(4, 10, 5).test.records != s1.test.records


def test_records_log_each_models_one_call_reply_with_its_score_and_cost(suite):
    for log in (suite.train, suite.test):
        assert log.protocol == "multi_turn" and dict(log.models) == MODEL_TABLE.infos
        for record in log.records:
            assert set(record.scores) == set(record.responses) == set(record.costs) == set(MODEL_TABLE.models)
            for m, reply in record.responses.items():
                assert record.scores[m] == float(normalize_answer(reply) == record.golden_answers[0])
                info = MODEL_TABLE.models[m].info
                assert record.costs[m] == pytest.approx(price_usd(info, estimate_tokens(record.question),
                                                                  estimate_tokens(reply)))
                assert log.call_cost(record, m) == record.costs[m]
    ids = [r.id for r in suite.train.records + suite.test.records]
    assert len(ids) == len(set(ids))


def test_multi_hop_datasets_are_the_two_hop_ones(suite):
    assert multi_hop_datasets(suite) == TWO_HOP
    assert multi_hop_datasets(suite.test) == TWO_HOP
    assert multi_hop_datasets() == TWO_HOP


def test_make_compose_is_fast():
    start = time.perf_counter()
    s = make_compose(1, 500, 50)
    assert len(s.train) + len(s.test) == 6 * 550
    assert time.perf_counter() - start < 10.0  # about 0.5 s alone; loose for shared CPUs


@pytest.mark.parametrize("bad", [{"n_train_per_dataset": 0}, {"n_test_per_dataset": -1},
                                 {"n_train_per_dataset": True}, {"n_test_per_dataset": "5"},
                                 {"n_train_per_dataset": 20_000, "n_test_per_dataset": 1}])
def test_options_are_validated(bad):
    with pytest.raises(OptionError) as e:
        ComposeOptions(**bad)
    assert e.value.field in bad


def test_the_suite_is_registered_with_its_pool_and_options():
    spec = SUITES["compose"]
    assert spec.protocol == "multi_turn" and spec.pool == "compose" and not spec.needs_data_dir
    assert spec.options is ComposeOptions and dataclasses.is_dataclass(ComposeOptions)
    options = ComposeOptions(n_train_per_dataset=12, n_test_per_dataset=4)
    loaded = spec.load(SuiteRequest(data_dir="", seed=5, options=options))
    assert loaded == make_compose(5, 12, 4)


def _noisy(text: str, draw) -> str:
    """The same question with other case, extra spaces, punctuation and a 'question:' prefix."""
    words = text.rstrip("?").split()
    out = []
    for w in words:
        w = "".join(c.upper() if draw(st.booleans()) else c for c in w)
        out.append(w + draw(st.sampled_from(["", ",", ".", ";"])))
    sep = draw(st.sampled_from([" ", "  ", " \t", "\n "]))
    prefix = draw(st.sampled_from(["", "Question: ", "question:", "Q: ", "  QUERY - "]))
    return prefix + sep.join(out) + draw(st.sampled_from(["?", " ?", "", "?!", ".", "   "]))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_parsing_tolerates_case_punctuation_whitespace_and_a_prefix(world, data):
    questions = world.questions("test")
    q = questions[data.draw(st.integers(0, len(questions) - 1))]
    noisy = _noisy(q.text, data.draw)
    parsed, canonical = parse_query(noisy), parse_query(q.text)
    assert parsed is not None and parsed == canonical
    assert parsed.subject == q.subject
    assert world.decompose(noisy)[1] == q.answer


def test_unparseable_and_foreign_questions_do_not_parse(world):
    person = world.entities["person"][0]
    for text in ("", "hello", f"tell me about {person}", f"where was {person} born and raised?",
                 string.punctuation, f"who founded {person} {person}?"):
        assert parse_query(text) is None
    city = world.entities["city"][0]
    assert parse_query(f"where was {city} born?") is not None  # it parses ...
    assert world.decompose(f"where was {city} born?") is None  # ... but a city has no birthplace


def test_worlds_scale_with_the_suite_sizes():
    w = make_world(0, 30, 7)
    n = 37
    assert {t: len(v) for t, v in w.entities.items()} == {"person": n, "org": n, "country": n, "city": 2 * n}
    assert np.all([len(w.subjects["test"][t]) == 7 for t in ("person", "org", "country")])


def _all_names(world):
    return {n for names in world.entities.values() for n in names}


def test_fresh_worlds_share_no_name_with_the_suite_and_differ_from_each_other():
    options = ComposeOptions(40, 10)
    own = compose_world(2, options)
    fresh0, responder0 = fresh_compose(2, 0, options)
    fresh1, responder1 = fresh_compose(2, 1, options)
    assert not _all_names(own) & _all_names(responder0.world)
    assert not _all_names(own) & _all_names(responder1.world)
    assert _all_names(responder0.world) != _all_names(responder1.world)
    # the same sizes and question forms as the suite's own world
    assert {t: len(v) for t, v in responder0.world.entities.items()} == {t: len(v) for t, v in own.entities.items()}
    assert len(fresh0.train) == 6 * 40 and len(fresh0.test) == 6 * 10
    # record ids never collide with the suite's own
    assert all(r.id.startswith("fresh0-") for r in fresh0.train.records + fresh0.test.records)
    # deterministic
    again, _ = fresh_compose(2, 0, options)
    assert again == fresh0


def test_a_fresh_worlds_records_follow_its_own_facts():
    fresh, responder = fresh_compose(0, 3, ComposeOptions(30, 10))
    facts = responder.world.facts
    for record in fresh.train.records:
        subject = _subject(record.dataset, record.question)
        assert record.golden_answers == (SPEC[record.dataset][2](facts, subject),)


def test_the_suites_resample_hook_answers_queries_about_the_fresh_world():
    spec = SUITES["compose"]
    request = SuiteRequest(data_dir="", seed=1, options=ComposeOptions(30, 10))
    fresh, reply = spec.resample(request, 0)
    _, responder = fresh_compose(1, 0, ComposeOptions(30, 10))
    for record in fresh.train.records[:40]:
        for model in MODEL_TABLE.models:
            assert reply(model, record.question) == record.responses[model]
    assert reply("large-pro", "what is the meaning of life?") in _all_names(responder.world)


def test_names_avoid_a_reserved_set_larger_than_the_first_draw():
    # over 40% of the name space reserved: the first draw of 2,164 codes holds too few free names
    reserved = {str(n) for n in _all_names(make_world(0, 19_000, 1_000))}
    assert len(reserved) > 0.4 * len(SYLLABLES) ** 3
    world = make_world(5, 300, 50, reserved_words=reserved)
    names = _all_names(world)
    assert len(names) == sum(len(v) for v in world.entities.values())
    assert not names & reserved
    assert all(re.fullmatch("(" + "|".join(SYLLABLES) + "){3}", n) for n in names)
