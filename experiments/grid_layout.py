"""Where a grid run lives: `<results_dir>/<suite>/<preset>[-rw<w>]-s<seed>/`, and when it is done.

The shared SFT warm start of (suite, seed) lives in `<results_dir>/<suite>/_sft-s<seed>/`; it is
done when its exported policy (`export/config.json`) exists. Directories whose name starts with
`_` are grid helpers, never preset runs."""

from __future__ import annotations

import math
import pathlib
import re

from recal_jax.calibration import COMPONENTS, CalibrationConfig

_RUN_NAME = re.compile(r"^(?P<preset>[A-Za-z0-9_]+?)(?:-rw(?P<rw>[0-9.]+(?:e[+-]?[0-9]+)?))?-s(?P<seed>[0-9]+)$")
SUMMARY = "summary.json"
COMMAND = "command.txt"
EXPORT = "export"
SFT_PREFIX = "_sft"


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


def sft_run_name(seed: int) -> str:
    """Directory name of the shared SFT job of one seed: '_sft-s<seed>'."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return f"{SFT_PREFIX}-s{seed}"


def is_helper_dir(name: str) -> bool:
    """True for grid helper directories (the shared SFT jobs): their name starts with '_'."""
    return name.startswith("_")


def parse_run_name(name: str) -> tuple[str, float | None, int]:
    """Inverse of `run_name`: (preset, route_weight or None, seed)."""
    if is_helper_dir(name):
        raise ValueError(f"{name!r} is a grid helper directory (leading '_'), not a run")
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


def export_path(path) -> pathlib.Path:
    """Where train_and_evaluate writes a run's final policy (HF layout) and its tokenizer."""
    return pathlib.Path(path) / EXPORT


def is_exported(path) -> bool:
    """An SFT job is finished when its exported policy exists (the pipeline exports last)."""
    return (export_path(path) / "config.json").is_file()


def preset_weights(preset: str, route_weight: float | None = None) -> list[float]:
    """The component weights of a calibration preset, with `route` set to `route_weight` when given."""
    weights = [float(w) for w in CalibrationConfig.preset(preset).weights]
    if route_weight is not None:
        weights[COMPONENTS.index("route")] = float(route_weight)
    return weights


def uses_router_r1_scalar(preset: str) -> bool:
    """True for presets whose reward is Router-R1's scalar (1 - alpha) * answer + alpha * route:
    the component weights do not reach it, its cost weight is alpha (router_r1_alpha)."""
    return CalibrationConfig.preset(preset).scalar_reward == "router_r1"


def router_r1_alpha(route_weight: float) -> float:
    """Router-R1's alpha for a sweep's route weight w: alpha = w / (1 + w), so that its
    answer : route ratio (1 - alpha) : alpha is 1 : w, that of the weighted presets (answer
    weight 1, route weight w); w = 0, 0.25, 0.5, 1 give alpha = 0, 0.2, 1/3, 0.5."""
    format_weight(route_weight)  # a finite number >= 0, else ValueError
    w = float(route_weight)
    return w / (1.0 + w)


def own_route_weight(preset: str) -> float:
    """The `route` weight of a calibration preset (a sweep point equal to it is the plain
    preset run); for Router-R1's scalar presets the route weight its preset alpha stands for,
    alpha / (1 - alpha) (0 for router_r1, whose preset alpha is 0)."""
    if uses_router_r1_scalar(preset):
        alpha = CalibrationConfig.preset(preset).router_r1_alpha
        if alpha >= 1.0:
            raise ValueError(f"preset {preset!r}: router_r1_alpha = 1 puts no weight on the answer: no route weight")
        return alpha / (1.0 - alpha)
    return preset_weights(preset)[COMPONENTS.index("route")]
