"""The compositional suite `compose`: the world of `compose_world`, the models that answer
queries about it (MODEL_TABLE), and the routing logs of its questions.

A model answers the QUERY it is sent, never a record: `Responder.reply(model, query)` reads the
query against the world's templates (`compose_world.parse_query`) and

  * a one-hop query of relation r about a known entity is right with probability
    skill[model][r];
  * a whole multi-hop question in one call is right with probability
    compose[model] * product over its hops of skill[model][hop] (the composition rule: a model
    that knows every fact still loses a share of chained questions in one pass);
  * a right reply is the answer entity; a wrong one is another entity of the answer's type,
    uniform over them (so a wrong reply never contains the gold);
  * an unreadable query (no template matches, or the subject is no entity of the template's
    domain) gets a plausible wrong reply: a uniform entity of the type the template (or a
    question word: "country", "company", "who", "where") asks for, else of any type.

A reply is the bare entity name ("velora"): what the engine puts in `<information>`.
Draws are deterministic in (seed, model, canonical query): model m is right iff u < p, where
u is, with probability MODEL_TABLE.shared, the query's shared uniform (the same for every
model: a question hard for one model tends to be hard for all) and else the model's own.
Either way u is uniform, so every model's rate is exactly p; the shared part only lowers the
single-call oracle (`one_call_oracle_rate`). Every wording of a question that parses to the
same (hops, subject) gets the same reply.

Costs: price_usd of estimate_tokens(query) in and estimate_tokens(reply) out, as SimulatedPool;
a record's costs[m] is that cost for its question, so the decomposers (several calls) and the
single-call references (one call on the whole question) pay by the same rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Mapping

from recal_jax.data.compose_world import (
    DATASETS, ENTITY_TYPES, MULTI_HOP_DATASETS, RELATIONS, ParsedQuery, World, make_world, normalize_query,
    parse_query, renamer,
)
from recal_jax.data.registry import OptionError, Plan, SuiteRequest, SuiteSpec, register_suite
from recal_jax.data.schema import ModelInfo, RoutingLog, RoutingRecord, estimate_tokens, price_usd
from recal_jax.data.suite import Suite


@dataclasses.dataclass(frozen=True)
class ComposeModel:
    """One model of the world: prices and prompt description, skill per relation, and its
    composition factor (the share of chained questions it gets right in one call when it knows
    every fact)."""

    info: ModelInfo
    skill: Mapping[str, float]
    compose: float


@dataclasses.dataclass(frozen=True)
class SkillTable:
    models: Mapping[str, ComposeModel]
    shared: float  # probability that a model's draw uses the query's shared uniform

    def __post_init__(self):
        for name, m in self.models.items():
            if m.info.name != name:
                raise ValueError(f"model key {name!r} differs from its ModelInfo name {m.info.name!r}")
            if set(m.skill) != set(RELATIONS):
                raise ValueError(f"model {name!r}: skills must cover exactly the relations {sorted(RELATIONS)}")
            for p in (*m.skill.values(), m.compose):
                if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
                    raise ValueError(f"model {name!r}: skills and compose must be probabilities, got {p!r}")
        if not 0.0 <= self.shared <= 1.0:
            raise ValueError(f"shared must be in [0, 1], got {self.shared!r}")

    @property
    def infos(self) -> dict[str, ModelInfo]:
        return {name: m.info for name, m in self.models.items()}

    def rate(self, model: str, hops) -> float:
        """P(model answers the chain `hops` right in one call): skill for one hop, compose x
        the product of the hop skills for more."""
        m = self.models[model]
        product = math.prod(m.skill[r] for r in hops)
        return product if len(hops) == 1 else m.compose * product


def _table(rows: Mapping[str, tuple], shared: float) -> SkillTable:
    relations = ("born_in", "works_for", "city_in", "capital", "founded_by")
    models = {}
    for name, (price, skills, compose, description) in rows.items():
        models[name] = ComposeModel(ModelInfo(name, price, price, description), dict(zip(relations, skills)), compose)
    return SkillTable(models, shared)


# The one table of the compose world, fixed before any RL run (never tuned on RL results).
#   price: USD per 1M tokens, in and out.  skills: born_in, works_for, city_in, capital, founded_by.
MODEL_TABLE = _table({
    #              price  born  works city  capit found   compose
    "large-pro":  (2.00, (0.88, 0.88, 0.88, 0.88, 0.88), 0.70,
                   "largest and most expensive; good at every kind of fact"),
    "geo-expert": (0.20, (0.40, 0.30, 0.96, 0.96, 0.30), 0.40,
                   "cheap geography specialist: countries of cities, capitals"),
    "bio-expert": (0.20, (0.95, 0.95, 0.40, 0.40, 0.35), 0.40,
                   "cheap people specialist: where people were born, where they work"),
    "biz-expert": (0.30, (0.45, 0.60, 0.35, 0.35, 0.95), 0.40,
                   "cheap business specialist: who founded a company"),
    "tiny-fast":  (0.05, (0.30, 0.30, 0.30, 0.30, 0.30), 0.30,
                   "very cheap and fast; weak at every kind of fact"),
}, shared=0.5)
"""MODEL_TABLE: why these numbers.

* large-pro is the best single model (about 0.88 on one-hop questions and 0.70 x 0.88**2 = 0.54
  on two-hop questions in one call: at least the 0.4 a large model reaches on HotpotQA-like
  questions), at 10x the price of a specialist.
* Each relation has a cheap specialist at 0.95-0.96 (bio-expert: born_in, works_for;
  geo-expert: city_in, capital; biz-expert: founded_by), weak (0.30-0.60) elsewhere. A one-hop
  question is best served by one call to its specialist: more accurate than large-pro and 10x
  cheaper.
* A two-hop question decomposed with the best model per hop is right about 0.95 x 0.95 = 0.90
  of the time for two cheap calls (about a sixth of large-pro's one-call cost), against 0.54 for
  large-pro in one call and 0.77 for large-pro on both hops (at 1.5-2x its one-call cost). The
  single-call oracle (some model right in one call) is 0.65-0.66 with the shared difficulty
  (`one_call_oracle_rate`), and at most 1 - prod(1 - rate) = 0.70-0.71 even if the models' draws
  were independent: well below the best-per-hop decomposer.
* tiny-fast is the weak cheap one; random models per hop give about 0.34 on two-hop questions
  and 0.59 on one-hop questions.
"""


def _uniform(*parts: object) -> float:
    digest = hashlib.sha256("\x1f".join(("compose", *map(str, parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def _hash(*parts: object) -> int:
    return int(_uniform(*parts) * 2.0**52)


def one_call_oracle_rate(table: SkillTable, hops) -> float:
    """P(at least one model answers a question of chain `hops` right in one call), exactly:
    1 - integral over the shared uniform u of prod_m P(m wrong | u), where m is wrong when its
    draw is the shared u >= rate_m (prob. `shared`) or its own uniform is >= rate_m."""
    rates = [table.rate(m, hops) for m in table.models]
    cuts = sorted({0.0, 1.0, *rates})
    none_right = 0.0
    for lo, hi in zip(cuts, cuts[1:]):
        u = (lo + hi) / 2  # the integrand is constant between consecutive rates
        none_right += (hi - lo) * math.prod(table.shared * (u >= c) + (1 - table.shared) * (1 - c) for c in rates)
    return 1.0 - none_right


@dataclasses.dataclass(frozen=True)
class Reply:
    """text: what the model says; correct: None for an unreadable query (no right answer)."""

    text: str
    correct: bool | None
    parsed: ParsedQuery | None


_TYPE_WORDS = (("country", "country"), ("company", "org"), ("work", "org"), ("who", "person"),
               ("where", "city"), ("city", "city"), ("capital", "city"), ("born", "city"))


class Responder:
    """The models of MODEL_TABLE (or `table`) answering queries about `world` (module docstring)."""

    def __init__(self, world: World, table: SkillTable = MODEL_TABLE, seed: int = 0):
        self.world, self.table, self.seed = world, table, int(seed)

    def reply(self, model: str, query: str) -> Reply:
        if model not in self.table.models:
            raise KeyError(f"unknown model {model!r}; the table has {list(self.table.models)}")
        parsed = parse_query(query)
        truth = None if parsed is None else self.world.follow(parsed.subject, parsed.hops)
        if truth is None:
            return Reply(self._unreadable(model, query, parsed), None, parsed)
        key = parsed.key
        p = self.table.rate(model, parsed.hops)
        shared = _uniform(self.seed, "coin", model, key) < self.table.shared
        u = _uniform(self.seed, "shared", key) if shared else _uniform(self.seed, "own", model, key)
        if u < p:
            return Reply(truth, True, parsed)
        others = self.world.entities[parsed.answer_type]
        j = _hash(self.seed, "wrong", model, key) % (len(others) - 1)
        return Reply(others[j if j < self.world.index_of(truth) else j + 1], False, parsed)

    def _unreadable(self, model: str, query: str, parsed: ParsedQuery | None) -> str:
        norm = normalize_query(query)
        if parsed is not None:
            kind = parsed.answer_type
        else:
            words = set(norm.split())
            kind = next((t for w, t in _TYPE_WORDS if w in words), None)
        names = (self.world.entities[kind] if kind else
                 tuple(n for t in ENTITY_TYPES for n in self.world.entities[t]))
        return names[_hash(self.seed, "unreadable", model, norm) % len(names)]

    def cost(self, model: str, query: str, reply: str) -> float:
        return price_usd(self.table.models[model].info, estimate_tokens(query), estimate_tokens(reply))


@dataclasses.dataclass(frozen=True)
class ComposeOptions:
    """Questions per dataset in each split of the compose suite (the world is sized from them)."""

    n_train_per_dataset: int = 300
    n_test_per_dataset: int = 50

    def __post_init__(self):
        for field in ("n_train_per_dataset", "n_test_per_dataset"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise OptionError(field, "must be an integer >= 1")
        if self.n_train_per_dataset + self.n_test_per_dataset > 20_000:
            raise OptionError("n_train_per_dataset", "n_train_per_dataset + n_test_per_dataset must be at most 20000")


def compose_world(seed: int, options: ComposeOptions | None = None, table: SkillTable = MODEL_TABLE) -> World:
    """The world of the compose suite of this seed and these options (cheap, deterministic)."""
    options = options or ComposeOptions()
    return make_world(seed, options.n_train_per_dataset, options.n_test_per_dataset, reserved_words=table.models)


def _record(responder: Responder, question, rid: str) -> RoutingRecord:
    scores, responses, costs = {}, {}, {}
    for m in responder.table.models:
        reply = responder.reply(m, question.text)
        scores[m] = float(bool(reply.correct))
        responses[m] = reply.text
        costs[m] = responder.cost(m, question.text, reply.text)
    return RoutingRecord(id=rid, dataset=question.dataset, question=question.text, golden_answers=(question.answer,),
                         scores=scores, responses=responses, costs=costs)


def make_compose(seed: int = 0, n_train_per_dataset: int = 300, n_test_per_dataset: int = 50,
                 table: SkillTable = MODEL_TABLE) -> Suite:
    """The compose suite: per split, one record per question of the world (compose_world);
    scores[m] = 1 iff model m answers the whole question right in ONE call, responses[m] that
    reply, costs[m] its cost. Replies equal those of a ComposePool of the same seed."""
    world = compose_world(seed, ComposeOptions(int(n_train_per_dataset), int(n_test_per_dataset)), table)
    return _suite_of(world, Responder(world, table, seed), table, "compose")


def _suite_of(world: World, responder: Responder, table: SkillTable, prefix: str) -> Suite:
    logs = {}
    for split in ("train", "test"):
        records = [_record(responder, q, f"{prefix}-{split}-{q.dataset}-{i}")
                   for i, q in enumerate(world.questions(split))]
        logs[split] = RoutingLog(records=tuple(records), models=table.infos, datasets=DATASETS,
                                 protocol="multi_turn", name=f"{prefix}/{split}")
    return Suite(train=logs["train"], test=logs["test"])


# Fresh worlds are seeded apart from any suite seed a user would pick (names are kept apart anyway).
FRESH_SEED_BASE = 1_000_003


def fresh_compose(seed: int, k: int, options: ComposeOptions | None = None,
                  table: SkillTable = MODEL_TABLE) -> tuple[Suite, Responder]:
    """The k-th re-drawn world of the compose suite of `seed` (same sizes and table, other facts)
    and its responder. None of its entity names is an entity of the suite's own world, so
    demonstrations on it never show a name of the suite's questions. Its record ids start with
    'fresh<k>-'."""
    options = options or ComposeOptions()
    own = compose_world(seed, options, table)
    reserved = (*table.models, *(n for names in own.entities.values() for n in names))
    fresh_seed = FRESH_SEED_BASE * (int(k) + 1) + int(seed)
    world = make_world(fresh_seed, options.n_train_per_dataset, options.n_test_per_dataset, reserved_words=reserved)
    responder = Responder(world, table, fresh_seed)
    return _suite_of(world, responder, table, f"fresh{int(k)}"), responder


def _resample(request: SuiteRequest, k: int):
    suite, responder = fresh_compose(request.seed, k, request.options)
    return suite, lambda model, query: responder.reply(model, query).text


def multi_hop_datasets(suite: Suite | RoutingLog | None = None) -> tuple[str, ...]:
    """The datasets whose questions need two or more hops (of `suite`'s datasets, in its order)."""
    if suite is None:
        return MULTI_HOP_DATASETS
    datasets = suite.train.datasets if isinstance(suite, Suite) else suite.datasets
    return tuple(d for d in datasets if d in MULTI_HOP_DATASETS)


def _load(request: SuiteRequest) -> Suite:
    options = request.options or ComposeOptions()
    return make_compose(request.seed, options.n_train_per_dataset, options.n_test_per_dataset)


def _planner(request: SuiteRequest):
    """record -> Plan: the one-hop templates of the question's chain, about its subject."""
    def plan(record: RoutingRecord) -> Plan | None:
        parsed = parse_query(record.question)
        if parsed is None:
            return None
        return Plan(parsed.subject, tuple(RELATIONS[h].template for h in parsed.hops))
    return plan


def entity_names(suite: Suite) -> tuple[str, ...]:
    """Every entity name the suite's questions, gold answers and logged replies mention."""
    names: dict[str, None] = {}
    for log in (suite.train, suite.test):
        for r in log.records:
            parsed = parse_query(r.question)
            for word in ((parsed.subject,) if parsed else ()) + tuple(r.golden_answers) + tuple((r.responses or {}).values()):
                names.setdefault(normalize_query(word), None)
    return tuple(n for n in names if n)


register_suite(SuiteSpec(
    "compose", _load, protocol="multi_turn", needs_data_dir=False, pool="compose", options=ComposeOptions,
    multi_hop=multi_hop_datasets, planner=_planner, atomic_words=entity_names, resample=_resample,
    renamer=renamer,
    description="embedded: a compositional world of people, cities, countries and companies; one- and "
                "two-hop questions, 5 simulated models that answer the query they are sent"))

__all__ = ["ComposeModel", "ComposeOptions", "MODEL_TABLE", "Reply", "Responder", "SkillTable", "compose_world",
           "fresh_compose", "make_compose", "multi_hop_datasets", "one_call_oracle_rate"]
