"""Loaders for the real routing data in ../shared/data (spec section 9; see its README).

Each takes a DIRECTORY and returns a Suite; a missing or malformed file raises ValueError
naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from recal_jax.data.jsonl import iter_jsonl_objects
from recal_jax.data.schema import ESTIMATED_COMPLETION_TOKENS, ESTIMATED_PROMPT_TOKENS, ModelInfo, RoutingLog, RoutingRecord
from recal_jax.data.suite import Suite, random_split

DCROUTER_TASKS = (
    "math", "natural_qa", "trivia_qa", "mmlu", "mbpp", "gsm8k", "commonsense_qa", "openbook_qa",
    "arc_challenge", "gpqa", "agentverse-mgsm", "human_eval", "agentverse-logicgrid", "commongen",
)

# Router-R1's six-model pool. nq_router_pool6's cost_list is completion tokens x USD per 1M
# tokens, i.e. micro-dollars; prices are the NVIDIA NIM list prices that divide it.
NQ_POOL6_MODELS = {
    "qwen/qwen2.5-7b-instruct": ("qwen2.5-7b", 0.3, "Qwen2.5-7B-Instruct: 7B multilingual instruction model, cheap and fast."),
    "meta/llama-3.1-70b-instruct": ("llama-3.1-70b", 0.88, "LLaMA-3.1-70B-Instruct: 70B general model, strong reasoning, expensive."),
    "mistralai/mistral-7b-instruct-v0.3": ("mistral-7b", 0.2, "Mistral-7B-Instruct: 7B instruction follower, cheap and fast."),
    "mistralai/mixtral-8x22b-instruct-v0.1": ("mixtral-8x22b", 1.2, "Mixtral-8x22B-Instruct: large mixture of experts, broad knowledge, the most expensive."),
    "google/gemma-2-27b-it": ("gemma-2-27b", 0.8, "Gemma-2-27B-IT: 27B model, good factual recall at a mid price."),
    "meta/llama-3.1-8b-instruct": ("llama-3.1-8b", 0.18, "LLaMA-3.1-8B-Instruct: 8B general model, cheap."),
}
NQ_POOL6_COST_UNIT_USD = 1e-6

QA7_DATASETS = ("nq", "tq", "popqa", "hotpotqa", "2wiki", "musique", "Bamboogle")
QA7_GOLD_SEPARATOR = "<|answer_split|>"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"missing data file: {path}")
    return path


def _read_json(path: Path):
    try:
        return json.loads(_require(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON in {path} at line {e.lineno}: {e.msg}") from None


def _read_jsonl(path: Path) -> list[dict]:
    return [obj for _, obj in iter_jsonl_objects(_require(path))]


def _dir(path) -> Path:
    path = Path(os.fspath(path))
    if not path.is_dir():
        raise ValueError(f"data directory not found: {path}")
    return path


def load_dcrouter(path) -> Suite:
    """dcrouter_{train,test}.json joined with query_{train,test}.jsonl (question == query).

    Score-only log, protocol single_call, gold = ground_truth. The pool is the models that
    appear in the scores, with llm_candidates.json prices and descriptions. dcrouter logs no
    token usage: each record's costs are written out as prices x the schema's fixed estimate
    (ESTIMATED_PROMPT_TOKENS in, ESTIMATED_COMPLETION_TOKENS out), so cost is proportional to
    price and every consumer sees the same numbers. A question that occurs
    several times in a query file (a handful in train) takes its first occurrence.
    """
    root = _dir(path)
    llm = root / "llmrouter" if (root / "llmrouter").is_dir() else root
    candidates = _read_json(llm / "llm_candidates.json")
    logs = {}
    models = None
    for split in ("train", "test"):
        rows = _read_json(llm / f"dcrouter_{split}.json")
        if not isinstance(rows, list):
            raise ValueError(f"malformed {llm / f'dcrouter_{split}.json'}: expected a JSON array")
        queries: dict[str, dict] = {}
        for q in _read_jsonl(llm / f"query_{split}.jsonl"):
            if "query" not in q or "task_name" not in q:
                raise ValueError(f"malformed {llm / f'query_{split}.jsonl'}: record without query/task_name")
            queries.setdefault(q["query"], q)
        if models is None:
            names = list(rows[0]["scores"]) if rows else []
            missing = [n for n in names if n not in candidates]
            if missing:
                raise ValueError(f"{llm / 'llm_candidates.json'} lacks model(s) {missing}")
            models = {
                n: ModelInfo(n, float(candidates[n]["input_price"]), float(candidates[n]["output_price"]),
                             str(candidates[n].get("feature", "")))
                for n in names
            }
        costs = {n: (m.price_in * ESTIMATED_PROMPT_TOKENS + m.price_out * ESTIMATED_COMPLETION_TOKENS) / 1e6
                 for n, m in models.items()}
        records = []
        for i, row in enumerate(rows):
            q = queries.get(row.get("question"))
            if q is None:
                raise ValueError(f"dcrouter_{split}.json record {i}: question not found in query_{split}.jsonl")
            if q["task_name"] not in DCROUTER_TASKS:
                raise ValueError(f"query_{split}.jsonl: unknown task {q['task_name']!r}")
            records.append(RoutingRecord(
                id=f"dcrouter-{split}-{i}", dataset=q["task_name"], question=row["question"],
                golden_answers=(str(q.get("ground_truth", "")),), scores=dict(row["scores"]), costs=dict(costs),
            ))
        logs[split] = RoutingLog(records=tuple(records), models=models, datasets=DCROUTER_TASKS,
                                 protocol="single_call", name=f"dcrouter/{split}")
    return Suite(train=logs["train"], test=logs["test"])


def load_nq_pool6(path, seed: int = 0, n_train: int = 400, n_test: int = 100) -> Suite:
    """nq_router_pool6.json: Router-R1's six models on 500 NQ questions, indexed by model
    NAME (the list order differs per record). Replies, F1 scores and costs (USD) are
    logged; models get short names (NQ_POOL6_MODELS). Seeded train/test split; multi_turn.
    """
    root = _dir(path)
    llm = root / "llmrouter" if (root / "llmrouter").is_dir() else root
    file = llm / "nq_router_pool6.json"
    rows = _read_json(file)
    if not isinstance(rows, list):
        raise ValueError(f"malformed {file}: expected a JSON array")
    models = {short: ModelInfo(short, price, price, desc) for short, price, desc in NQ_POOL6_MODELS.values()}
    records = []
    for i, row in enumerate(rows):
        try:
            names = row["llm_name_list"]
            lists = [row[k] for k in ("response_list", "cost_list", "perf_list")]
            if any(len(x) != len(names) for x in lists):
                raise ValueError("lists of different lengths")
            unknown = [n for n in names if n not in NQ_POOL6_MODELS]
            if unknown:
                raise ValueError(f"unknown model(s) {unknown}")
            short = [NQ_POOL6_MODELS[n][0] for n in names]
            records.append(RoutingRecord(
                id=f"nq-{row['q_id']}", dataset="nq", question=row["query"], golden_answers=tuple(row["gt"]),
                scores=dict(zip(short, map(float, row["perf_list"]))),
                responses=dict(zip(short, map(str, row["response_list"]))),
                costs={s: float(c) * NQ_POOL6_COST_UNIT_USD for s, c in zip(short, row["cost_list"])},
            ))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed record {i} in {file}: {e}") from None
    log = RoutingLog(records=tuple(records), models=models, datasets=("nq",), protocol="multi_turn", name="nq_pool6")
    return random_split(log, n_train, n_test, seed)


def load_qa7(path, models: dict[str, ModelInfo] | None = None) -> Suite:
    """qa7/{dev,test}.parquet (train = dev, test = test). Gold answers split on
    <|answer_split|>; no replies or scores, so the suite needs a live or simulated pool;
    `models` is that pool's description (default: Router-R1's six models)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("load_qa7 needs pyarrow (pip install pyarrow)") from None
    root = _dir(path)
    qa7 = root / "qa7" if (root / "qa7").is_dir() else root
    if models is None:
        models = {short: ModelInfo(short, price, price, desc) for short, price, desc in NQ_POOL6_MODELS.values()}
    logs = {}
    for split, fname in (("train", "dev.parquet"), ("test", "test.parquet")):
        file = _require(qa7 / fname)
        try:
            rows = pq.read_table(file).to_pylist()
        except Exception as e:  # pyarrow raises several types for a bad file
            raise ValueError(f"malformed parquet file {file}: {e}") from None
        records = []
        for i, row in enumerate(rows):
            try:
                source = row["data_source"]
                if source not in QA7_DATASETS:
                    raise ValueError(f"unknown data_source {source!r}")
                question = next(m["content"] for m in row["prompt"] if m.get("role") == "user")
                golds = [g for g in row["reward_model"]["ground_truth"].split(QA7_GOLD_SEPARATOR) if g.strip()]
                index = (row.get("extra_info") or {}).get("index") or f"{source}-{i}"
                records.append(RoutingRecord(id=f"qa7-{split}-{index}", dataset=source, question=question.strip(),
                                             golden_answers=tuple(golds), scores={}))
            except (KeyError, TypeError, StopIteration, ValueError, AttributeError) as e:
                raise ValueError(f"malformed row {i} in {file}: {e!r}") from None
        logs[split] = RoutingLog(records=tuple(records), models=dict(models), datasets=QA7_DATASETS,
                                 protocol="multi_turn", name=f"qa7/{split}")
    return Suite(train=logs["train"], test=logs["test"])
