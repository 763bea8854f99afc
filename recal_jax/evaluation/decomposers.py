"""Scripted decomposers: the multi-call reference routers of the compose world.

For each question of a log, a decomposer asks the question's hops one after the other, each as
its one-hop sub-question (`compose_world.hop_query`) about the question's subject for hop 1 and
about the entity parsed from the previous reply for the next hops, to a model chosen per hop
(`choose_model(record, hop_index, relation) -> model`), and answers with the last reply's
entity. A one-hop question gets one call: the question itself. Two choosers:

  * `best_per_hop`: the model of the highest skill on the hop's relation (ties: the cheaper),
    the multi-turn optimum the world allows;
  * `random_per_hop`: a uniform model per (record, hop), seeded (what the SFT demonstrations
    use: no hint of which model is good).

Their analytic expectations (`analytic_references`) come from the skill table and the world:
hop k is right with the chosen model's skill; a wrong reply is uniform over the other entities
of its type, so the chain's final answer is right with probability `expected_chain_accuracy`
(exactly the product of the hop skills, plus the rare chains that recover: a wrong city in the
same country, or a wrong reply that happens to be the gold). For random_per_hop the hop skill
is the mean over models (the expectation is affine in each hop's skill, and the hops' models
are drawn independently).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Mapping

import numpy as np

from recal_jax.data.compose import MODEL_TABLE, SkillTable, compose_world, one_call_oracle_rate
from recal_jax.data.compose_world import FORMS, RELATIONS, World, hop_query, normalize_query
from recal_jax.data.schema import RoutingLog, RoutingRecord
from recal_jax.evaluation.per_dataset import per_dataset_mean
from recal_jax.evaluation.router_result import RouterResult, log_dataset_ids, router_result
from recal_jax.evaluation.suite_references import SuiteReference, register_references
from recal_jax.routing.answers import exact_match
from recal_jax.routing.pools.base import Pool, call_many_sync
from recal_jax.routing.pools.distractors import stable_hash

Chooser = Callable[[RoutingRecord, int, str], str]


def best_model_per_relation(table: SkillTable = MODEL_TABLE) -> dict[str, str]:
    """relation -> the model of the highest skill on it (ties: the lower price, then table order)."""
    def best(relation: str) -> str:
        return min(table.models, key=lambda m: (-table.models[m].skill[relation],
                                                table.models[m].info.price_in + table.models[m].info.price_out))
    return {relation: best(relation) for relation in RELATIONS}


def best_per_hop(table: SkillTable = MODEL_TABLE) -> Chooser:
    best = best_model_per_relation(table)
    return lambda record, hop, relation: best[relation]


def random_per_hop(seed: int, models=tuple(MODEL_TABLE.models)) -> Chooser:
    """A uniform model per (record id, hop index), deterministic in `seed`."""
    models = tuple(models)
    return lambda record, hop, relation: models[stable_hash("random_per_hop", seed, record.id, hop) % len(models)]


def reply_answer(text: str) -> str:
    """The entity a reply names: its last word after normalisation ("" for an empty reply)."""
    words = normalize_query(text).split()
    return words[-1] if words else ""


@dataclasses.dataclass(frozen=True)
class DecomposerRun:
    """A decomposer's RouterResult (accuracy, cost per query, per-dataset accuracy, call share
    per model) with its calls per question, overall and per dataset, its final answers, and per
    record its calls (model, sub-question, reply text) in order: a demonstration's content."""

    result: RouterResult
    calls_per_question: float
    calls_per_dataset: dict[str, float]
    answers: tuple[str, ...]
    calls: tuple[tuple[tuple[str, str, str], ...], ...] = ()

    def to_json(self) -> dict:
        return {**self.result.to_json(), "calls_per_question": self.calls_per_question,
                "calls_per_dataset": dict(self.calls_per_dataset)}


def scripted_decomposer(log: RoutingLog, pool: Pool, world: World, choose_model: Chooser,
                        name: str = "decomposer") -> DecomposerRun:
    """Run the decomposer on every record of `log` against `pool` (all records' hop k at once).
    Every question must be one of `world` (ValueError otherwise)."""
    parsed = []
    for record in log.records:
        found = world.decompose(record.question)
        if found is None:
            raise ValueError(f"record {record.id!r}: {record.question!r} is not a question of the world")
        parsed.append(found[0])
    n = len(parsed)
    current = [p.subject for p in parsed]
    costs, calls = np.zeros(n), np.zeros(n, np.int64)
    trace: list[list[tuple[str, str, str]]] = [[] for _ in range(n)]
    share: collections.Counter = collections.Counter()
    for hop in range(max((len(p.hops) for p in parsed), default=0)):
        rows = [i for i, p in enumerate(parsed) if len(p.hops) > hop]
        requests = [(choose_model(log.records[i], hop, parsed[i].hops[hop]),
                     hop_query(parsed[i].hops[hop], current[i]), None) for i in rows]
        for i, (model, query, _), reply in zip(rows, requests, call_many_sync(pool, requests)):
            trace[i].append((model, query, reply.text))
            costs[i] += reply.cost_usd
            calls[i] += 1
            share[model] += 1
            current[i] = reply_answer(reply.text) if reply.ok else ""
    scores = np.array([exact_match(a, r.golden_answers) for a, r in zip(current, log.records)], np.float64)
    total = max(sum(share.values()), 1)
    result = router_result(log, name, scores, costs, {m: share[m] / total for m in log.model_names})
    return DecomposerRun(result=result, calls_per_question=float(calls.mean()) if n else 0.0,
                         calls_per_dataset=per_dataset_mean(calls.astype(np.float64), log_dataset_ids(log),
                                                            log.datasets),
                         answers=tuple(current), calls=tuple(tuple(t) for t in trace))


def decomposer_references(log: RoutingLog, pool: Pool, world: World, seed: int = 0,
                          table: SkillTable = MODEL_TABLE) -> dict[str, DecomposerRun]:
    """{'best_per_hop': ..., 'random_per_hop': ...} on `log` (random draws keyed by `seed`)."""
    return {"best_per_hop": scripted_decomposer(log, pool, world, best_per_hop(table), "best_per_hop"),
            "random_per_hop": scripted_decomposer(log, pool, world, random_per_hop(seed, table.models),
                                                  "random_per_hop")}


# ---- analytic expectations -------------------------------------------------------------------

def _images(world: World) -> dict[str, np.ndarray]:
    """relation -> i64[len(domain)]: the index (in its range type) of each domain entity's object."""
    return {r: np.array([world.index_of(world.facts[r][e]) for e in world.entities[rel.domain]], np.int64)
            for r, rel in RELATIONS.items()}


def expected_chain_accuracy(world: World, subject: str, hops, hop_skills, images=None) -> float:
    """P(the chain's last reply is the gold) when hop k's model is right with probability
    hop_skills[k] and a wrong reply is uniform over the other entities of its type: the
    distribution of the current entity, pushed through each hop (exact, any number of hops)."""
    images = images if images is not None else _images(world)
    dist = np.zeros(len(world.entities[RELATIONS[hops[0]].domain]))
    dist[world.index_of(subject)] = 1.0
    for relation, s in zip(hops, hop_skills):
        size = len(world.entities[RELATIONS[relation].range])
        pushed = np.bincount(images[relation], weights=dist, minlength=size)
        dist = s * pushed + (1.0 - s) * (1.0 - pushed) / (size - 1)
    return float(dist[world.index_of(world.follow(subject, hops))])


def best_hop_skills(table: SkillTable = MODEL_TABLE) -> dict[str, float]:
    best = best_model_per_relation(table)
    return {r: table.models[best[r]].skill[r] for r in RELATIONS}


def random_hop_skills(table: SkillTable = MODEL_TABLE) -> dict[str, float]:
    return {r: float(np.mean([m.skill[r] for m in table.models.values()])) for r in RELATIONS}


def _summary(log: RoutingLog, values) -> dict:
    values = np.asarray(values, np.float64)
    return {"accuracy": float(values.mean()) if len(values) else 0.0,
            "per_dataset": per_dataset_mean(values, log_dataset_ids(log), log.datasets)}


def analytic_decomposer(log: RoutingLog, world: World, hop_skills: Mapping[str, float]) -> dict:
    """{'accuracy', 'per_dataset'}: the expected accuracy on `log` of a decomposer whose hop of
    relation r is right with probability hop_skills[r]."""
    images = _images(world)
    values = []
    for record in log.records:
        parsed = world.decompose(record.question)[0]
        values.append(expected_chain_accuracy(world, parsed.subject, parsed.hops,
                                              [hop_skills[r] for r in parsed.hops], images))
    return _summary(log, values)


def analytic_references(log: RoutingLog, world: World, table: SkillTable = MODEL_TABLE) -> dict[str, dict]:
    """Expected accuracy (overall and per dataset) on `log` of each single model in one call
    ('single:<model>'), the single-call oracle ('oracle': some model right in one call), and the
    two scripted decomposers ('best_per_hop', 'random_per_hop'), from the table alone."""
    hops = [FORMS[r.dataset].hops for r in log.records]
    out = {f"single:{m}": _summary(log, [table.rate(m, h) for h in hops]) for m in table.models}
    oracle = {d: one_call_oracle_rate(table, f.hops) for d, f in FORMS.items()}
    out["oracle"] = _summary(log, [oracle[r.dataset] for r in log.records])
    out["best_per_hop"] = analytic_decomposer(log, world, best_hop_skills(table))
    out["random_per_hop"] = analytic_decomposer(log, world, random_hop_skills(table))
    return out


__all__ = ["Chooser", "DecomposerRun", "analytic_decomposer", "analytic_references", "best_hop_skills",
           "best_model_per_relation", "best_per_hop", "decomposer_references", "expected_chain_accuracy",
           "random_hop_skills", "random_per_hop", "reply_answer", "scripted_decomposer"]


def _compose_references(test_log: RoutingLog, pool: Pool, seed: int, options) -> dict[str, SuiteReference]:
    """The run's decomposer references (suite_references registry), on the run's own test pool."""
    runs = decomposer_references(test_log, pool, compose_world(seed, options), seed)
    return {f"decomposer_{name}": SuiteReference(
        dataclasses.replace(run.result, name=f"decomposer ({name.replace('_', ' ')})"),
        {"calls_per_question": run.calls_per_question, "calls_per_dataset": dict(run.calls_per_dataset)})
        for name, run in runs.items()}


register_references("compose", _compose_references)
