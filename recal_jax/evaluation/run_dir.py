"""One directory per run: resolved config, metrics.jsonl, TensorBoard events, summary.json."""

from __future__ import annotations

import fcntl
import json
import math
import os
import pathlib
import socket
from typing import Any, Mapping, Sequence

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


def read_metrics_file(path) -> list[dict]:
    """The rows of a metrics.jsonl file, one per (phase, step) (the last written; lines cut by a
    kill are dropped); [] when there is no file."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    return dedupe_rows(_parse_rows(path.read_text())[0])


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
        return [row for row in read_metrics_file(self.metrics_path) if phase is None or row.get("phase") == phase]

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


# --------------------------------------------------------------------------- one run per directory

LOCK_FILE = ".lock"


class RunDirLocked(RuntimeError):
    """Another process holds the run directory's RunLock."""


_HELD: dict[str, list] = {}  # lock file path -> [fd, holders in this process]


class RunLock:
    """An exclusive lock on a run directory: fcntl.flock (non-blocking) on `<workdir>/.lock`,
    so a second process on the same directory fails at once with RunDirLocked naming the
    holder's pid. The OS releases the lock when its holder dies (kill -9 included), so no
    stale lock survives a crash. The file stays (deleting it would let two processes lock
    two different files of the same name). Reentrant within a process: a worker and the
    pipeline it calls may both take it. flock is per host: on a shared file system only
    one process of a multi-host run should take it."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self._key = None

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> "RunLock":
        if self.held:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise RunDirLocked(f"run directory {self.workdir} is in use by another process (pid {holder}); "
                                   "wait for it to end or stop it") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
            _HELD[key] = [fd, 1]
        self._key = key
        return self

    def release(self) -> None:
        if not self.held:
            return
        entry = _HELD[self._key]
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[self._key]
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])
        self._key = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(workdir: str | os.PathLike) -> int | None:
    """The pid the RunLock file of `workdir` names: its holder, or its latest one (None: none)."""
    try:
        return int((pathlib.Path(workdir) / LOCK_FILE).read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def _flat_config(config: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': (1, 2)}} -> {'a.b': [1, 2]}: dotted keys, values as config.json holds them
    (tuples as lists, non-finite floats as None); an empty section is a value ({})."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        if isinstance(value, Mapping) and value:
            flat.update(_flat_config(value, f"{name}."))
        else:
            flat[name] = _to_jsonable(value)
    return flat


def _is_safe(key: str, safe_prefixes: Sequence[str]) -> bool:
    """`key` is a safe prefix or lies under one ('eval.' covers eval.every; 'grpo.steps' covers
    grpo.steps itself, not grpo.steps_per_eval)."""
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in safe_prefixes)


def config_differences(stored: Mapping[str, Any], new: Mapping[str, Any], safe_prefixes: Sequence[str],
                       defaults: Mapping[str, Any] | None = None) -> list[str]:
    """The dotted keys whose values differ between two nested configs (a key present on one
    side only differs), without those under `safe_prefixes`, sorted. Values compare as
    config.json holds them, so a stored list equals a new tuple. With `defaults` (a nested
    config of every field's default), a key that `stored` lacks and `new` holds at its default
    does not differ: a field added to the code since that run, whose default is what the code
    did before it existed (the convention for every new option)."""
    a, b = _flat_config(stored), _flat_config(new)
    d = _flat_config(defaults) if defaults is not None else {}
    added_at_default = {k for k in set(b) - set(a) if k in d and d[k] == b[k]}
    differ = (k for k in (set(a) | set(b)) - added_at_default if k not in a or k not in b or a[k] != b[k])
    return sorted(k for k in differ if not _is_safe(k, safe_prefixes))
