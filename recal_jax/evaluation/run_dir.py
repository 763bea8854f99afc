"""One directory per run: resolved config, metrics.jsonl, TensorBoard events, summary.json."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping

import numpy as np


def _to_jsonable(value: Any) -> Any:
    """Numbers from numpy/jax arrays become Python floats; non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        arr = np.asarray(value)
        if arr.ndim == 0:
            return _to_jsonable(arr.item())
        return _to_jsonable(arr.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (np.floating,)):
        return _to_jsonable(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """{'a': {'b': 1}} -> {'a/b': 1.0}; arrays of size > 1 become a/0, a/1, ..."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            continue
        if arr.ndim == 0:
            flat[name] = float(arr)
        else:
            for i, v in enumerate(arr.reshape(-1)):
                flat[f"{name}/{i}"] = float(v)
    return flat


class RunDir:
    """Writes a run's artefacts. Appending to metrics.jsonl is safe across resumes:
    rows with step >= the resume step are dropped first, so a resumed run has no duplicates."""

    def __init__(self, path: str | os.PathLike, *, tensorboard: bool = True):
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tensorboard"))

    def write_config(self, config: Mapping[str, Any] | Any) -> None:
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        self._write_json("config.json", _to_jsonable(config))

    def truncate_metrics(self, from_step: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.read_metrics() if line.get("step", -1) < from_step]
        tmp = self.metrics_path.with_suffix(".tmp")
        with tmp.open("w") as f:
            for row in kept:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, self.metrics_path)

    def log(self, step: int, metrics: Mapping[str, Any], phase: str = "train") -> dict[str, float]:
        flat = flatten_metrics(metrics)
        row = {"step": int(step), "phase": phase, **{k: _to_jsonable(v) for k, v in flat.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in flat.items():
                if math.isfinite(value):
                    self._tb.add_scalar(f"{phase}/{key}", value, step)
        return flat

    def read_metrics(self, phase: str | None = None) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if phase is None or row.get("phase") == phase:
                    rows.append(row)
        return rows

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        self._write_json("summary.json", _to_jsonable(summary))

    def _write_json(self, name: str, obj: Any) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
        os.replace(tmp, self.path / name)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
