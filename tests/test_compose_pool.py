"""ComposePool and the scripted decomposers: the pool answers the query it is sent, at the
documented rates (within sampling error over many entities), deterministically; the suite's
logged replies are the pool's; the decomposers meet their analytic expectation, re-derived
here in closed form; and the model table has the properties the compose world is built on."""

import math

import numpy as np
import pytest

from recal_jax.data.compose import (
    MODEL_TABLE, ComposeOptions, Responder, compose_world, make_compose, one_call_oracle_rate,
)
from recal_jax.data.schema import DataError, RoutingLog
from recal_jax.evaluation.decomposers import (
    analytic_references, best_model_per_relation, best_per_hop, random_per_hop, scripted_decomposer,
)
from recal_jax.routing.pools.base import call_many_sync
from recal_jax.routing.pools.compose_pool import ComposePool
from recal_jax.routing.pools.registry import POOLS, PoolRequest

# Written independently of the modules: sub-question wording, domain and range of each relation,
# and the two-hop questions with their hops.
HOP = {"born_in": ("where was {} born?", "person", "city"),
       "works_for": ("which company does {} work for?", "person", "org"),
       "city_in": ("which country is {} in?", "city", "country"),
       "capital": ("what is the capital of {}?", "country", "city"),
       "founded_by": ("who founded {}?", "org", "person")}
TWO_HOP = {"birth_country": ("in which country was {} born?", ("born_in", "city_in")),
           "founder_of_employer": ("who founded the company {} works for?", ("works_for", "founded_by")),
           "founder_birthplace": ("where was the founder of {} born?", ("founded_by", "born_in"))}
N_DRAWS = 1000  # entities per rate check: 4 standard errors <= 0.064
MODELS = tuple(MODEL_TABLE.models)


def _within(hits, p, n, k=4.0):
    se = math.sqrt(max(p * (1 - p), 1e-4) / n)
    return abs(hits / n - p) <= k * se + 1e-9, (hits / n, p, k * se)


@pytest.fixture(scope="module")
def world():
    return compose_world(0, ComposeOptions(900, 100))


@pytest.fixture(scope="module")
def pool(world):
    return ComposePool(world, seed=0)


def _ask(pool, model, queries):
    return [r.text for r in call_many_sync(pool, [(model, q, None) for q in queries])]


def _walk(world, subject, hops):
    for r in hops:
        subject = world.facts[r][subject]
    return subject


@pytest.mark.parametrize("relation", sorted(HOP))
def test_a_one_hop_subquestion_gets_the_fact_at_its_skill_rate(world, pool, relation):
    template, domain, range_ = HOP[relation]
    subjects = world.entities[domain][:N_DRAWS]
    targets = set(world.entities[range_])
    for model in MODELS:
        replies = _ask(pool, model, [template.format(x) for x in subjects])
        assert set(replies) <= targets  # right or wrong, an entity of the asked type
        hits = sum(r == world.facts[relation][x] for r, x in zip(replies, subjects))
        ok, info = _within(hits, MODEL_TABLE.models[model].skill[relation], len(subjects))
        assert ok, (model, relation, info)


@pytest.mark.parametrize("dataset", sorted(TWO_HOP))
def test_a_whole_two_hop_question_in_one_call_is_right_at_the_documented_rate(world, pool, dataset):
    template, hops = TWO_HOP[dataset]
    subjects = world.entities[HOP[hops[0]][1]][:N_DRAWS]
    any_right = np.zeros(len(subjects), bool)
    for model in MODELS:
        m = MODEL_TABLE.models[model]
        rate = m.compose * m.skill[hops[0]] * m.skill[hops[1]]  # the documented composition rule
        replies = _ask(pool, model, [template.format(x) for x in subjects])
        right = np.array([r == _walk(world, x, hops) for r, x in zip(replies, subjects)])
        any_right |= right
        ok, info = _within(int(right.sum()), rate, len(subjects))
        assert ok, (model, dataset, info)
    ok, info = _within(int(any_right.sum()), one_call_oracle_rate(MODEL_TABLE, hops), len(subjects))
    assert ok, ("oracle", dataset, info)


def test_the_largest_model_answers_two_hop_questions_in_one_call_at_least_40_percent():
    largest = max(MODELS, key=lambda n: MODEL_TABLE.models[n].info.price_in + MODEL_TABLE.models[n].info.price_out)
    m = MODEL_TABLE.models[largest]
    for _, hops in TWO_HOP.values():
        assert m.compose * m.skill[hops[0]] * m.skill[hops[1]] >= 0.4
        assert MODEL_TABLE.rate(largest, hops) >= 0.4


def _oracle_by_grid(hops, points=200_001):
    """P(some model right in one call), integrated numerically over the shared uniform."""
    u = (np.arange(points) + 0.5) / points
    rates = [MODEL_TABLE.models[m].compose * math.prod(MODEL_TABLE.models[m].skill[r] for r in hops) for m in MODELS]
    rho = MODEL_TABLE.shared
    none = np.prod([rho * (u >= c) + (1 - rho) * (1 - c) for c in rates], axis=0)
    return 1.0 - float(none.mean())


def test_best_per_hop_beats_the_single_call_oracle_and_every_single_model_in_expectation():
    best = {r: max(m.skill[r] for m in MODEL_TABLE.models.values()) for r in HOP}
    for dataset, (_, hops) in TWO_HOP.items():
        oracle = _oracle_by_grid(hops)
        assert one_call_oracle_rate(MODEL_TABLE, hops) == pytest.approx(oracle, abs=1e-4)
        decomposed = best[hops[0]] * best[hops[1]]  # the chain's leading term (recoveries only add)
        assert decomposed > oracle + 0.1, (dataset, decomposed, oracle)
        for m in MODEL_TABLE.models.values():  # one call, or that one model on every hop
            assert decomposed > m.compose * m.skill[hops[0]] * m.skill[hops[1]]
            assert decomposed > m.skill[hops[0]] * m.skill[hops[1]]


def test_one_hop_questions_are_best_served_by_a_cheaper_specialist():
    largest = max(MODELS, key=lambda n: MODEL_TABLE.models[n].info.price_in)
    for relation in HOP:
        best = max(MODELS, key=lambda n: MODEL_TABLE.models[n].skill[relation])
        assert best != largest
        assert MODEL_TABLE.models[best].skill[relation] > MODEL_TABLE.models[largest].skill[relation]
        assert MODEL_TABLE.models[best].info.price_in < MODEL_TABLE.models[largest].info.price_in


def test_replies_depend_on_the_query_not_on_a_record(world, pool):
    people = world.entities["person"][:N_DRAWS]
    others = people[1:] + people[:1]
    replies = _ask(pool, "bio-expert", [f"where was {y} born?" for y in others])
    about_y = sum(r == world.facts["born_in"][y] for r, y in zip(replies, others))
    about_x = sum(r == world.facts["born_in"][x] for r, x in zip(replies, people))
    assert about_y > 0.85 * len(people)  # the asked entity's fact (skill 0.95) ...
    assert about_x < 0.02 * len(people)  # ... which is a wrong reply for the other person's question
    # the record is ignored: the same query gets the same reply with or without one
    record = make_compose(0, 3, 2).test.records[0]
    q = f"where was {people[0]} born?"
    with_record = call_many_sync(pool, [("bio-expert", q, record), ("bio-expert", q, None)])
    assert with_record[0].text == with_record[1].text and not ComposePool.needs_record


def test_an_unreadable_query_gets_a_plausible_wrong_reply(world):
    responder = Responder(world, MODEL_TABLE, seed=0)
    person, city = world.entities["person"][0], world.entities["city"][0]
    cases = {"where was zzzzzz born?": "city", f"which country is {person} in?": "country",
             f"which company does {city} work for?": "org", f"who is the boss of {person}?": "person",
             "what is the capital of nowhere?": "city", "???": None, f"tell me about {person}": None}
    kind = {n: t for t, names in world.entities.items() for n in names}
    for model in MODELS:
        for query, expected in cases.items():
            reply = responder.reply(model, query)
            assert reply.correct is None and reply.text in kind
            if expected:
                assert kind[reply.text] == expected, (query, reply.text)
            assert responder.reply(model, query) == reply  # deterministic


def test_replies_are_deterministic_in_seed_model_and_normalised_query(world):
    queries = [HOP[r][0].format(world.entities[HOP[r][1]][i]) for r in HOP for i in range(40)]
    queries += [TWO_HOP[d][0].format(world.entities[HOP[TWO_HOP[d][1][0]][1]][i]) for d in TWO_HOP for i in range(40)]
    for model in MODELS:
        a = _ask(ComposePool(world, seed=0), model, queries)
        assert a == _ask(ComposePool(world, seed=0), model, queries)
        noisy = ["Question: " + q.upper().replace(" ", "  ") for q in queries]
        assert a == _ask(ComposePool(world, seed=0), model, noisy)
        assert a != _ask(ComposePool(world, seed=1), model, queries)


def test_the_registered_pool_replays_the_suites_logged_replies_and_costs():
    options = ComposeOptions(n_train_per_dataset=25, n_test_per_dataset=10)
    suite = make_compose(2, 25, 10)
    for log in (suite.train, suite.test):
        pool = POOLS["compose"].build(PoolRequest(log=log, seed=2, suite_options=options))
        requests = [(m, r.question, None) for r in log.records for m in log.model_names]
        replies = iter(call_many_sync(pool, requests))
        for record in log.records:
            for m in log.model_names:
                reply = next(replies)
                assert reply.ok and reply.text == record.responses[m]
                assert reply.cost_usd == pytest.approx(record.costs[m])
    with pytest.raises(DataError):
        POOLS["compose"].build(PoolRequest(log=suite.test, seed=2, suite_options=object()))


# ---- scripted decomposers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_suite():
    return make_compose(1, 10, 400)


def _closed_form(world, subject, hops, s1, s2):
    """P(right) of a two-hop chain: hop k right w.p. s_k, a wrong reply uniform over the other
    entities of its type. Hop 1 wrong still ends right when the wrong entity W has the same
    object (a = share of such W), or when hop 2 on W is wrong and names the gold by chance."""
    t1 = world.facts[hops[0]][subject]
    gold = world.facts[hops[1]][t1]
    type1, type2 = HOP[hops[0]][2], HOP[hops[1]][2]
    k1, k2 = len(world.entities[type1]), len(world.entities[type2])
    a = sum(world.facts[hops[1]][w] == gold for w in world.entities[type1] if w != t1) / (k1 - 1)
    return s1 * s2 + (1 - s1) * (s2 * a + (1 - s2) * (1 - a) / (k2 - 1))


def _expected(world, log: RoutingLog, skill):
    out = []
    for r in log.records:
        if r.dataset in TWO_HOP:
            template, hops = TWO_HOP[r.dataset]
            subject = next(w for w in r.question.rstrip("?").split() if template.format(w) == r.question)
            out.append(_closed_form(world, subject, hops, skill[hops[0]], skill[hops[1]]))
        else:
            relation = {"birthplace": "born_in", "employer": "works_for", "capital": "capital"}[r.dataset]
            out.append(skill[relation])
    return np.array(out)


@pytest.mark.parametrize("which", ["best_per_hop", "random_per_hop"])
def test_scripted_decomposers_meet_their_analytic_expectation(big_suite, which):
    log = big_suite.test
    world = compose_world(1, ComposeOptions(10, 400))
    pool = ComposePool(world, seed=1)
    if which == "best_per_hop":
        skill = {r: max(m.skill[r] for m in MODEL_TABLE.models.values()) for r in HOP}
        chooser = best_per_hop()
    else:
        skill = {r: float(np.mean([m.skill[r] for m in MODEL_TABLE.models.values()])) for r in HOP}
        chooser = random_per_hop(seed=7)
    expected = _expected(world, log, skill)
    analytic = analytic_references(log, world)[which]
    run = scripted_decomposer(log, pool, world, chooser, which)
    datasets = np.array([r.dataset for r in log.records])
    for d in log.datasets:
        p = expected[datasets == d]
        assert analytic["per_dataset"][d] == pytest.approx(p.mean(), abs=1e-9)
        se = math.sqrt(float((p * (1 - p)).sum())) / len(p)
        assert abs(run.result.per_dataset[d] - p.mean()) <= 4 * se + 1e-3, (d, run.result.per_dataset[d], p.mean())
        assert run.calls_per_dataset[d] == (2.0 if d in TWO_HOP else 1.0)
    assert run.result.accuracy == pytest.approx(np.mean(list(run.result.per_dataset.values())))
    assert sum(run.result.route_share.values()) == pytest.approx(1.0)


def test_best_per_hop_is_the_skill_argmax_and_cheaper_than_the_large_model(big_suite):
    price = {n: m.info.price_in + m.info.price_out for n, m in MODEL_TABLE.models.items()}
    for relation, chosen in best_model_per_relation().items():
        top = max(m.skill[relation] for m in MODEL_TABLE.models.values())
        tied = [n for n, m in MODEL_TABLE.models.items() if m.skill[relation] == top]
        assert chosen == min(tied, key=lambda n: price[n])
    log = big_suite.test
    world = compose_world(1, ComposeOptions(10, 400))
    run = scripted_decomposer(log, ComposePool(world, seed=1), world, best_per_hop(), "best_per_hop")
    largest = max(price, key=price.get)
    multi = [i for i, r in enumerate(log.records) if r.dataset in TWO_HOP]
    one = [i for i, r in enumerate(log.records) if r.dataset not in TWO_HOP]
    large_cost = np.mean([log.records[i].costs[largest] for i in multi])
    multi_log = log.subset([log.records[i] for i in multi])
    run_multi = scripted_decomposer(multi_log, ComposePool(world, seed=1), world, best_per_hop(), "best_per_hop")
    assert run_multi.result.cost_per_query < large_cost
    # a two-hop question: hop 2 asks about the entity hop 1 replied, to that relation's best model
    best = best_model_per_relation()
    for i in multi:
        record, calls = log.records[i], run.calls[i]
        template, hops = TWO_HOP[record.dataset]
        (m1, q1, r1), (m2, q2, r2) = calls
        subject = next(w for w in record.question.rstrip("?").split() if template.format(w) == record.question)
        assert q1 == HOP[hops[0]][0].format(subject)
        assert (m1, m2) == (best[hops[0]], best[hops[1]])
        assert q2 == HOP[hops[1]][0].format(r1) and run.answers[i] == r2
    # a one-hop question is one call with the question itself: the logged outcome of its specialist
    relation = {"birthplace": "born_in", "employer": "works_for", "capital": "capital"}
    for i in one:
        record = log.records[i]
        assert run.answers[i] == record.responses[best[relation[record.dataset]]]
