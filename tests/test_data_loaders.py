"""Loaders of ../shared/data, checked against the facts its README states.

Skips cleanly when the data directory is absent (set RECAL_DATA_DIR to point elsewhere).
"""

import json

import numpy as np
import pytest

from recal_jax.data import data_dir, load_dcrouter, load_nq_pool6, load_qa7

DATA = data_dir()  # $RECAL_DATA_DIR, else ../shared/data next to the repository
LLM = DATA / "llmrouter"
needs_llmrouter = pytest.mark.skipif(not LLM.is_dir(), reason=f"routing data not found at {LLM} (set RECAL_DATA_DIR)")
needs_qa7 = pytest.mark.skipif(not (DATA / "qa7").is_dir(), reason=f"qa7 data not found at {DATA / 'qa7'}")


def score_matrix(log):
    names = log.model_names
    return names, np.array([[r.scores[m] for m in names] for r in log.records])


@pytest.fixture(scope="module")
def dcrouter():
    return load_dcrouter(DATA)


@needs_llmrouter
def test_dcrouter_facts(dcrouter):
    assert (len(dcrouter.train), len(dcrouter.test)) == (5608, 500)
    assert len(dcrouter.test.datasets) == 14 and dcrouter.test.protocol == "single_call"
    names, s = score_matrix(dcrouter.test)
    assert len(names) == 9
    per_model = s.mean(0)
    assert names[int(per_model.argmax())] == "llama-3.1-nemotron-51b-instruct"
    assert per_model.max() == pytest.approx(0.563, abs=5e-4)
    assert s.mean() == pytest.approx(0.375, abs=5e-4)  # random router
    assert s.max(1).mean() == pytest.approx(0.743, abs=5e-4)  # per-question oracle
    assert dcrouter.test.models["llama-3.1-nemotron-51b-instruct"].price_in == 0.9
    # README: task means range from about 0.1 (gpqa, logicgrid) upwards: heterogeneous difficulty
    tasks = np.array([r.dataset for r in dcrouter.test.records])
    by_task = {d: s[tasks == d].mean() for d in set(tasks)}
    assert by_task["gpqa"] < 0.15 and by_task["agentverse-logicgrid"] < 0.15
    assert max(by_task.values()) - min(by_task.values()) > 0.4


@needs_llmrouter
def test_dcrouter_join_matches_query_file(dcrouter):
    # independent join: task and gold of every test record from the raw files
    raw = [json.loads(line) for line in open(LLM / "query_test.jsonl")]
    by_query = {q["query"]: q for q in raw}
    for r in dcrouter.test.records:
        q = by_query[r.question]
        assert r.dataset == q["task_name"] and r.golden_answers == (q["ground_truth"],)
    raw_scores = json.load(open(LLM / "dcrouter_test.json"))
    assert [r.question for r in dcrouter.test.records] == [x["question"] for x in raw_scores]
    assert all(dict(r.scores) == x["scores"] for r, x in zip(dcrouter.test.records, raw_scores))
    costs = dcrouter.test.records[0].costs
    assert costs["gemma-2-9b-it"] < costs["qwen2.5-7b-instruct"] < costs["llama-3.1-nemotron-51b-instruct"]


@needs_llmrouter
def test_nq_pool6_facts():
    suite = load_nq_pool6(DATA, seed=0)
    assert (len(suite.train), len(suite.test)) == (400, 100)
    ids = [r.id for r in suite.train.records + suite.test.records]
    assert len(set(ids)) == 500
    assert load_nq_pool6(DATA, seed=0).test.records == suite.test.records
    assert load_nq_pool6(DATA, seed=1).test.records != suite.test.records
    log = suite.train.subset(suite.train.records + suite.test.records)
    names, s = score_matrix(log)
    mean = dict(zip(names, s.mean(0)))
    readme = {"gemma-2-27b": 0.457, "mixtral-8x22b": 0.306, "llama-3.1-8b": 0.280, "llama-3.1-70b": 0.199,
              "mistral-7b": 0.165, "qwen2.5-7b": 0.134}
    for m, v in readme.items():
        assert mean[m] == pytest.approx(v, abs=5e-4), m
    assert s.max(1).mean() == pytest.approx(0.595, abs=5e-4)
    assert s.mean() == pytest.approx(0.257, abs=5e-4)
    cost_readme = {"gemma-2-27b": 29.9, "mixtral-8x22b": 79.6, "llama-3.1-70b": 125.9, "mistral-7b": 12.3}
    for m, v in cost_readme.items():  # README costs are micro-dollars
        assert np.mean([r.costs[m] for r in log.records]) * 1e6 == pytest.approx(v, abs=0.05), m
    # indexed by name, not position: the raw first record's mixtral reply is the one kept
    raw = json.load(open(LLM / "nq_router_pool6.json"))[0]
    rec = next(r for r in log.records if r.id == f"nq-{raw['q_id']}")
    k = raw["llm_name_list"].index("mistralai/mixtral-8x22b-instruct-v0.1")
    assert rec.responses["mixtral-8x22b"] == raw["response_list"][k]
    assert rec.scores["mixtral-8x22b"] == raw["perf_list"][k]


@needs_qa7
def test_qa7():
    suite = load_qa7(DATA)
    assert (len(suite.train), len(suite.test)) == (875, 3197)
    counts = {d: sum(r.dataset == d for r in suite.test.records) for d in suite.test.datasets}
    assert counts["Bamboogle"] == 125 and all(counts[d] == 512 for d in suite.test.datasets if d != "Bamboogle")
    tq = next(r for r in suite.train.records if r.dataset == "tq" and len(r.golden_answers) > 3)
    assert all("<|answer_split|>" not in g for g in tq.golden_answers)
    assert all(r.scores == {} and r.responses is None for r in suite.test.records)


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(ValueError, match="data directory not found"):
        load_dcrouter(tmp_path / "nope")
    (tmp_path / "llmrouter").mkdir()
    with pytest.raises(ValueError, match="llm_candidates.json"):
        load_dcrouter(tmp_path)
    with pytest.raises(ValueError, match="nq_router_pool6.json"):
        load_nq_pool6(tmp_path)
    (tmp_path / "llmrouter" / "nq_router_pool6.json").write_text("[{\"q_id\": 1}")
    with pytest.raises(ValueError, match="malformed JSON in .*nq_router_pool6.json"):
        load_nq_pool6(tmp_path)
    (tmp_path / "llmrouter" / "nq_router_pool6.json").write_text("[{\"q_id\": 1}]")
    with pytest.raises(ValueError, match="malformed record 0"):
        load_nq_pool6(tmp_path)
    with pytest.raises(ValueError, match="dev.parquet"):
        load_qa7(tmp_path)


def test_malformed_qa7_parquet_is_named(tmp_path):
    from recal_jax.data import DataError

    (tmp_path / "dev.parquet").write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(DataError, match=r"dev.parquet: cannot be read as a dataset"):
        load_qa7(tmp_path)
