"""The seeded synthetic routing suite (spec section 9): 7 task families, 6 models.

Built for a tiny policy that learns the protocol from scratch on CPU: questions of at most
12 words, one-word answers from small vocabularies, replies that are the answer with at
most a 3-word prefix. Families share some templates ("what is the capital of ..." is a
lookup for a real country, a long-tail fact for an invented one, and multi-hop when it
goes through a person), so the wording reveals the family imperfectly.

Outcomes: model m is right on a question of family f with probability ACCURACY[f][m].
Correctness is correlated across models: per (question, model) a coin with probability
SHARED_DIFFICULTY uses the question's shared uniform, otherwise a private one, and the
model is right iff that uniform < ACCURACY. Every draw is keyed by (seed, question text),
so a question repeated anywhere gets the same outcomes. A wrong reply carries another answer
of the same kind (a nearby number, another capital, ...), and its normalised text never
contains the gold, so sub-EM of a reply equals its score.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Callable

import numpy as np

from recal_jax.data.answer_text import normalize_answer
from recal_jax.data.schema import ModelInfo, RoutingLog, RoutingRecord, estimate_tokens
from recal_jax.data.suite import Suite

MODELS = {
    "tiny-fast": ModelInfo("tiny-fast", 0.05, 0.05, "very cheap and fast; fine for simple well-known facts"),
    "mid-general": ModelInfo("mid-general", 0.2, 0.2, "cheap generalist; good at everyday common sense"),
    "code-expert": ModelInfo("code-expert", 0.4, 0.4, "programming and logic puzzles specialist"),
    "math-whiz": ModelInfo("math-whiz", 0.4, 0.4, "arithmetic and numbers specialist"),
    "fact-base": ModelInfo("fact-base", 0.8, 0.8, "knowledge model; knows rare and obscure facts"),
    "large-pro": ModelInfo("large-pro", 2.0, 2.0, "largest and most expensive; strong at everything"),
}
FAMILIES = ("lookup", "commonsense", "arith", "code", "logic", "longtail", "multihop")

#                  tiny  mid   code  math  fact  large
ACCURACY = {
    "lookup":      (0.80, 0.85, 0.45, 0.45, 0.90, 0.85),
    "commonsense": (0.50, 0.80, 0.30, 0.30, 0.50, 0.70),
    "arith":       (0.45, 0.50, 0.55, 0.95, 0.25, 0.65),
    "code":        (0.15, 0.35, 0.90, 0.40, 0.15, 0.60),
    "logic":       (0.10, 0.25, 0.70, 0.50, 0.10, 0.50),
    "longtail":    (0.03, 0.10, 0.05, 0.05, 0.70, 0.55),
    "multihop":    (0.02, 0.08, 0.10, 0.10, 0.30, 0.35),
}
SHARED_DIFFICULTY = 0.7
REPLY_PREFIX = {
    "tiny-fast": ("",),
    "mid-general": ("", "it is"),
    "code-expert": ("answer:", "result:"),
    "math-whiz": ("", "answer:"),
    "fact-base": ("i believe", "it is"),
    "large-pro": ("the answer is", "answer:"),
}

_COUNTRIES = {
    "france": "paris", "japan": "tokyo", "italy": "rome", "egypt": "cairo", "spain": "madrid",
    "peru": "lima", "kenya": "nairobi", "cuba": "havana", "china": "beijing", "russia": "moscow",
    "greece": "athens", "norway": "oslo", "chile": "santiago", "india": "delhi", "canada": "ottawa",
    "germany": "berlin", "poland": "warsaw", "sweden": "stockholm", "turkey": "ankara", "iran": "tehran",
}
_CONTINENTS = {
    "france": "europe", "japan": "asia", "italy": "europe", "egypt": "africa", "spain": "europe",
    "peru": "america", "kenya": "africa", "cuba": "america", "china": "asia", "russia": "europe",
    "greece": "europe", "norway": "europe", "chile": "america", "india": "asia", "canada": "america",
    "germany": "europe", "poland": "europe", "sweden": "europe", "turkey": "asia", "iran": "asia",
}
_INVENTED = {
    "veltria": "morvik", "quorland": "dask", "ambrosia": "telun", "zentara": "brisk", "olmeria": "vantor",
    "kestovia": "rulm", "drabia": "sillo", "wendmark": "pexa", "yorvania": "glint", "tassaly": "omber",
    "brunost": "kiva", "felquor": "narro", "istania": "pell", "gondria": "havik", "sarnith": "tolby",
}
_FOUNDERS = ("tamsin", "orrel", "brigg", "ysolde", "marek", "quill", "fenna", "dorran")
_PEOPLE = ("ann", "bob", "cal", "dee", "eve", "finn", "gus", "hal")
_FRUIT = {"banana": "yellow", "lime": "green", "cherry": "red", "plum": "purple", "orange": "orange",
          "lemon": "yellow", "tomato": "red", "kiwi": "green", "grape": "purple", "carrot": "orange"}
_ANIMALS = {"cow": "moo", "dog": "bark", "cat": "meow", "duck": "quack", "sheep": "baa", "lion": "roar",
            "snake": "hiss", "owl": "hoot", "horse": "neigh", "pig": "oink"}
_LEGS = {"cow": 4, "dog": 4, "cat": 4, "duck": 2, "sheep": 4, "lion": 4, "snake": 0, "owl": 2, "horse": 4, "pig": 4}
_PY_TYPES = {"3.5": "float", "7": "int", "'hi'": "str", "[1, 2]": "list", "True": "bool", "{}": "dict",
             "(1, 2)": "tuple", "None": "nonetype", "'7'": "str", "2.0": "float", "[]": "list", "False": "bool"}
_PY_KEYWORDS = {"defines a function": "def", "returns a value": "return", "starts a for loop": "for",
                "imports a module": "import", "defines a class": "class", "handles an exception": "except",
                "skips to the next loop step": "continue", "exits a loop early": "break"}
_WORDS = ("cat", "tree", "house", "sun", "python", "ab", "hello", "moon", "go", "apple", "sky", "river")


def _lookup() -> list[tuple[str, str, str]]:
    out = []
    for c, cap in _COUNTRIES.items():
        out += [(f"what is the capital of {c}?", cap, "capital"), (f"name the capital city of {c}.", cap, "capital"),
                (f"which city is the capital of {c}?", cap, "capital")]
        out += [(f"which continent is {c} in?", _CONTINENTS[c], "continent"),
                (f"{c} lies on which continent?", _CONTINENTS[c], "continent")]
    return out


def _commonsense() -> list[tuple[str, str, str]]:
    out = []
    for fruit, color in _FRUIT.items():
        out += [(f"what color is a ripe {fruit}?", color, "color"), (f"a ripe {fruit} is usually which color?", color, "color"),
                (f"name the color of a {fruit}.", color, "color")]
    for animal, sound in _ANIMALS.items():
        out += [(f"what sound does a {animal} make?", sound, "sound"),
                (f"which sound does a {animal} usually make?", sound, "sound"),
                (f"how many legs does a {animal} have?", str(_LEGS[animal]), "number")]
    return out


def _arith() -> list[tuple[str, str, str]]:
    out = []
    for a, b in itertools.product(range(2, 13), range(2, 13)):
        out += [(f"what is {a} plus {b}?", str(a + b), "number"), (f"what is {a} times {b}?", str(a * b), "number")]
        if a > b:
            out.append((f"compute {a} minus {b}.", str(a - b), "number"))
    return out


def _code() -> list[tuple[str, str, str]]:
    out = []
    for lit, typ in _PY_TYPES.items():
        out += [(f"in python, what type is {lit}?", typ, "type"), (f"what does type({lit}) give in python?", typ, "type")]
    for what, kw in _PY_KEYWORDS.items():
        out += [(f"which python keyword {what}?", kw, "keyword"), (f"what keyword {what} in python?", kw, "keyword")]
    for w in _WORDS:
        out += [(f"what does len('{w}') give in python?", str(len(w)), "number"),
                (f"in python, what is len('{w * 2}')?", str(2 * len(w)), "number")]
    return out


def _logic() -> list[tuple[str, str, str]]:
    out = []
    for a, b, c in itertools.permutations(_PEOPLE, 3):
        out += [(f"{a} is taller than {b}, {b} than {c}. who is tallest?", a, "person"),
                (f"{a} is older than {b}, {b} than {c}. who is youngest?", c, "person")]
    return out


def _longtail() -> list[tuple[str, str, str]]:
    out = []
    for k, (country, cap) in enumerate(_INVENTED.items()):
        out += [(f"what is the capital of {country}?", cap, "invented"), (f"name the capital city of {country}.", cap, "invented"),
                (f"which city is the capital of {country}?", cap, "invented")]
        for j, town in enumerate(("port", "old", "new")):
            founder = _FOUNDERS[(k + j) % len(_FOUNDERS)]
            out.append((f"who founded the town of {town} {country}?", founder, "founder"))
    return out


def _multihop() -> list[tuple[str, str, str]]:
    out = []
    countries = list(_COUNTRIES)
    for i, person in enumerate(_PEOPLE + _FOUNDERS + ("ivy", "jon", "kim", "lou")):
        capital = _COUNTRIES[countries[(i * 7) % len(countries)]]
        out += [(f"what is the capital of the country where {person} was born?", capital, "capital"),
                (f"name the capital of the country {person} comes from.", capital, "capital")]
    for animal, legs in _LEGS.items():
        for a in range(2, 9):
            out.append((f"what is {a} plus the legs of a {animal}?", str(a + legs), "number"))
    return out


GENERATORS: dict[str, Callable[[], list[tuple[str, str, str]]]] = {
    "lookup": _lookup, "commonsense": _commonsense, "arith": _arith, "code": _code,
    "logic": _logic, "longtail": _longtail, "multihop": _multihop,
}


def _rng(seed: int, *keys: str) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join((str(seed),) + keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _wrong_answers(gold: str, kind: str, vocab: dict[str, list[str]]) -> list[str]:
    """Plausible wrong answers: nearby numbers, else same-kind answers; never containing the gold."""
    if kind == "number":
        candidates = [str(int(gold) + d) for d in (-3, -2, -1, 1, 2, 3) if int(gold) + d >= 0]
    else:
        candidates = vocab[kind]
    norm = normalize_answer(gold)
    out = [w for w in candidates if norm not in normalize_answer(w)]
    if not out:
        raise ValueError(f"no wrong answer for gold {gold!r} of kind {kind!r}")
    return out


def _record(seed: int, family: str, question: str, gold: str, wrong: list[str], rid: str) -> RoutingRecord:
    rng = _rng(seed, "outcome", question)
    shared = rng.uniform()
    norm = normalize_answer(gold)
    scores, responses, costs = {}, {}, {}
    for m, acc in zip(MODELS, ACCURACY[family]):
        u = shared if rng.uniform() < SHARED_DIFFICULTY else rng.uniform()
        correct = bool(u < acc)
        prefix = REPLY_PREFIX[m][rng.integers(len(REPLY_PREFIX[m]))]
        if correct:
            reply = f"{prefix} {gold}".strip()
        else:  # the whole reply, prefix included, must not contain the gold ('eve' in 'believe')
            options = [f"{prefix} {w}".strip() for w in wrong]
            options = [o for o in options if norm not in normalize_answer(o)] or list(wrong)
            reply = options[rng.integers(len(options))]
        info = MODELS[m]
        scores[m] = float(correct)
        responses[m] = reply
        costs[m] = (info.price_in * (estimate_tokens(question) + 40) + info.price_out * estimate_tokens(reply)) / 1e6
    return RoutingRecord(id=rid, dataset=family, question=question, golden_answers=(gold,), scores=scores,
                         responses=responses, costs=costs)


def make_synthetic(seed: int = 0, n_train_per_family: int = 128, n_test_per_family: int = 32) -> Suite:
    """The synthetic suite; see the module docstring. Test questions never occur in train;
    train repeats questions (same outcomes) only when a family has fewer distinct ones."""
    if n_train_per_family < 1 or n_test_per_family < 0:
        raise ValueError(f"need n_train_per_family >= 1 and n_test_per_family >= 0, got "
                         f"{n_train_per_family}, {n_test_per_family}")
    train, test = [], []
    for family in FAMILIES:
        items = GENERATORS[family]()
        if len(items) <= n_test_per_family:
            raise ValueError(f"family {family!r} has {len(items)} distinct questions; n_test_per_family "
                             f"must be smaller, got {n_test_per_family}")
        vocab: dict[str, list[str]] = {}
        for _, a, kind in items:
            if a not in vocab.setdefault(kind, []):
                vocab[kind].append(a)
        order = _rng(seed, "split", family).permutation(len(items))
        test_idx = order[:n_test_per_family]
        rest = order[n_test_per_family:]
        train_idx = [rest[i % len(rest)] for i in range(n_train_per_family)]
        for split, idx, out in (("test", test_idx, test), ("train", train_idx, train)):
            for i, j in enumerate(idx):
                q, a, kind = items[j]
                out.append(_record(seed, family, q, a, _wrong_answers(a, kind, vocab), f"syn-{family}-{split}-{i}"))
    mk = lambda recs, split: RoutingLog(records=tuple(recs), models=dict(MODELS), datasets=FAMILIES,  # noqa: E731
                                        protocol="multi_turn", name=f"synthetic/{split}")
    return Suite(train=mk(train, "train"), test=mk(test, "test"))
