"""Routing logs on disk.

A log file is JSONL: line 1 is a header
    {"routing_log": {"name", "protocol", "datasets": [...], "models": POOL}}
and every further non-blank line is one record (`RoutingRecord.to_json`). A headerless
file of records is read when the pool is given (`models=`): datasets are then taken in
order of first appearance and the protocol defaults to multi_turn.
POOL, also its own JSON file (`read_pool_json` / `write_pool_json`), is
    {model: {"price_in": USD per 1M, "price_out": USD per 1M, "description": str}}.
Malformed input raises ValueError naming the file and line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from recal_jax.data.schema import ModelInfo, RoutingLog, RoutingRecord


def pool_to_json(models: Mapping[str, ModelInfo]) -> dict:
    return {
        name: {"price_in": info.price_in, "price_out": info.price_out, "description": info.description}
        for name, info in models.items()
    }


def pool_from_json(obj, where: str = "pool") -> dict[str, ModelInfo]:
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{where}: a pool must be a non-empty object mapping model -> {{price_in, price_out, description}}")
    out = {}
    for name, spec in obj.items():
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: model {name!r} must map to an object")
        unknown = set(spec) - {"price_in", "price_out", "description"}
        if unknown:
            raise ValueError(f"{where}: model {name!r} has unknown field(s) {sorted(unknown)}")
        try:
            out[str(name)] = ModelInfo(
                name=str(name),
                price_in=float(spec.get("price_in", 0.0)),
                price_out=float(spec.get("price_out", 0.0)),
                description=str(spec.get("description", "")),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: model {name!r}: {e}") from None
    return out


def read_pool_json(path: str | os.PathLike) -> dict[str, ModelInfo]:
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"pool description file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
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


def iter_jsonl_objects(path: str | os.PathLike):
    """(line number, object) for each non-blank line of a JSONL file; a line that is not a
    JSON object is a ValueError naming the file and the line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_log_jsonl(path: str | os.PathLike, models: Mapping[str, ModelInfo] | None = None) -> RoutingLog:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"routing log file not found: {path}")
    header = None
    records = []
    for lineno, obj in iter_jsonl_objects(path):
        if "routing_log" in obj:
            if lineno != 1 or header is not None or records:
                raise ValueError(f"{path}:{lineno}: the routing_log header must be the first line")
            header = obj["routing_log"]
            if not isinstance(header, dict):
                raise ValueError(f"{path}:{lineno}: routing_log header must be an object")
            continue
        try:
            records.append(RoutingRecord.from_json(obj, where=f"{path}:{lineno}"))
        except (TypeError, ValueError) as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(str(path)) else f"{path}:{lineno}: {msg}") from None
    if header is not None:
        pool = pool_from_json(header.get("models"), where=f"{path}:1 models") if models is None else dict(models)
        datasets = header.get("datasets") or _first_seen(records)
        protocol = header.get("protocol", "multi_turn")
        name = header.get("name", path.stem)
    else:
        if models is None:
            raise ValueError(f"{path}: no routing_log header on line 1 and no models given")
        pool, datasets, protocol, name = dict(models), _first_seen(records), "multi_turn", path.stem
    try:
        return RoutingLog(records=tuple(records), models=pool, datasets=tuple(datasets), protocol=protocol, name=name)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _first_seen(records) -> list[str]:
    return list(dict.fromkeys(r.dataset for r in records))
