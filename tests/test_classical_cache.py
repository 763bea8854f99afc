"""The on-disk cache of the fitted classical routers: a hit returns exactly what fitting
returns, without fitting; anything that changes the inputs changes the key; a damaged file is
refitted, never trusted."""

from __future__ import annotations

import dataclasses

import pytest

from recal_jax.evaluation import classical_cache
from recal_jax.evaluation import classical_routers as cr
from recal_jax.evaluation.reference_routers import reference_routers
from tests.test_classical_routers import SMALL, _word_log


@pytest.fixture(scope="module")
def logs():
    return _word_log(45, 0, name="train"), _word_log(21, 1, name="test")


def _counting_fit(train, test, seed, calls):
    def fit():
        calls.append(1)
        return cr.classical_routers(train, test, seed=seed, config=SMALL)
    return fit


def test_hit_equals_fit_and_skips_it(logs, tmp_path):
    train, test = logs
    calls = []
    first = classical_cache.cached(_counting_fit(train, test, 0, calls), tmp_path, train, test, 0, SMALL)
    second = classical_cache.cached(_counting_fit(train, test, 0, calls), tmp_path, train, test, 0, SMALL)
    assert len(calls) == 1
    assert second == first  # dataclass equality: names, accuracies, shares, the lambda sweep's tuples
    assert all(isinstance(p, tuple) for r in second.values() for p in r.lambda_sweep)


def test_no_cache_dir_always_fits(logs):
    train, test = logs
    calls = []
    for _ in range(2):
        classical_cache.cached(_counting_fit(train, test, 0, calls), None, train, test, 0, SMALL)
    assert len(calls) == 2


def test_key_changes_with_every_input(logs):
    train, test = logs
    base = classical_cache.fingerprint(train, test, 0, SMALL)
    assert classical_cache.fingerprint(train, test, 0, SMALL) == base
    assert classical_cache.fingerprint(train, test, 1, SMALL) != base
    assert classical_cache.fingerprint(train, test, 0, dataclasses.replace(SMALL, max_iter=61)) != base
    assert classical_cache.fingerprint(test, train, 0, SMALL) != base
    record = train.records[0]
    rescored = dataclasses.replace(record, scores={m: 1.0 - s for m, s in record.scores.items()})
    changed = dataclasses.replace(train, records=(rescored, *train.records[1:]))
    assert classical_cache.fingerprint(changed, test, 0, SMALL) != base
    reworded = dataclasses.replace(record, question=record.question + " extra")
    changed = dataclasses.replace(train, records=(reworded, *train.records[1:]))
    assert classical_cache.fingerprint(changed, test, 0, SMALL) != base


@pytest.mark.parametrize("damage", ["", "{not json", '{"knn": {"name": 3}}', "[1, 2]"])
def test_damaged_file_is_refitted(logs, tmp_path, damage):
    train, test = logs
    calls = []
    expected = classical_cache.cached(_counting_fit(train, test, 0, calls), tmp_path, train, test, 0, SMALL)
    (path,) = tmp_path.glob("classical-*.json")
    path.write_text(damage)
    again = classical_cache.cached(_counting_fit(train, test, 0, calls), tmp_path, train, test, 0, SMALL)
    assert len(calls) == 2 and again == expected
    assert classical_cache.load(path) == expected  # rewritten


def test_reference_routers_use_the_cache(logs, tmp_path):
    train, test = logs
    plain = reference_routers(test, train, seed=0, classical_config=SMALL)
    cached = reference_routers(test, train, seed=0, classical_config=SMALL, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("classical-*.json"))) == 1
    again = reference_routers(test, train, seed=0, classical_config=SMALL, cache_dir=tmp_path)
    assert plain == cached == again
