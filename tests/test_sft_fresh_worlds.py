"""SFT on re-drawn worlds (sft.fresh_worlds): the demonstrations add every question of each
fresh world, none of their names is a name of the run's own questions, and the held-out
criterion reads a world no demonstration was built from."""
import pytest

from launch.configs import quickstart as quickstart_config
from tests.compose_configs import tiny_compose
from recal_jax.data.compose import compose_world, fresh_compose
from recal_jax.data.compose_world import parse_query
from recal_jax.training import sft
from recal_jax.training.run_config import ConfigError, parse_config
from recal_jax.training.setup import set_up


def _tiny(fresh_worlds: int):
    return tiny_compose(fresh_worlds=fresh_worlds)


@pytest.fixture(scope="module")
def run():
    return set_up(parse_config(_tiny(2)))


def _first_query_subjects(run, demos) -> set[str]:
    """The subject of each demonstration's first sub-question, read back from its tokens."""
    subjects = set()
    for demo in demos:
        text = run.tokenizer.decode(demo.token_ids)
        query = text.split("<search>")[1].split("</search>")[0].split(":", 1)[1]
        subjects.add(parse_query(query).subject)
    return subjects


def test_demonstrations_cover_the_own_split_and_every_question_of_each_fresh_world(run):
    demos = sft.demonstrations(run, run.cfg.sft)
    own = len(run.suite.train)
    fresh, _ = fresh_compose(run.cfg.run.seed, 0, run.cfg.suite_options)
    per_world = len(fresh.train) + len(fresh.test)  # both splits of a fresh world are demonstrated
    assert per_world == 6 * (6 + 2)
    assert len(demos) == own + 2 * per_world
    by_world = {}
    for d in demos:
        by_world.setdefault(d.record_id.split("-")[0], []).append(d)
    assert set(by_world) == {"compose", "fresh0", "fresh1"}
    own_names = {n for names in compose_world(run.cfg.run.seed, run.cfg.suite_options).entities.values()
                 for n in names}
    for world in ("fresh0", "fresh1"):
        assert not _first_query_subjects(run, by_world[world]) & own_names


def test_the_held_out_criterion_reads_a_world_never_trained_on(run):
    demos = sft.demonstrations(run, run.cfg.sft)
    train, until, note = sft._held_out(run, run.cfg.sft, demos)
    assert train == demos and note == ""
    assert len(until.demos) == 10 and {d.record_id.split("-")[0] for d in until.demos} == {"fresh2"}
    assert not _first_query_subjects(run, until.demos) & _first_query_subjects(run, train)


def test_a_suite_that_cannot_redraw_its_world_is_refused_by_the_parser():
    c = quickstart_config.get_config()
    c.sft.fresh_worlds = 2
    with pytest.raises(ConfigError, match="sft.fresh_worlds"):
        parse_config(c)


def test_chain_demonstrations_mark_each_copied_query(run):
    """decompose_random demonstrations: each query span decodes to a sub-question (or the whole
    question) of the world, and the pieces' ids are those of the whole call encoded at once."""
    demos = [d for d in sft.demonstrations(run, run.cfg.sft) if d.record_id.startswith("compose")]
    n_chains = 0
    for demo in demos:
        assert demo.query_spans, demo.record_id
        text = run.tokenizer.decode(demo.token_ids)
        calls = [c.split("</search>")[0] for c in text.split("<search>")[1:]]
        assert len(calls) == len(demo.query_spans)
        for call, (start, end) in zip(calls, demo.query_spans):
            query = run.tokenizer.decode(demo.token_ids[start:end])
            assert call.split(":", 1)[1].strip() == query.strip()
            assert parse_query(query) is not None
            whole = run.tokenizer.encode(f"<search>{call}</search>")
            assert tuple(whole) in {tuple(demo.token_ids[i:i + len(whole)]) for i in range(len(demo.token_ids))}
        n_chains += len(demo.query_spans) > 1
    assert n_chains > 0
