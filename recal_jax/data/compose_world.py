"""A seeded compositional world: people, cities, countries and companies, five relations,
and questions of one and two hops whose decomposition is known.

Entities. Four types; every name is one lowercase word of NAME_SYLLABLES consonant-vowel
syllables from a fixed inventory (12 consonants x 5 vowels, e.g. "velora", "tamiku"): short,
pronounceable, made of few byte pairs (a byte-level BPE learns the 60 syllables first), unique
across all types, and never a word of a question template, a protocol tag or a model name.
All names of a world have the same length, so no name occurs inside another one (a wrong
reply can never contain the gold as a substring: sub-EM stays honest).

Relations (total functions on their domain type):

    born_in     person  -> city       "where was X born?"
    works_for   person  -> org        "which company does X work for?"
    city_in     city    -> country    "which country is X in?"
    capital     country -> city       "what is the capital of X?"
    founded_by  org     -> person     "who founded X?"

Sizes from the suite sizes: with N = n_train + n_test questions per dataset, the world has N
people, N companies, N countries and 2N cities (N capitals, N others in random countries);
born_in and works_for are uniform over cities and companies, founded_by uniform over people
(a person may found several companies or none).

Datasets (question forms). Each has one template and a chain of hops; hop 1 is asked about
the question's subject, hop k about the answer of hop k-1, each with the one-hop template of
its relation:

    birthplace           born_in                 where was X born?
    employer             works_for               which company does X work for?
    capital              capital                 what is the capital of X?
    birth_country        born_in, city_in        in which country was X born?
    founder_of_employer  works_for, founded_by   who founded the company X works for?
    founder_birthplace   founded_by, born_in     where was the founder of X born?

Splits. The subjects of each subject type (people, companies, countries) are split by a seeded
permutation into n_test test subjects and n_train train subjects; a split's questions of a
dataset are its subjects of that type, one question each, so a test question's subject is never
the subject of a train question (it may still appear inside a train question's chain, e.g. as
the founder of a train company).

Queries. `parse_query` reads any text against the templates after SQuAD normalisation
(lowercase, no punctuation, no articles, single spaces), so case, punctuation, extra whitespace
and "the" do not matter; a leading "question:"-style word is dropped. The world is pure: the
same (seed, sizes) give an equal world.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
import string
from typing import Callable, Mapping

import numpy as np

from recal_jax.data.answer_text import normalize_answer

ENTITY_TYPES = ("person", "org", "country", "city")
CONSONANTS = "bdgklmnprstv"
VOWELS = "aeiou"
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)
NAME_SYLLABLES = 3  # 60**3 = 216,000 names of 6 letters
_SYLLABLE = f"[{CONSONANTS}][{VOWELS}]"
# A tokenizer split pattern (config tokenizer.split_pattern) matching each syllable of a word made
# of exactly NAME_SYLLABLES syllables, i.e. of an entity name: a name then tokenizes as the same
# syllable tokens wherever it stands (after a space or a tag, seen in training or not), so that
# copying it is copying NAME_SYLLABLES tokens that training has seen. (Oniguruma allows neither
# variable-length nor nested look-behind: one alternative per syllable position.)
NAME_SPLIT_PATTERN = "|".join(
    rf"(?<=\b{_SYLLABLE * i}){_SYLLABLE}(?={_SYLLABLE * (NAME_SYLLABLES - 1 - i)}\b)"
    if i else rf"\b{_SYLLABLE}(?={_SYLLABLE * (NAME_SYLLABLES - 1)}\b)"
    for i in range(NAME_SYLLABLES))
# Any word shaped like an entity name (NAME_SYLLABLES consonant-vowel syllables); no template or
# protocol word has that shape (tests check), so in the world's texts it matches the names only.
NAME_REGEX = re.compile(rf"\b(?:{_SYLLABLE}){{{NAME_SYLLABLES}}}\b")
MAX_SUBJECTS = 20_000  # n_train + n_test per dataset; 5 * 20,000 names use < half the name space
# Words a query may start with before the question itself ("Question: where was ...").
QUERY_PREFIXES = ("question", "query", "q", "subquestion")
# Never an entity name: protocol tags and words models or prompts use.
RESERVED_WORDS = frozenset({"think", "search", "information", "answer", "question", "query", "model",
                            "unknown", "none", "true", "false", "yes", "no", "eos", "pad"})


@dataclasses.dataclass(frozen=True)
class Relation:
    name: str
    domain: str
    range: str
    template: str  # a one-hop question, "{x}" is the subject


RELATIONS: Mapping[str, Relation] = {
    "born_in": Relation("born_in", "person", "city", "where was {x} born?"),
    "works_for": Relation("works_for", "person", "org", "which company does {x} work for?"),
    "city_in": Relation("city_in", "city", "country", "which country is {x} in?"),
    "capital": Relation("capital", "country", "city", "what is the capital of {x}?"),
    "founded_by": Relation("founded_by", "org", "person", "who founded {x}?"),
}


@dataclasses.dataclass(frozen=True)
class QuestionForm:
    """A dataset: its question template and its chain of relations (hops)."""

    dataset: str
    template: str
    hops: tuple[str, ...]

    @property
    def subject_type(self) -> str:
        return RELATIONS[self.hops[0]].domain

    @property
    def answer_type(self) -> str:
        return RELATIONS[self.hops[-1]].range


FORMS: Mapping[str, QuestionForm] = {
    "birthplace": QuestionForm("birthplace", RELATIONS["born_in"].template, ("born_in",)),
    "employer": QuestionForm("employer", RELATIONS["works_for"].template, ("works_for",)),
    "capital": QuestionForm("capital", RELATIONS["capital"].template, ("capital",)),
    "birth_country": QuestionForm("birth_country", "in which country was {x} born?", ("born_in", "city_in")),
    "founder_of_employer": QuestionForm("founder_of_employer", "who founded the company {x} works for?",
                                        ("works_for", "founded_by")),
    "founder_birthplace": QuestionForm("founder_birthplace", "where was the founder of {x} born?",
                                       ("founded_by", "born_in")),
}
DATASETS = tuple(FORMS)
MULTI_HOP_DATASETS = tuple(d for d, f in FORMS.items() if len(f.hops) >= 2)
ONE_HOP_DATASETS = tuple(d for d, f in FORMS.items() if len(f.hops) == 1)


def hop_query(relation: str, entity: str) -> str:
    """The one-hop question of `relation` about `entity` (a decomposition's sub-question)."""
    return RELATIONS[relation].template.format(x=entity)


def _template_words() -> set[str]:
    templates = [r.template for r in RELATIONS.values()] + [f.template for f in FORMS.values()]
    return {w for t in templates for w in normalize_answer(t.replace("{x}", " ")).split()}


_PUNCT_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})


def normalize_query(text: str) -> str:
    """SQuAD normalisation of a query (punctuation read as a space, so "question:where" is two
    words), with a leading 'question:'-style word dropped."""
    norm = normalize_answer(str(text).translate(_PUNCT_TO_SPACE))
    words = norm.split()
    while len(words) > 1 and words[0] in QUERY_PREFIXES:
        words = words[1:]
    return " ".join(words)


def _slot_regex(template: str) -> re.Pattern:
    norm = normalize_query(template.replace("{x}", "qqslotqq"))
    head, _, tail = norm.partition("qqslotqq")
    return re.compile("^" + re.escape(head) + r"([a-z0-9]+)" + re.escape(tail) + "$")


# (regex over a normalised query, hops): the one-hop templates, then the multi-hop forms.
_PATTERNS = tuple((_slot_regex(r.template), (r.name,)) for r in RELATIONS.values()) + tuple(
    (_slot_regex(f.template), f.hops) for f in FORMS.values() if len(f.hops) >= 2)


@dataclasses.dataclass(frozen=True)
class ParsedQuery:
    """A query read against the templates: its chain of hops and the subject it names."""

    hops: tuple[str, ...]
    subject: str

    @property
    def key(self) -> str:
        """The canonical form: equal for every wording of the same question."""
        return ">".join(self.hops) + "|" + self.subject

    @property
    def answer_type(self) -> str:
        return RELATIONS[self.hops[-1]].range


def parse_query(text: str) -> ParsedQuery | None:
    """The template `text` matches and the subject it names (not checked against a world), or
    None when no template matches."""
    norm = normalize_query(text)
    for pattern, hops in _PATTERNS:
        m = pattern.match(norm)
        if m:
            return ParsedQuery(hops, m.group(1))
    return None


@dataclasses.dataclass(frozen=True)
class Question:
    dataset: str
    subject: str
    text: str
    answer: str

    @property
    def hops(self) -> tuple[str, ...]:
        return FORMS[self.dataset].hops


@dataclasses.dataclass(frozen=True, repr=False)
class World:
    """entities[type]: names in a fixed order; facts[relation][subject] -> object;
    subjects[split][type]: the subjects of that split's questions (splits 'train', 'test')."""

    seed: int
    entities: Mapping[str, tuple[str, ...]]
    facts: Mapping[str, Mapping[str, str]]
    subjects: Mapping[str, Mapping[str, tuple[str, ...]]]

    __hash__ = None  # mappings inside; equality compares contents

    def __post_init__(self):
        kind = {name: t for t, names in self.entities.items() for name in names}
        if len(kind) != sum(len(v) for v in self.entities.values()):
            raise ValueError("entity names must be unique across types")
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_index", {name: i for names in self.entities.values()
                                            for i, name in enumerate(names)})

    def __repr__(self) -> str:
        sizes = ", ".join(f"{t}={len(v)}" for t, v in self.entities.items())
        return f"World(seed={self.seed}, {sizes})"

    def type_of(self, name: str) -> str | None:
        return self._kind.get(name)

    def index_of(self, name: str) -> int:
        """The position of `name` in entities[its type]."""
        return self._index[name]

    def follow(self, subject: str, hops) -> str | None:
        """The answer of the chain `hops` from `subject`, None when the subject is not an
        entity of the first hop's domain."""
        if self.type_of(subject) != RELATIONS[hops[0]].domain:
            return None
        entity = subject
        for relation in hops:
            entity = self.facts[relation][entity]
        return entity

    def questions(self, split: str) -> tuple[Question, ...]:
        """The split's questions, dataset by dataset (DATASETS order), subjects in split order."""
        out = []
        for dataset, form in FORMS.items():
            for subject in self.subjects[split][form.subject_type]:
                out.append(Question(dataset, subject, form.template.format(x=subject),
                                    self.follow(subject, form.hops)))
        return tuple(out)

    def decompose(self, question: str) -> tuple[ParsedQuery, str] | None:
        """(parsed question, its gold answer) for a question of the world, else None."""
        parsed = parse_query(question)
        if parsed is None:
            return None
        answer = self.follow(parsed.subject, parsed.hops)
        return None if answer is None else (parsed, answer)


def _rng(seed: int, *keys: str) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(("compose-world", str(seed)) + keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _names(seed: int, count: int, reserved: set[str]) -> list[str]:
    """`count` distinct names of NAME_SYLLABLES syllables, none in `reserved`, in a seeded order
    (a first draw of count + 64 codes; when `reserved` takes more of them, the rest of the name
    space follows in a second seeded order)."""
    space = len(SYLLABLES) ** NAME_SYLLABLES
    first = _rng(seed, "names").choice(space, size=min(space, count + 64), replace=False)

    def rest():
        drawn = set(first.tolist())
        yield from (code for code in _rng(seed, "more names").permutation(space) if int(code) not in drawn)

    out = []
    for code in itertools.chain(first, rest()):
        name = "".join(SYLLABLES[(int(code) // len(SYLLABLES) ** k) % len(SYLLABLES)]
                       for k in range(NAME_SYLLABLES))
        if name not in reserved:
            out.append(name)
        if len(out) == count:
            return out
    raise ValueError(f"cannot draw {count} distinct entity names outside the {len(reserved)} reserved words")


def make_world(seed: int, n_train_per_dataset: int, n_test_per_dataset: int,
               reserved_words=()) -> World:
    """The world for a suite of these sizes (see the module docstring); `reserved_words`
    (e.g. model names) are never entity names."""
    n_train, n_test = int(n_train_per_dataset), int(n_test_per_dataset)
    if n_train < 1 or n_test < 1 or n_train + n_test > MAX_SUBJECTS:
        raise ValueError(f"need n_train_per_dataset >= 1, n_test_per_dataset >= 1 and their sum at most "
                         f"{MAX_SUBJECTS}, got {n_train_per_dataset}, {n_test_per_dataset}")
    n = n_train + n_test
    sizes = {"person": n, "org": n, "country": n, "city": 2 * n}
    reserved = set(RESERVED_WORDS) | _template_words() | {str(w).lower() for w in reserved_words}
    pool = iter(_names(seed, sum(sizes.values()), reserved))
    entities = {t: tuple(itertools.islice(pool, sizes[t])) for t in ENTITY_TYPES}
    people, orgs, countries, cities = (entities[t] for t in ("person", "org", "country", "city"))
    rng = _rng(seed, "facts")
    # capitals are the first n cities, one per country; the other cities lie in random countries
    city_country = list(range(n)) + list(rng.integers(n, size=n))
    facts = {
        "born_in": {p: cities[i] for p, i in zip(people, rng.integers(2 * n, size=n))},
        "works_for": {p: orgs[i] for p, i in zip(people, rng.integers(n, size=n))},
        "city_in": {c: countries[int(i)] for c, i in zip(cities, city_country)},
        "capital": {k: cities[i] for i, k in enumerate(countries)},
        "founded_by": {o: people[i] for o, i in zip(orgs, rng.integers(n, size=n))},
    }
    subjects = {"train": {}, "test": {}}
    for t in ("person", "org", "country"):
        order = _rng(seed, "split", t).permutation(n)
        subjects["test"][t] = tuple(entities[t][i] for i in order[:n_test])
        subjects["train"][t] = tuple(entities[t][i] for i in order[n_test:])
    return World(seed=int(seed), entities=entities, facts=facts, subjects=subjects)


__all__ = ["DATASETS", "ENTITY_TYPES", "FORMS", "MULTI_HOP_DATASETS", "ONE_HOP_DATASETS", "ParsedQuery",
           "Question", "QuestionForm", "RELATIONS", "Relation", "World", "hop_query", "make_world",
           "normalize_query", "parse_query"]


def renamer(rng: np.random.Generator) -> Callable[[str], str]:
    """text -> text with every entity name (NAME_REGEX) replaced by a fresh name drawn from `rng`:
    the same name gets the same replacement on every call of this map, and distinct names distinct
    ones. Applied to all texts of one demonstration (question, queries, replies, answer), it keeps
    the demonstration consistent while its names are ones no other text shows (sft.rename_share)."""
    mapping: dict[str, str] = {}

    def fresh() -> str:
        taken = set(mapping.values())
        while True:
            name = "".join(SYLLABLES[int(i)] for i in rng.integers(len(SYLLABLES), size=NAME_SYLLABLES))
            if name not in taken and name not in RESERVED_WORDS:
                return name

    def rename(text: str) -> str:
        def sub(match: re.Match) -> str:
            if match.group(0) not in mapping:
                mapping[match.group(0)] = fresh()
            return mapping[match.group(0)]
        return NAME_REGEX.sub(sub, text)

    return rename
