"""Routing logs on disk.

A log file is JSONL: line 1 is an optional header
    {"routing_log": {"name", "protocol", "datasets": [...], "models": POOL}}
and every further non-blank line is one record (`RoutingRecord.to_json`). A headerless
file of records is read when the pool is given (`models=`): datasets are then taken in
order of first appearance, and the protocol is single_call when some record has no gold
answers (score-only records), else multi_turn.
POOL, also its own JSON file (`read_pool_json` / `write_pool_json`), is
    {model: {"price_in": USD per 1M, "price_out": USD per 1M, "description": str}}.

Every problem of the input is a DataError (a ValueError) naming the file and the line:
invalid UTF-8, malformed JSON, missing or mistyped fields, scores that are not numbers in
[0, 1], duplicate ids, models outside the pool, empty gold answers under multi_turn.

JSONL is parsed line by line (so that errors name the line). Logs held as a
`datasets.Dataset` (from the Hugging Face Hub, or a parquet/JSON file read through the
`datasets` library) go through `read_log_dataset`, with the same checks (errors name the
row); `log_to_dataset` goes the other way.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from recal_jax.data.schema import PROTOCOLS, DataError, ModelInfo, RoutingLog, RoutingRecord, check_model_name

Located = list[tuple[str, RoutingRecord]]  # (where: "file:line", record)


def pool_to_json(models: Mapping[str, ModelInfo]) -> dict:
    return {
        name: {"price_in": info.price_in, "price_out": info.price_out, "description": info.description}
        for name, info in models.items()
    }


def pool_from_json(obj, where: str = "pool") -> dict[str, ModelInfo]:
    if not isinstance(obj, Mapping) or not obj:
        raise DataError(f"{where}: a pool must be a non-empty object mapping model -> "
                        "{price_in, price_out, description}")
    out = {}
    for name, spec in obj.items():
        check_model_name(name, where)
        if not isinstance(spec, Mapping):
            raise DataError(f"{where}: model {name!r} must map to an object")
        unknown = set(spec) - {"price_in", "price_out", "description"}
        if unknown:
            raise DataError(f"{where}: model {name!r} has unknown field(s) {sorted(unknown)}")
        prices = {k: spec.get(k, 0.0) for k in ("price_in", "price_out")}
        for key, value in prices.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"{where}: model {name!r}: {key} must be a number, got {value!r}")
        try:
            out[str(name)] = ModelInfo(name=str(name), price_in=float(prices["price_in"]),
                                       price_out=float(prices["price_out"]),
                                       description=str(spec.get("description", "")))
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: model {name!r}: {e}") from None
    return out


def read_pool_json(path: str | os.PathLike) -> dict[str, ModelInfo]:
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"pool description file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: {json_problem(e)}") from None
    return pool_from_json(obj, where=str(path))


def write_pool_json(models: Mapping[str, ModelInfo], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(pool_to_json(models), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_log_jsonl(log: RoutingLog, path: str | os.PathLike) -> None:
    header = {
        "routing_log": {
            "name": log.name,
            "protocol": log.protocol,
            "datasets": list(log.datasets),
            "models": pool_to_json(log.models),
        }
    }
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(header, ensure_ascii=False) + "\n")
        for r in log.records:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")


def json_problem(e: Exception) -> str:
    """What json.loads' non-syntax errors mean: nesting deeper than Python's recursion limit,
    or an integer longer than Python's int-string conversion limit."""
    if isinstance(e, RecursionError):
        return "invalid JSON: nested too deeply"
    return f"invalid JSON: {' '.join(str(e).split())[:120]}"


def iter_jsonl_objects(path: str | os.PathLike):
    """(line number, object) for each non-blank line of a JSONL file. Invalid UTF-8, a line
    that is not JSON, or one that is not a JSON object is a DataError naming file and line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid UTF-8 (byte {e.start} of the line: "
                                f"{raw[e.start:e.start + 1]!r}); the file must be UTF-8 encoded") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
            except (ValueError, RecursionError) as e:
                raise DataError(f"{path}:{lineno}: {json_problem(e)}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_jsonl_parts(path: str | os.PathLike) -> tuple[dict | None, Located]:
    """(header or None, [(file:line, record)]) of a JSONL log, each record checked alone."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"routing log file not found: {path}")
    header, located = None, []
    for lineno, obj in iter_jsonl_objects(path):
        where = f"{path}:{lineno}"
        if "routing_log" in obj:
            if lineno != 1 or header is not None or located:
                raise DataError(f"{where}: the routing_log header must be the first line")
            header = obj["routing_log"]
            if not isinstance(header, dict):
                raise DataError(f"{where}: routing_log header must be an object")
            continue
        located.append((where, RoutingRecord.from_json(obj, where=where)))
    if header is not None and header.get("protocol", "multi_turn") not in PROTOCOLS:
        raise DataError(f"{path}:1: header protocol must be one of {PROTOCOLS}, got {header.get('protocol')!r}")
    return header, located


def default_protocol(located: Iterable[tuple[str, RoutingRecord]]) -> str:
    """single_call when some record has no gold answers (score-only records), else multi_turn."""
    return "single_call" if any(not r.golden_answers for _, r in located) else "multi_turn"


def check_records(located: Located, models: Mapping[str, ModelInfo], protocol: str, datasets: Sequence[str],
                  *, require_all_scores: bool = False) -> None:
    """The checks that need the whole log: unique ids, models in the pool, known datasets,
    gold answers under multi_turn, and (require_all_scores) a score of every pool model."""
    first: dict[str, str] = {}
    pool, known = set(models), set(datasets)
    for where, r in located:
        if r.id in first:
            raise DataError(f"{where}: duplicate id {r.id!r} (first at {first[r.id]})")
        first[r.id] = where
        if r.dataset not in known:
            raise DataError(f"{where}: dataset {r.dataset!r} is not among the log's datasets {list(datasets)}")
        for field in ("scores", "responses", "costs"):
            unknown = sorted(set(getattr(r, field) or {}) - pool)
            if unknown:
                raise DataError(f"{where}: {field} name model(s) {unknown} that are not in the pool {sorted(pool)}")
        if protocol == "multi_turn" and not r.golden_answers:
            raise DataError(f"{where}: record {r.id!r} has no golden_answers, which the multi_turn protocol "
                            "needs (a score-only log uses protocol single_call)")
        lacking = sorted(pool - set(r.scores)) if require_all_scores else []
        if lacking:
            raise DataError(f"{where}: scores lack model(s) {lacking}; every record needs a logged score "
                            "of every model of the pool")


def assemble_log(located: Located, models: Mapping[str, ModelInfo], protocol: str, datasets: Sequence[str],
                 name: str, *, require_all_scores: bool = False) -> RoutingLog:
    """check_records, then the RoutingLog."""
    if protocol not in PROTOCOLS:
        raise DataError(f"{name}: unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    check_records(located, models, protocol, datasets, require_all_scores=require_all_scores)
    try:
        return RoutingLog(records=tuple(r for _, r in located), models=dict(models), datasets=tuple(datasets),
                          protocol=protocol, name=name)
    except ValueError as e:
        raise DataError(f"{name}: {e}") from None


def read_log_jsonl(path: str | os.PathLike, models: Mapping[str, ModelInfo] | None = None, *,
                   protocol: str | None = None, require_all_scores: bool = False) -> RoutingLog:
    """A routing log from a JSONL file. `models` (the pool) replaces the header's; `protocol`
    replaces the header's (and the default of a headerless file, see the module docstring)."""
    path = Path(path)
    header, located = read_jsonl_parts(path)
    header = header or {}
    if models is None:
        if "models" not in header:
            raise DataError(f"{path}: no routing_log header with the models on line 1 and no models given")
        models = pool_from_json(header["models"], where=f"{path}:1 models")
    datasets = header.get("datasets") or first_seen(r for _, r in located)
    protocol = protocol or header.get("protocol") or default_protocol(located)
    return assemble_log(located, models, protocol, datasets, header.get("name", path.stem),
                        require_all_scores=require_all_scores)


def first_seen(records: Iterable[RoutingRecord]) -> list[str]:
    return list(dict.fromkeys(r.dataset for r in records))


@contextlib.contextmanager
def quiet_datasets():
    """The datasets library without its progress bars (restored after)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def load_dataset_file(path: str | os.PathLike):
    """A parquet, JSONL or JSON file as a datasets.Dataset (read by the `datasets` library)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    with quiet_datasets() as datasets:
        try:
            if path.suffix == ".parquet":
                return datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
            return datasets.Dataset.from_json(str(path), keep_in_memory=True)
        except Exception as e:  # pyarrow and datasets raise many types for a bad file
            raise DataError(f"{path}: cannot be read as a dataset: {type(e).__name__}: {e}") from None


def _without_nulls(row: Mapping) -> dict:
    """A dataset row as a record object: arrow fills the models a row lacks with None; drop them."""
    out = dict(row)
    for field in ("scores", "responses", "costs"):
        if isinstance(out.get(field), Mapping):
            out[field] = {k: v for k, v in out[field].items() if v is not None}
    return out


def dataset_parts(dataset, where: str) -> Located:
    """[(where: row i, record)] of a datasets.Dataset whose rows are records."""
    return [(f"{where}: row {i}", RoutingRecord.from_json(_without_nulls(row), where=f"{where}: row {i}"))
            for i, row in enumerate(dataset)]


def read_log_dataset(source, models: Mapping[str, ModelInfo], *, protocol: str | None = None,
                     datasets: Sequence[str] | None = None, name: str | None = None,
                     require_all_scores: bool = False) -> RoutingLog:
    """A routing log from a datasets.Dataset of records, or from a parquet/JSONL file read
    through `datasets` (a model a row lacks, filled with null by arrow, is absent)."""
    if isinstance(source, (str, os.PathLike)):
        where, dataset = str(source), load_dataset_file(source)
        name = name or Path(source).stem
    else:
        where, dataset = name or "dataset", source
    located = dataset_parts(dataset, where)
    return assemble_log(located, models, protocol or default_protocol(located),
                        datasets or first_seen(r for _, r in located), name or where,
                        require_all_scores=require_all_scores)


def log_to_dataset(log: RoutingLog):
    """The records of `log` as a datasets.Dataset (one row per record, `RoutingRecord.to_json`
    columns; the pool and protocol are not part of it)."""
    import datasets

    rows = [r.to_json() for r in log.records]
    columns = ("id", "dataset", "question", "golden_answers", "scores", "responses", "costs")
    return datasets.Dataset.from_dict({c: [row.get(c) for row in rows] for c in columns})
