"""What `pipeline.train_and_evaluate` returns: a typed result (the launcher formats it)."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from recal_jax.evaluation.router_result import RouterResult


@dataclasses.dataclass(frozen=True)
class RunResult:
    """workdir: the run directory. stopped_at_step: the GRPO step a run stopped at
    (grpo.stop_at_step; resume with the same command), None for a finished run, which then
    has policy (the trained policy's test evaluation), sft_policy (the SFT start's, with
    eval.after_sft), references (the reference routers), datasets (test datasets, in order)
    and summary (summary.json as written). timings: the phase breakdown."""

    workdir: pathlib.Path
    preset: str
    timings: dict[str, Any]
    stopped_at_step: int | None = None
    grpo_steps: int = 0
    policy: dict[str, Any] | None = None
    sft_policy: dict[str, Any] | None = None
    references: dict[str, RouterResult] = dataclasses.field(default_factory=dict)
    datasets: tuple[str, ...] = ()
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.stopped_at_step is None
