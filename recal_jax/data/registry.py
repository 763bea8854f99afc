"""The suites a run can train on, registered in one place.

A suite is a name, a loader, the protocol it runs by default, whether it reads logged data
from `data_dir`, the pool that answers its calls by default, and (optionally) a frozen
dataclass of its own options (the config section named after the suite, e.g.
`config.synthetic`). The config parser, the run's setup and the experiment scripts all read
`SUITES`; adding a suite is one `register_suite(SuiteSpec(...))` plus its loader (see
docs/contracts.md, "Add a suite").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from recal_jax.data.schema import RoutingRecord
from recal_jax.data.loaders import load_dcrouter, load_jsonl_dir, load_nq_pool6, load_qa7
from recal_jax.data.suite import Suite
from recal_jax.data.synthetic import make_synthetic


class OptionError(ValueError):
    """A suite option that cannot work: `field` names the option, the message says why."""

    def __init__(self, field: str, requirement: str):
        super().__init__(f"{field}: {requirement}")
        self.field, self.requirement = field, requirement


@dataclasses.dataclass(frozen=True)
class SuiteRequest:
    """What a loader gets: the data directory ('' for embedded suites), the run's seed, the
    protocol override ('' = the suite's own) and the suite's options (None without)."""

    data_dir: str
    seed: int
    protocol: str = ""
    options: Any = None


@dataclasses.dataclass(frozen=True)
class SuiteSpec:
    """name: the value of --config.suite. load: SuiteRequest -> Suite (DataError on bad data).
    protocol: the protocol of its logs (None: the log's own, e.g. a user's jsonl directory).
    needs_data_dir: it reads logged data from --config.data_dir. pool: the pool registry's
    default for it ('auto': replay when the log has scores, else simulated). options: a frozen
    dataclass of the suite's own settings (config.<name>), validated in __post_init__ by
    raising OptionError; None when the suite has none. multi_hop: Suite -> the datasets whose
    questions need two or more calls (summary.json's multi_hop_datasets). planner: SuiteRequest ->
    (record -> Plan or None), how a question decomposes into sub-questions (the SFT rule
    'decompose_random' demonstrates it). atomic_words, resample: see the fields."""

    name: str
    load: Callable[[SuiteRequest], Suite]
    protocol: str | None
    needs_data_dir: bool
    pool: str = "auto"
    options: type | None = None
    description: str = ""
    multi_hop: Callable[[Suite], tuple[str, ...]] | None = None
    planner: Callable[[SuiteRequest], Callable[[RoutingRecord], "Plan | None"]] | None = None
    # Suite -> words a trained tokenizer keeps whole, one token each (tokenizer.suite_words):
    # e.g. the compose world's entity names, which the policy copies from text to text.
    atomic_words: Callable[[Suite], tuple[str, ...]] | None = None
    # (SuiteRequest, k) -> (Suite, reply): the k-th re-drawn world of the same kind, none of whose
    # entity names occurs in the request's own suite, and reply(model, query) -> the text its pool
    # answers. SFT demonstrates on such worlds (sft.fresh_worlds) so that a name cannot be learnt by
    # heart and the copy has to generalise to names never seen.
    resample: Callable[[SuiteRequest, int], tuple[Suite, Callable[[str, str], str]]] | None = None
    # rng -> (text -> text): replaces every entity name in a text by a fresh name drawn from rng, the
    # same replacement for the same name on every call of the returned map. SFT shows a share of its
    # demonstrations with fresh names (sft.rename_share), so that the copy cannot be learnt by heart.
    renamer: Callable[[np.random.Generator], Callable[[str], str]] | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """A question's decomposition: ask templates[0] about `subject`, then each next template
    about the previous reply's answer ("{x}" is the slot); the last reply's answer is final."""

    subject: str
    templates: tuple[str, ...]


SUITES: dict[str, SuiteSpec] = {}


def register_suite(spec: SuiteSpec) -> SuiteSpec:
    if spec.name in SUITES:
        raise ValueError(f"suite {spec.name!r} is registered twice")
    SUITES[spec.name] = spec
    return spec


def suite_spec(name: str) -> SuiteSpec:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; expected one of {tuple(SUITES)}")
    return SUITES[name]


def options_from_mapping(spec: SuiteSpec, values: Mapping[str, Any] | None):
    """The suite's options object from its config section (OptionError on an unknown or bad field)."""
    if spec.options is None:
        return None
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(spec.options)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OptionError(unknown[0], f"unknown option of suite {spec.name!r}; expected one of {sorted(known)}")
    return spec.options(**values)


def _positive_int(owner: Any, field: str, minimum: int) -> None:
    value = getattr(owner, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise OptionError(field, f"must be an integer >= {minimum}")


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
    """Questions per task family in each split of the embedded synthetic suite."""

    n_train_per_family: int = 300
    n_test_per_family: int = 40

    def __post_init__(self):
        _positive_int(self, "n_train_per_family", 1)
        _positive_int(self, "n_test_per_family", 1)


register_suite(SuiteSpec(
    "synthetic", lambda req: make_synthetic(seed=req.seed, n_train_per_family=req.options.n_train_per_family,
                                            n_test_per_family=req.options.n_test_per_family),
    protocol="multi_turn", needs_data_dir=False, options=SyntheticOptions,
    description="embedded: 7 task families, 6 simulated models (no download)"))
register_suite(SuiteSpec("dcrouter", lambda req: load_dcrouter(req.data_dir), protocol="single_call",
                         needs_data_dir=True, description="RouterDC's score-only log (llmrouter/)"))
register_suite(SuiteSpec("nq_pool6", lambda req: load_nq_pool6(req.data_dir, seed=req.seed), protocol="multi_turn",
                         needs_data_dir=True, description="Router-R1's six models on NQ, replies logged"))
register_suite(SuiteSpec("qa7", lambda req: load_qa7(req.data_dir), protocol="multi_turn", needs_data_dir=True,
                         description="seven QA datasets without replies (live or simulated pool)"))
register_suite(SuiteSpec("jsonl", lambda req: load_jsonl_dir(req.data_dir, protocol=req.protocol or None),
                         protocol=None, needs_data_dir=True, description="your own log: train/test jsonl + pool.json"))
