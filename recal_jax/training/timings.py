"""Where a run's wall time goes: named phases, and the JAX compiles that happened inside them.

`PhaseTimer.phase(name)` accumulates the wall time of a block under `name`; blocks nest,
and an inner block's time is taken out of its enclosing phase, so the phases partition the
time they cover. `breakdown(total)` adds `other` (the time no phase covered) and the
compiles: their count, seconds, and the functions compiled. Compile seconds are not a phase
of their own (a compile happens inside some phase, e.g. the first GRPO step): they are
reported beside the phases, and counted inside the phase that triggered them.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Iterator

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_BACKEND_COMPILE = _COMPILE_EVENTS[-1]


class CompileLog:
    """Counts JAX's compiles (trace, lowering and backend compile) through jax.monitoring.

    A listener cannot be unregistered in JAX, so one process-wide listener feeds every open
    log; `close()` detaches a log from it."""

    _open: list["CompileLog"] = []
    _lock = threading.Lock()
    _registered = False

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self.functions: collections.Counter[str] = collections.Counter()
        with CompileLog._lock:
            if not CompileLog._registered:
                import jax

                jax.monitoring.register_event_duration_secs_listener(CompileLog._dispatch)
                CompileLog._registered = True
            CompileLog._open.append(self)

    @staticmethod
    def _dispatch(event: str, duration: float, **kwargs) -> None:
        if event not in _COMPILE_EVENTS:
            return
        for log in list(CompileLog._open):
            log.seconds += float(duration)
            if event == _BACKEND_COMPILE:
                log.count += 1
                log.functions[str(kwargs.get("fun_name", "?"))] += 1

    def close(self) -> None:
        with CompileLog._lock:
            if self in CompileLog._open:
                CompileLog._open.remove(self)


class PhaseTimer:
    """Wall time per phase (see the module docstring); `start` is the run's t0 (perf_counter)."""

    def __init__(self, start: float | None = None):
        self.start = time.perf_counter() if start is None else start
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self._stack: list[list] = []  # [name, started, seconds of nested phases]
        self.compiles = CompileLog()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        frame = [name, time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - frame[1]
            self.seconds[name] += elapsed - frame[2]
            if self._stack:
                self._stack[-1][2] += elapsed

    def add(self, name: str, seconds: float) -> None:
        """Time measured elsewhere (e.g. inside a GRPO iteration) moved out of the current phase into `name`."""
        self.seconds[name] += seconds
        if self._stack:
            self._stack[-1][2] += seconds

    def breakdown(self) -> dict:
        """{"total_seconds", "phases": {name: seconds, ..., "other": ...}, "other_share", "compiles"}."""
        total = time.perf_counter() - self.start
        phases = {k: round(v, 4) for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])}
        other = max(total - sum(self.seconds.values()), 0.0)
        phases["other"] = round(other, 4)
        return {
            "total_seconds": round(total, 4), "phases": phases, "other_share": other / max(total, 1e-9),
            "compiles": {"count": self.compiles.count, "seconds": round(self.compiles.seconds, 4),
                         "functions": dict(self.compiles.functions.most_common())},
        }

    def close(self) -> None:
        self.compiles.close()


def format_breakdown(timings: dict) -> str:
    """The breakdown as terminal lines: one phase a line, longest first, with its share."""
    total = max(timings["total_seconds"], 1e-9)
    lines = [f"Wall time {timings['total_seconds']:.1f} s:"]
    for name, seconds in timings["phases"].items():
        lines.append(f"  {name:<24} {seconds:8.1f} s  {100 * seconds / total:5.1f}%")
    c = timings["compiles"]
    lines.append(f"  (compiles: {c['count']} in {c['seconds']:.1f} s, inside the phases above)")
    return "\n".join(lines)
