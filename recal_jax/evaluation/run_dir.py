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


GRPO_PHASES = ("train", "eval")  # rows a GRPO resume rewrites; "sft" and "eval_sft" come before GRPO
SFT_EVAL_FILE = "eval_sft.json"


def _parse_rows(text: str) -> tuple[list[dict], int]:
    """The JSON rows of metrics.jsonl text and how many lines were not rows (a line cut by a
    kill in the middle of a write)."""
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def dedupe_rows(rows: list[dict]) -> list[dict]:
    """One row per (phase, step): the last one written, at the place of its last writing (a
    step redone after a restart replaces the row of the attempt that was killed)."""
    last = {(row.get("phase"), row.get("step")): i for i, row in enumerate(rows)}
    return [row for i, row in enumerate(rows) if last[(row.get("phase"), row.get("step"))] == i]


class RunDir:
    """Writes a run's artefacts, crash-safe across restarts of the same run.

    metrics.jsonl holds one row per (phase, step): reading keeps the last row written for
    each, and the file itself is compacted so when the RunDir is opened and closed (a line
    cut by a kill is dropped). `truncate_metrics(k)` drops the GRPO rows of steps >= k (a
    resume from GRPO step k redoes them); SFT rows are never dropped by a GRPO resume.
    The after-SFT evaluation is kept in eval_sft.json, so a resumed run's summary has it."""

    def __init__(self, path: str | os.PathLike, *, tensorboard: bool = True):
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self._compact()
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tensorboard"))

    def write_config(self, config: Mapping[str, Any] | Any) -> None:
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        self._write_json("config.json", _to_jsonable(config))

    def _rewrite_metrics(self, rows: list[dict]) -> None:
        tmp = self.metrics_path.with_suffix(".tmp")
        with tmp.open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, self.metrics_path)

    def _compact(self) -> None:
        """Rewrites metrics.jsonl without cut lines and duplicate (phase, step) rows, if it has any."""
        if not self.metrics_path.exists():
            return
        text = self.metrics_path.read_text()
        rows, bad = _parse_rows(text)
        kept = dedupe_rows(rows)
        if bad or len(kept) != len(rows) or (text and not text.endswith("\n")):
            self._rewrite_metrics(kept)

    def truncate_metrics(self, from_step: int, phases: tuple[str, ...] | None = GRPO_PHASES) -> None:
        """Drops the rows of `phases` (None: every phase) with step >= from_step."""
        if not self.metrics_path.exists():
            return
        kept = [row for row in self.read_metrics()
                if row.get("step", -1) < from_step or (phases is not None and row.get("phase") not in phases)]
        self._rewrite_metrics(kept)

    def start_fresh(self) -> None:
        """A run that starts with no checkpoint: no GRPO row and no after-SFT result of an earlier
        attempt survives (SFT rows are rewritten step by step by the new SFT)."""
        self.truncate_metrics(0)
        (self.path / SFT_EVAL_FILE).unlink(missing_ok=True)

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
        """The rows of `phase` (None: all), one per (phase, step) (the last written)."""
        if not self.metrics_path.exists():
            return []
        rows = dedupe_rows(_parse_rows(self.metrics_path.read_text())[0])
        return [row for row in rows if phase is None or row.get("phase") == phase]

    def write_sft_eval(self, result: Mapping[str, Any]) -> None:
        """The after-SFT evaluation (summary's sft_policy), kept for the summary of a resumed run."""
        self._write_json(SFT_EVAL_FILE, _to_jsonable(result))

    def read_sft_eval(self) -> dict | None:
        path = self.path / SFT_EVAL_FILE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:  # cannot happen with the atomic write; never fatal
            return None

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
        self._compact()
