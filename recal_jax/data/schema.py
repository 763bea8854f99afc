"""The routing-log schema (spec section 9): one record per instance plus a pool description."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Mapping, Sequence

Protocol = Literal["multi_turn", "single_call"]
PROTOCOLS = ("multi_turn", "single_call")


class DataError(ValueError):
    """Bad input on disk (a routing log, a pool description, a data file, a checkpoint): the
    message names the file, and the line or row where there is one. The launcher prints it
    as one line, without a traceback."""


# dcrouter logs no token usage: its loader writes each call's cost as prices x these fixed
# token counts (a short routed query and a short reply), USD per 1M tokens.
ESTIMATED_PROMPT_TOKENS = 128
ESTIMATED_COMPLETION_TOKENS = 128

# Plausibility limits of logged money. The dearest calls today (a long-context frontier model
# writing a long reply) cost a few USD and list prices stay under ~1000 USD per 1M tokens; a
# logged value past these is a unit or typing error, and a huge one (1e300) would make every
# other call look free (costs are divided by the dearest model's mean call cost).
MAX_CALL_COST_USD = 100.0
MAX_PRICE_USD_PER_M = 10_000.0

# Model names are pasted into prompts and tokenized as one special token each, so a name
# must not contain '<' or '>': that excludes the protocol tags (<search>, </answer>, ...) and
# the tokenizer's special tokens (<pad>, <eos>, a HF tokenizer's <|...|> tokens). ':' is
# allowed: the protocol parser matches the longest pool name before the ':' of `NAME : QUERY`.
MAX_MODEL_NAME_CHARS = 200


def estimate_tokens(text: str) -> int:
    """Token-count estimate for text without logged usage: ceil(characters / 4), at least 1."""
    return max(1, math.ceil(len(text) / 4))


def check_model_name(name, where: str) -> str:
    """`name` if it is a usable model name, else a DataError starting with `where` (the file):
    a non-empty str of at most MAX_MODEL_NAME_CHARS printable characters (no newline, tab or
    other control character), no whitespace at either end, no '<' or '>'."""
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: a model name must be a non-empty string, got {_short(name)}")
    problem = None
    if len(name) > MAX_MODEL_NAME_CHARS:
        problem = f"is longer than {MAX_MODEL_NAME_CHARS} characters"
    elif name != name.strip():
        problem = "has whitespace at its start or end"
    elif not name.isprintable():
        problem = "contains a newline, tab or other control character"
    elif "<" in name or ">" in name:
        problem = ("contains '<' or '>', which the routing protocol's tags (<search>, </answer>, ...) "
                   "and the tokenizer's special tokens (<pad>, <eos>, ...) use")
    if problem:
        raise DataError(f"{where}: model name {_short(name)} {problem}")
    return name


def price_usd(info: "ModelInfo", prompt_tokens: int, completion_tokens: int) -> float:
    """USD of one call; prices are USD per 1M tokens."""
    return (prompt_tokens * info.price_in + completion_tokens * info.price_out) / 1e6


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """One candidate LLM: prices in USD per 1M tokens, and a description for the prompt."""

    name: str
    price_in: float = 0.0
    price_out: float = 0.0
    description: str = ""

    def __post_init__(self):
        check_model_name(self.name, "ModelInfo")
        for field in ("price_in", "price_out"):
            value = getattr(self, field)
            if not _number_in(value, MAX_PRICE_USD_PER_M):
                raise ValueError(f"ModelInfo {self.name!r}: {field} must be a number in [0, {MAX_PRICE_USD_PER_M:g}] "
                                 f"(USD per 1M tokens), got {_short(value)}")


@dataclasses.dataclass(frozen=True)
class RoutingRecord:
    """One instance of a routing log.

    scores: model -> score in [0, 1] (EM/F1/accuracy of that model's reply).
    responses: model -> logged reply text (optional; score-only logs have none).
    costs: model -> logged cost of one call in USD (optional; else from prices).
    """

    id: str
    dataset: str
    question: str
    golden_answers: tuple[str, ...]
    scores: Mapping[str, float]
    responses: Mapping[str, str] | None = None
    costs: Mapping[str, float] | None = None

    def __post_init__(self):
        if not isinstance(self.question, str):
            raise ValueError(f"record {self.id!r}: question must be a string")
        if isinstance(self.golden_answers, str):
            raise ValueError(f"record {self.id!r}: golden_answers must be a list of strings, got a string")
        object.__setattr__(self, "golden_answers", tuple(str(a) for a in self.golden_answers))
        for name, score in self.scores.items():
            if not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ValueError(f"record {self.id!r}: score of {name!r} is not a finite number: {score!r}")
        if self.costs is not None:
            for name, cost in self.costs.items():
                if not _number_in(cost, MAX_CALL_COST_USD):
                    raise ValueError(f"record {self.id!r}: cost of {name!r} must be in [0, {MAX_CALL_COST_USD:g}] "
                                     f"USD: {_short(cost)}")

    def to_json(self) -> dict:
        out = {
            "id": self.id,
            "dataset": self.dataset,
            "question": self.question,
            "golden_answers": list(self.golden_answers),
            "scores": dict(self.scores),
        }
        if self.responses is not None:
            out["responses"] = dict(self.responses)
        if self.costs is not None:
            out["costs"] = dict(self.costs)
        return out

    @classmethod
    def from_json(cls, obj: Mapping, where: str = "record") -> "RoutingRecord":
        """A record from its JSON object, strictly: every problem is a DataError starting with
        `where` (file:line). Scores must be numbers in [0, 1] (booleans and strings are not),
        costs numbers >= 0, gold answers and replies strings. Unknown fields are ignored."""
        missing = [k for k in ("id", "dataset", "question", "golden_answers", "scores") if k not in obj]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}")
        rid = obj["id"]
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
            raise DataError(f"{where}: 'id' must be a non-empty string or an integer, got {rid!r}")
        for field in ("dataset", "question"):
            if not isinstance(obj[field], str) or not obj[field].strip():
                raise DataError(f"{where}: {field!r} must be a non-empty string, got {_short(obj[field])}")
        golds = obj["golden_answers"]
        if not isinstance(golds, (list, tuple)) or not all(isinstance(g, str) for g in golds):
            raise DataError(f"{where}: 'golden_answers' must be a list of strings, got {_short(golds)}")
        return cls(
            id=str(rid), dataset=obj["dataset"], question=obj["question"], golden_answers=tuple(golds),
            scores=_number_map(obj["scores"], "scores", where, high=1.0),
            responses=_text_map(obj.get("responses"), where),
            costs=None if obj.get("costs") is None else _number_map(obj["costs"], "costs", where,
                                                                    high=MAX_CALL_COST_USD),
        )


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _number_in(value, high: float) -> bool:
    """A real number (not a bool) in [0, high]; ints too large for a float are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        value = float(value)
    except OverflowError:
        return False
    return math.isfinite(value) and 0.0 <= value <= high


def _number_map(obj, field: str, where: str, *, high: float) -> dict[str, float]:
    """{model: number in [0, high]} (bools and strings rejected), or a DataError naming `where`."""
    if not isinstance(obj, Mapping):
        raise DataError(f"{where}: {field!r} must be an object mapping model -> number, got {_short(obj)}")
    out = {}
    for name, value in obj.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{where}: {field}[{name!r}] must be a number, got {type(value).__name__} {_short(value)}")
        if not _number_in(value, high):
            bounds = (f"finite and >= 0, at most {high:g} USD per call (MAX_CALL_COST_USD)" if field == "costs"
                      else f"in [0, {high:g}]")
            raise DataError(f"{where}: {field}[{_short(name)}] must be {bounds}, got {_short(value)}")
        out[str(name)] = float(value)
    return out


def _text_map(obj, where: str) -> dict[str, str] | None:
    if obj is None:
        return None
    if not isinstance(obj, Mapping) or not all(isinstance(v, str) for v in obj.values()):
        raise DataError(f"{where}: 'responses' must be an object mapping model -> reply text, got {_short(obj)}")
    return {str(k): v for k, v in obj.items()}


@dataclasses.dataclass(frozen=True)
class RoutingLog:
    """A suite split: records, the candidate pool, the dataset order (ids = index), the protocol."""

    records: tuple[RoutingRecord, ...]
    models: Mapping[str, ModelInfo]
    datasets: tuple[str, ...]
    protocol: Protocol = "multi_turn"
    name: str = "log"

    def __post_init__(self):
        object.__setattr__(self, "records", tuple(self.records))
        object.__setattr__(self, "datasets", tuple(self.datasets))
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {PROTOCOLS}")
        if not self.models:
            raise ValueError(f"routing log {self.name!r} has no models")
        known = set(self.datasets)
        for r in self.records:
            if r.dataset not in known:
                raise ValueError(f"record {r.id!r} has dataset {r.dataset!r}, not in {list(self.datasets)}")
            unknown = set(r.scores) - set(self.models)
            if unknown:
                raise ValueError(f"record {r.id!r} scores unknown model(s) {sorted(unknown)}")

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self.models)

    def call_cost(self, record: RoutingRecord, model: str) -> float:
        """USD cost of one call of `model` on `record`, the one cost rule of a log.

        record.costs[model] when logged; else price_usd of estimate_tokens(question) in and
        estimate_tokens(the logged reply of `model`, else the first gold answer) out.
        It depends on the log only, never on how a policy worded its query.
        """
        if record.costs is not None and model in record.costs:
            return float(record.costs[model])
        if model not in self.models:
            raise ValueError(f"unknown model {model!r}; log {self.name!r} has {list(self.models)}")
        if record.responses is not None and model in record.responses:
            reply = record.responses[model]
        else:
            reply = record.golden_answers[0] if record.golden_answers else ""
        return price_usd(self.models[model], estimate_tokens(record.question), estimate_tokens(reply))

    def dataset_id(self, record: RoutingRecord) -> int:
        return self.datasets.index(record.dataset)

    def subset(self, records: Sequence[RoutingRecord], name: str | None = None) -> "RoutingLog":
        return dataclasses.replace(self, records=tuple(records), name=name or self.name)

    def __len__(self) -> int:
        return len(self.records)
