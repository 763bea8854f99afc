"""Loaders for the real routing data in ../shared/data (spec section 9; see its README).

Each takes a DIRECTORY and returns a Suite; a missing or malformed file raises DataError
(a ValueError) naming it. `load_jsonl_dir` reads a user's own log (train/test records and a
pool description).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from recal_jax.data.jsonl import (
    assemble_log, dataset_parts, default_protocol, first_seen, iter_jsonl_objects, json_problem, load_dataset_file,
    pool_from_json, read_jsonl_parts, read_pool_json,
)
from recal_jax.data.schema import (
    ESTIMATED_COMPLETION_TOKENS, ESTIMATED_PROMPT_TOKENS, PROTOCOLS, DataError, ModelInfo, RoutingLog, RoutingRecord,
    check_model_name,
)
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
        raise DataError(f"missing data file: {path}")
    return path


def _read_json(path: Path):
    try:
        return json.loads(_require(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON in {path} at line {e.lineno}: {e.msg}") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"malformed JSON in {path}: {json_problem(e)}") from None


def _read_jsonl(path: Path) -> list[dict]:
    return [obj for _, obj in iter_jsonl_objects(_require(path))]


def _dir(path) -> Path:
    path = Path(os.fspath(path))
    if not path.is_dir():
        raise DataError(f"data directory not found: {path}")
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
            raise DataError(f"malformed {llm / f'dcrouter_{split}.json'}: expected a JSON array")
        queries: dict[str, dict] = {}
        for q in _read_jsonl(llm / f"query_{split}.jsonl"):
            if "query" not in q or "task_name" not in q:
                raise DataError(f"malformed {llm / f'query_{split}.jsonl'}: record without query/task_name")
            queries.setdefault(q["query"], q)
        if models is None:
            names = [check_model_name(n, str(llm / f"dcrouter_{split}.json"))
                     for n in (rows[0]["scores"] if rows else [])]
            missing = [n for n in names if n not in candidates]
            if missing:
                raise DataError(f"{llm / 'llm_candidates.json'} lacks model(s) {missing}")
            try:
                models = {
                    n: ModelInfo(n, float(candidates[n]["input_price"]), float(candidates[n]["output_price"]),
                                 str(candidates[n].get("feature", "")))
                    for n in names
                }
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{llm / 'llm_candidates.json'}: {e}") from None
        costs = {n: (m.price_in * ESTIMATED_PROMPT_TOKENS + m.price_out * ESTIMATED_COMPLETION_TOKENS) / 1e6
                 for n, m in models.items()}
        records = []
        for i, row in enumerate(rows):
            q = queries.get(row.get("question"))
            if q is None:
                raise DataError(f"dcrouter_{split}.json record {i}: question not found in query_{split}.jsonl")
            if q["task_name"] not in DCROUTER_TASKS:
                raise DataError(f"query_{split}.jsonl: unknown task {q['task_name']!r}")
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
        raise DataError(f"malformed {file}: expected a JSON array")
    models = {short: ModelInfo(short, price, price, desc) for short, price, desc in NQ_POOL6_MODELS.values()}
    records = []
    for i, row in enumerate(rows):
        try:
            names = row["llm_name_list"]
            lists = [row[k] for k in ("response_list", "cost_list", "perf_list")]
            if any(len(x) != len(names) for x in lists):
                raise DataError("lists of different lengths")
            unknown = [n for n in names if n not in NQ_POOL6_MODELS]
            if unknown:
                raise DataError(f"unknown model(s) {unknown}")
            short = [NQ_POOL6_MODELS[n][0] for n in names]
            records.append(RoutingRecord(
                id=f"nq-{row['q_id']}", dataset="nq", question=row["query"], golden_answers=tuple(row["gt"]),
                scores=dict(zip(short, map(float, row["perf_list"]))),
                responses=dict(zip(short, map(str, row["response_list"]))),
                costs={s: float(c) * NQ_POOL6_COST_UNIT_USD for s, c in zip(short, row["cost_list"])},
            ))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"malformed record {i} in {file}: {e}") from None
    log = RoutingLog(records=tuple(records), models=models, datasets=("nq",), protocol="multi_turn", name="nq_pool6")
    return random_split(log, n_train, n_test, seed)


def load_qa7(path, models: dict[str, ModelInfo] | None = None) -> Suite:
    """qa7/{dev,test}.parquet (train = dev, test = test), read through the `datasets` library.
    Gold answers split on <|answer_split|>; no replies or scores, so the suite needs a live or
    simulated pool; `models` is that pool's description (default: Router-R1's six models)."""
    root = _dir(path)
    qa7 = root / "qa7" if (root / "qa7").is_dir() else root
    if models is None:
        models = {short: ModelInfo(short, price, price, desc) for short, price, desc in NQ_POOL6_MODELS.values()}
    logs = {}
    for split, fname in (("train", "dev.parquet"), ("test", "test.parquet")):
        file = _require(qa7 / fname)
        rows = load_dataset_file(file).to_list()
        records = [_qa7_record(row, i, split, file) for i, row in enumerate(rows)]
        logs[split] = RoutingLog(records=tuple(records), models=dict(models), datasets=QA7_DATASETS,
                                 protocol="multi_turn", name=f"qa7/{split}")
    return Suite(train=logs["train"], test=logs["test"])


def _qa7_record(row: dict, i: int, split: str, file: Path) -> RoutingRecord:
    try:
        source = row["data_source"]
        if source not in QA7_DATASETS:
            raise ValueError(f"unknown data_source {source!r}")
        question = next(m["content"] for m in row["prompt"] if m.get("role") == "user")
        golds = [g for g in row["reward_model"]["ground_truth"].split(QA7_GOLD_SEPARATOR) if g.strip()]
        index = (row.get("extra_info") or {}).get("index") or f"{source}-{i}"
        return RoutingRecord(id=f"qa7-{split}-{index}", dataset=source, question=question.strip(),
                             golden_answers=tuple(golds), scores={})
    except (KeyError, TypeError, StopIteration, ValueError, AttributeError) as e:
        raise DataError(f"malformed row {i} in {file}: {e!r}") from None


def _split_file(root: Path, split: str) -> Path:
    for suffix in (".jsonl", ".parquet"):
        if (root / f"{split}{suffix}").is_file():
            return root / f"{split}{suffix}"
    raise DataError(f"missing data file: {root / f'{split}.jsonl'} (or {split}.parquet)")


def _split_parts(file: Path) -> tuple[dict, list]:
    """(header or {}, located records) of one split file: JSONL line by line, parquet through `datasets`."""
    if file.suffix == ".parquet":
        return {}, dataset_parts(load_dataset_file(file), str(file))
    header, located = read_jsonl_parts(file)
    return header or {}, located


def _jsonl_pool(root: Path, headers: dict[str, dict]) -> dict[str, ModelInfo]:
    """pool.json when present, else the models of the first split header that has them."""
    if (root / "pool.json").is_file():
        return read_pool_json(root / "pool.json")
    for split, header in headers.items():
        if "models" in header:
            return pool_from_json(header["models"], where=f"{header['_file']}:1 models")
    raise DataError(f"missing data file: {root / 'pool.json'} (the pool {{model: {{price_in, price_out, "
                    "description}}}}; or give the models in a routing_log header)")


def _jsonl_protocol(protocol: str | None, headers: dict[str, dict], located: list) -> str:
    """`protocol` when given; else the headers' (they must agree); else the records' default."""
    if protocol:
        if protocol not in PROTOCOLS:
            raise DataError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        return protocol
    declared = {h["protocol"]: h["_file"] for h in headers.values() if "protocol" in h}
    if len(declared) > 1:
        raise DataError(f"the headers of {sorted(declared.values())} declare different protocols {sorted(declared)}")
    return next(iter(declared)) if declared else default_protocol(located)


def load_jsonl_dir(path, protocol: str | None = None) -> Suite:
    """A user's routing log: DIR/train.jsonl and DIR/test.jsonl (or .parquet, read through
    `datasets`), records as in recal_jax.data.jsonl (a header line is optional), and
    DIR/pool.json {model: {price_in, price_out, description}} (else a header's models).
    The protocol is `protocol`, else the headers', else single_call when some record has no
    gold answers (score-only), else multi_turn. Every record must score every pool model
    (replay and the reference routers read the scores); errors name the file and line."""
    root = _dir(path)
    files = {split: _split_file(root, split) for split in ("train", "test")}
    headers, parts = {}, {}
    for split, file in files.items():
        header, parts[split] = _split_parts(file)
        headers[split] = {**header, "_file": str(file)}
    models = _jsonl_pool(root, headers)
    protocol = _jsonl_protocol(protocol, headers, parts["train"] + parts["test"])
    datasets = headers["train"].get("datasets") or first_seen(r for _, r in parts["train"] + parts["test"])
    logs = {split: assemble_log(parts[split], models, protocol, datasets, f"{root.name}/{split}",
                                require_all_scores=True) for split in files}
    for split, log in logs.items():
        if not log.records:
            raise DataError(f"{files[split]}: no records")
    return Suite(train=logs["train"], test=logs["test"])
