"""Where a grid run lives: `<results_dir>/<suite>/<preset>[-rw<w>]-s<seed>/`, and when it is done."""

from __future__ import annotations

import math
import pathlib
import re

_RUN_NAME = re.compile(r"^(?P<preset>[A-Za-z0-9_]+?)(?:-rw(?P<rw>[0-9.]+(?:e[+-]?[0-9]+)?))?-s(?P<seed>[0-9]+)$")
SUMMARY = "summary.json"
COMMAND = "command.txt"


def format_weight(weight: float) -> str:
    """0.25 -> '0.25', 1.0 -> '1', 0 -> '0' (the shortest exact-looking form, Python's 'g')."""
    w = float(weight)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"route weight must be a finite number >= 0, got {weight!r}")
    return format(w, "g")


def run_name(preset: str, seed: int, route_weight: float | None = None) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]+", preset):
        raise ValueError(f"preset name {preset!r} must be letters, digits and underscores")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    rw = "" if route_weight is None else f"-rw{format_weight(route_weight)}"
    return f"{preset}{rw}-s{seed}"


def parse_run_name(name: str) -> tuple[str, float | None, int]:
    """Inverse of `run_name`: (preset, route_weight or None, seed)."""
    m = _RUN_NAME.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a run directory name <preset>[-rw<w>]-s<seed>")
    rw = m.group("rw")
    return m.group("preset"), (None if rw is None else float(rw)), int(m.group("seed"))


def run_path(results_dir, suite: str, preset: str, seed: int, route_weight: float | None = None) -> pathlib.Path:
    return pathlib.Path(results_dir) / suite / run_name(preset, seed, route_weight)


def is_done(path) -> bool:
    """A run is finished when its summary.json exists (the pipeline writes it last, atomically)."""
    return (pathlib.Path(path) / SUMMARY).is_file()


def has_checkpoint(path) -> bool:
    ckpt = pathlib.Path(path) / "checkpoints"
    return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())
