"""Run a grid of training runs (suites x presets x [route weights] x seeds), resumably.

    python -m experiments.run_grid --grid=experiments/grid_configs/synthetic.py \
        [--grid.seeds=0,1] [--grid.overrides.grpo.steps=30] \
        [--results_dir=experiments/results] [--dry_run] [--only=substring]

(from the repository root). Each run goes to `<results_dir>/<suite>/<preset>[-rw<w>]-s<seed>/`
and runs in its own subprocess (`python -m experiments.grid_worker`), so a crash or a memory
blow-up ends that run only;
the grid logs it and goes on. A run whose summary.json exists is skipped; a run with a
checkpoint resumes from it. The command line is appended to `<results_dir>/<suite>/command.txt`.
A grid with `grid.tag` (e.g. longer training of presets that the main grid also runs) puts its
runs and its SFT jobs in `<results_dir>/<suite>-<tag>/` instead, so names never collide.

With `grid.share_sft` (default True) the SFT warm start, which does not depend on the
calibration preset, runs once per (suite, seed) as the job `<suite>/_sft-s<seed>` (the base
config with grpo.steps=0, eval.after_sft=False; skipped when its export/config.json exists),
before the suite's preset runs; every preset run of that (suite, seed) then starts from its
export (model.pretrained_path=<that>/export, sft.steps=0) and still evaluates that start
(summary `sft_policy`). A preset run whose SFT job has no export is not started (failed).

Before any run starts, every planned run's config goes through the launcher's parser
(recal_jax.training.run_config.parse_config): a bad grid flag, override or config is one line,
`error: [<run key>: ]...`, and exit status 2. Each worker runs in its own process group and
holds its run directory's RunLock: SIGTERM or SIGINT to the grid stops the worker's group and
exits with 128 + the signal; a directory still locked by a worker of an earlier grid is left
alone (that job fails). A run is finished when its summary.json exists (written last).

A route-weight sweep (`grid.route_weights`) sets the `route` entry of calibration.weights; for
router_r1, whose scalar reward ignores the component weights, it sets its cost weight instead:
calibration.router_r1_alpha = w / (1 + w) (grid_layout.router_r1_alpha), the same answer : route
ratio 1 : w as the weighted presets' (answer weight 1, route weight w).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Mapping

import ml_collections

from experiments.grid_layout import (COMMAND, SUMMARY, export_path, has_checkpoint, is_done, is_exported,
                                     own_route_weight, preset_weights, router_r1_alpha, run_name, sft_run_name,
                                     uses_router_r1_scalar)
from recal_jax.calibration.config import ALL_PRESET_NAMES
from recal_jax.evaluation.run_dir import RunLock, config_differences, lock_holder

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = "experiments.grid_worker"  # run as `python -m experiments.grid_worker` from ROOT
RUN_CONFIG = "grid_run_config.json"
RUN_LOG = "grid_log.txt"
USAGE_ERROR = 2  # exit status of a bad grid flag or config, before any run starts


class GridConfigError(ValueError):
    """A grid that cannot be run as configured (bad flags, overrides, or a run's config the
    launcher's parser refuses); raised before any run starts."""


class GridInterrupted(BaseException):
    """SIGTERM or SIGINT reached the grid (a BaseException: a run's failure handler must not
    swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclasses.dataclass(frozen=True)
class GridRun:
    suite: str
    preset: str
    seed: int
    route_weight: float | None = None
    sft_only: bool = False  # the shared SFT warm start of (suite, seed): no preset, no GRPO
    tag: str = ""  # grid.tag: the runs live in '<suite>-<tag>/', apart from the suite's main grid

    @property
    def name(self) -> str:
        return sft_run_name(self.seed) if self.sft_only else run_name(self.preset, self.seed, self.route_weight)

    @property
    def directory(self) -> str:
        """The run's directory under the results root: the suite, or '<suite>-<tag>'."""
        return f"{self.suite}-{self.tag}" if self.tag else self.suite

    @property
    def key(self) -> str:
        return f"{self.directory}/{self.name}"

    def path(self, results_dir) -> pathlib.Path:
        return pathlib.Path(results_dir) / self.directory / self.name

    def is_finished(self, results_dir) -> bool:
        path = self.path(results_dir)
        return is_exported(path) if self.sft_only else is_done(path)


def sft_job(suite: str, seed: int, tag: str = "") -> GridRun:
    """The shared SFT job of (suite, seed) in the grid of `tag`."""
    return GridRun(str(suite), "", int(seed), None, sft_only=True, tag=tag)


def grid_tag(grid) -> str:
    """grid.tag (default ''): a grid whose runs would share names with another grid's (the same
    presets and seeds under other sizes) sets a tag, and its runs and SFT jobs live in
    '<suite>-<tag>/'; RESULTS.md gives that directory its own section."""
    tag = grid.get("tag", "")
    if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z0-9_]*", tag):
        raise ValueError(f"grid.tag must be letters, digits and underscores (or empty), got {tag!r}")
    return tag


def share_sft(grid) -> bool:
    """grid.share_sft (default True): one SFT job per (suite, seed), shared by every preset run."""
    value = grid.get("share_sft", True)
    if not isinstance(value, bool):
        raise ValueError(f"grid.share_sft must be a bool, got {value!r}")
    return value


def _tuple(value, what: str) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        value = (value,)
    out = tuple(value)
    if not out:
        raise ValueError(f"grid.{what} is empty")
    return out


def expand_grid(grid) -> list[GridRun]:
    """All preset runs of a grid config, in order suite -> preset -> route weight -> seed
    (the shared SFT jobs are not among them: see `plan_jobs`)."""
    suites = _tuple(grid.suites, "suites")
    presets = _tuple(grid.presets, "presets")
    seeds = _tuple(grid.seeds, "seeds")
    unknown = [p for p in presets if p not in ALL_PRESET_NAMES]
    if unknown:
        raise ValueError(f"grid.presets has unknown preset(s) {unknown}; known: {list(ALL_PRESET_NAMES)}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"grid.seeds must be ints >= 0, got {s!r}")
    weights: tuple = tuple(grid.get("route_weights", ()) or ()) or (None,)
    for w in weights:
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float))
                              or not math.isfinite(w) or w < 0):
            raise ValueError(f"grid.route_weights must be finite numbers >= 0, got {w!r}")
    tag = grid_tag(grid)
    runs = [GridRun(str(suite), str(preset), int(seed), sweep_weight(str(preset), w), tag=tag)
            for suite in suites for preset in presets for w in weights for seed in seeds]
    return list(dict.fromkeys(runs))


def sweep_weight(preset: str, weight: float | None) -> float | None:
    """The route weight a sweep run records: None when `weight` is the preset's own route
    weight, since that run is the plain preset run (shared with the suite's main grid)."""
    if weight is None:
        return None
    return None if float(weight) == own_route_weight(preset) else float(weight)


def plan_jobs(grid, results_dir, only: str = "") -> list[GridRun]:
    """The jobs run_grid runs (or lists), in order: per suite, its SFT jobs (by seed) when
    share_sft, then its preset runs whose 'suite/name' contains `only`. An SFT job is planned
    when a planned preset run of its (suite, seed) is unfinished, or when `only` selects no
    preset run but names the SFT job (e.g. --only=_sft: the warm starts alone)."""
    runs = [r for r in expand_grid(grid) if only in r.key]
    if not share_sft(grid):
        return runs
    needed = {(r.suite, r.seed) for r in runs if not r.is_finished(results_dir)}
    jobs, tag = [], grid_tag(grid)
    for suite in dict.fromkeys(str(s) for s in _tuple(grid.suites, "suites")):
        for seed in dict.fromkeys(int(s) for s in _tuple(grid.seeds, "seeds")):
            job = sft_job(suite, seed, tag)
            if (suite, seed) in needed or (not runs and only in job.key):
                jobs.append(job)
        jobs += [r for r in runs if r.suite == suite]
    return jobs


def load_config_file(path) -> ml_collections.ConfigDict:
    """`get_config()` of a config file; a relative path is taken from the repository root."""
    p = pathlib.Path(path)
    if not p.is_absolute() and not p.exists():
        p = ROOT / p
    if not p.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"_grid_base_{abs(hash(str(p)))}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def flatten_overrides(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'grpo': {'steps': 2}, 'eval.every': 0} -> {'grpo.steps': 2, 'eval.every': 0}."""
    flat: dict[str, Any] = {}
    items = overrides.items() if isinstance(overrides, Mapping) else overrides.to_dict().items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            flat.update(flatten_overrides(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def missing_key(config: ml_collections.ConfigDict, dotted: str) -> str | None:
    """What `config` lacks of the dotted key ('no section X' / 'no field X'), or None."""
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            return f"the config has no section {part!r}"
        node = node[part]
    return None if leaf in node else f"the config has no field {leaf!r}"


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Sets dotted keys on `config` in place with ConfigDict.update_from_flattened_dict, on the
    locked config so that a key it lacks is refused (unlocked, ml_collections adds it); every
    error is a ValueError naming the key."""
    was_locked = config.is_locked
    config.lock()
    try:
        for dotted, value in flatten_overrides(overrides).items():
            try:
                config.update_from_flattened_dict({dotted: value})
            except (KeyError, AttributeError) as err:
                why = missing_key(config, dotted) or " ".join(str(err).split())
                raise ValueError(f"config override {dotted!r}: {why}") from None
            except TypeError as err:
                raise ValueError(f"config override {dotted}={value!r}: {err}") from None
    finally:
        if not was_locked:
            config.unlock()


def route_weight_override(preset: str, weight: float) -> tuple[float, ...]:
    """calibration.weights: the preset's weights with `route` set to `weight`."""
    return tuple(preset_weights(preset, weight))


def build_run_config(grid, run: GridRun, results_dir=None) -> ml_collections.ConfigDict:
    """The resolved config of one job. With share_sft, `results_dir` is required: a preset run
    starts from the export of `<results_dir>/<suite>/_sft-s<seed>/` (absolute path)."""
    config = load_config_file(grid.base_config)
    apply_overrides(config, grid.get("overrides", None) or {})
    config.suite = run.suite
    config.seed = run.seed
    if results_dir is not None and "reference_cache_dir" in config.eval:
        config.eval.reference_cache_dir = str(cache_dir(results_dir) / "classical")
    if run.sft_only:
        apply_overrides(config, {"grpo.steps": 0, "eval.after_sft": False})
        return config
    if share_sft(grid):
        if results_dir is None:
            raise ValueError("build_run_config: grid.share_sft needs results_dir (where the SFT jobs live)")
        start = export_path(sft_job(run.suite, run.seed, run.tag).path(pathlib.Path(results_dir).resolve()))
        apply_overrides(config, {"model.pretrained_path": str(start), "sft.steps": 0})
    config.calibration.preset = run.preset
    if run.route_weight is not None:
        config.calibration.weights = route_weight_override(run.preset, run.route_weight)
        if uses_router_r1_scalar(run.preset):  # its scalar reward ignores the weights: alpha is its cost weight
            config.calibration.router_r1_alpha = router_r1_alpha(run.route_weight)
    return config


# Config keys that change where a run keeps caches, not what it computes.
NOT_RESULT_KEYS = ("eval.reference_cache_dir",)


def cache_dir(results_dir) -> pathlib.Path:
    """`<results_dir>/.cache`: what the runs of a grid share (fitted classical routers, JAX's
    persistent compilation cache: every run of a suite compiles the same shapes)."""
    return pathlib.Path(results_dir).resolve() / ".cache"


def check_sft_record(config: ml_collections.ConfigDict, path: pathlib.Path) -> None:
    """An SFT job directory is shared by grids (dcrouter and dcrouter_cost): refuse to reuse one
    whose recorded config differs from `config` (the calibration section is ignored: SFT does
    not read it). Raises ValueError naming the differing keys."""
    recorded_path = path / RUN_CONFIG
    if not recorded_path.is_file():
        return
    from recal_jax.training.run_config import default_dict

    recorded = json.loads(recorded_path.read_text())
    current = json.loads(config.to_json())
    # a field added to the code since that job, at its default (what the code did before), does not differ
    diff = [k for k in config_differences(recorded, current, ("calibration",), defaults=default_dict())
            if k not in NOT_RESULT_KEYS]
    recorded, current = flatten_overrides(recorded), flatten_overrides(current)
    if diff:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} there, {current.get(k)!r} now" for k in diff[:5])
        raise ValueError(f"shared SFT job {path} was made with another config ({shown}); "
                         "delete that directory or use another --results_dir")


def worker_env(workdir: pathlib.Path) -> dict[str, str]:
    """The environment of a run's worker process: this one, with the repository on PYTHONPATH
    and the grid's JAX compilation cache (unless the caller chose one)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    # workdir is <results_dir>/<suite>/<run>. Every compile is cached: a run makes ~70 small
    # ones (well under JAX's default 1 s threshold), the same in each run.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir(workdir.parents[1]) / "jax"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return env


def subprocess_runner(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> int:
    """Runs one training run in a fresh Python process; its output goes to workdir/grid_log.txt.
    The worker leads its own process group (a terminal's Ctrl-C reaches the grid only). When
    the wait is interrupted (GridInterrupted, KeyboardInterrupt), subprocess.run kills the
    worker and kill_worker_group what it may have started, before the exception goes on: no
    process outlives the grid to race a restarted grid's worker."""
    cfg_path = workdir / RUN_CONFIG
    cfg_path.write_text(config.to_json(indent=2, sort_keys=True))
    cmd = [sys.executable, "-m", WORKER, "--run_config", str(cfg_path), "--workdir", str(workdir)]
    try:
        with (workdir / RUN_LOG).open("a") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=worker_env(workdir),
                                  start_new_session=True, check=False)
    except BaseException:
        kill_worker_group(workdir)
        raise
    return proc.returncode


def kill_worker_group(workdir: pathlib.Path) -> None:
    """SIGKILL to the process group of the worker of `workdir`. The worker takes the run
    directory's lock first thing and leads its own group, so the lock file names the group;
    before that the file names this process (which took the lock to prepare the directory),
    and the worker has started nothing yet."""
    pid = lock_holder(workdir)
    if pid is not None and pid != os.getpid():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _record_command(suite_dir: pathlib.Path, command: str) -> None:
    path = suite_dir / COMMAND
    lines = path.read_text().splitlines() if path.exists() else []
    if command not in lines:
        with path.open("a") as f:
            f.write(command + "\n")


def run_status(run: GridRun, results_dir) -> str:
    if run.is_finished(results_dir):
        return "done"
    return "resume" if has_checkpoint(run.path(results_dir)) else "todo"


def _prepare(grid, results_dir: pathlib.Path, only: str) -> tuple[list[GridRun], dict]:
    """The planned jobs and their configs; bad grid values and overrides, configs the
    launcher's parser refuses and mismatched shared SFT jobs fail here (GridConfigError),
    before any run."""
    try:
        runs = plan_jobs(grid, results_dir, only)
        configs = {r: build_run_config(grid, r, results_dir) for r in runs}
        for r in runs:
            if r.sft_only:
                check_sft_record(configs[r], r.path(results_dir))
    except ValueError as e:
        raise GridConfigError(str(e)) from None
    _parse_configs(runs, configs, results_dir, share_sft(grid))
    return runs, configs


def _parse_configs(runs: list[GridRun], configs: dict, results_dir: pathlib.Path, shared: bool) -> None:
    """Every planned run's config through the launcher's parser (as its worker will parse it),
    without claiming devices; paths are not checked for a preset run whose shared SFT start is
    not exported yet (its SFT job, planned too, checks the data paths)."""
    from recal_jax.training.run_config import ConfigError, parse_config

    for r in runs:
        waits = shared and not r.sft_only and not sft_job(r.suite, r.seed, r.tag).is_finished(results_dir)
        try:
            parse_config(configs[r], check_paths=not waits, check_devices=False)
        except ConfigError as e:
            raise GridConfigError(f"{r.key}: {e}") from None


def _not_run(run: GridRun, results_dir: pathlib.Path, head: str, shared: bool, echo) -> dict | None:
    """The record of a job that is not run (already finished, or its SFT start is missing);
    None when it is to run."""
    path = run.path(results_dir)
    if run.is_finished(results_dir):
        echo(f"{head}: skipped ({'export/config.json' if run.sft_only else SUMMARY} exists)")
        return {"run": run.key, "path": str(path), "status": "done"}
    start = sft_job(run.suite, run.seed, run.tag)
    if shared and not run.sft_only and not start.is_finished(results_dir):
        echo(f"{head}: FAILED, not started (its SFT job {start.key} has no export)")
        return {"run": run.key, "path": str(path), "status": "failed", "seconds": 0.0}
    return None


def _execute(run: GridRun, config, path: pathlib.Path, command: str, runner) -> tuple[int, str, float]:
    """Prepares the run directory and runs the job: (exit code, error text, seconds). A
    directory whose RunLock another process holds (a worker that outlived an earlier grid)
    is left untouched, and the job fails."""
    path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with RunLock(path):  # released before the worker starts: the worker takes it itself
            if command:
                _record_command(path.parent, command)
            if not has_checkpoint(path) and (path / "metrics.jsonl").exists():
                (path / "metrics.jsonl").unlink()  # a restart from scratch must not append to a dead run's rows
        rc, err = runner(config, path), ""
    except Exception as e:  # noqa: BLE001 - one failed run must not end the grid
        rc, err = -1, f"{type(e).__name__}: {e}"
    return rc, err, time.perf_counter() - t0


def _outcome(run: GridRun, path: pathlib.Path, rc: int, err: str, wall: float, head: str, echo) -> str:
    """The status of a job that ran (finished, stopped or failed), echoed with its reason."""
    if rc == 0 and run.sft_only and is_exported(path):
        echo(f"{head}: finished in {wall:.0f} s, exported to {export_path(path)}")
        return "finished"
    if rc == 0 and run.sft_only:
        echo(f"{head}: FAILED after {wall:.0f} s (exited without export/, log: {path / RUN_LOG})")
        return "failed"
    if rc == 0 and is_done(path):
        acc = json.loads((path / SUMMARY).read_text()).get("policy", {}).get("accuracy")
        acc_text = f", test accuracy {acc:.3f}" if isinstance(acc, (int, float)) else ""
        echo(f"{head}: finished in {wall:.0f} s{acc_text}")
        return "finished"
    if rc == 0:
        echo(f"{head}: stopped after {wall:.0f} s without a summary (resumes on the next call)")
        return "stopped"
    reason = err or f"exit code {rc}, log: {path / RUN_LOG}"
    echo(f"{head}: FAILED after {wall:.0f} s ({reason})")
    return "failed"


def run_grid(grid, results_dir, *, only: str = "", dry_run: bool = False, command: str = "",
             runner: Callable[[ml_collections.ConfigDict, pathlib.Path], int] = subprocess_runner,
             echo: Callable[[str], None] = print) -> list[dict]:
    """Runs (or, with dry_run, lists) the jobs of `plan_jobs(grid, results_dir, only)`.

    Returns one record per job: {"run", "path", "status"} with status one of
    done (already there), finished, stopped (no summary yet, e.g. grpo.stop_at_step), failed,
    and for a dry run: done / resume / todo."""
    results_dir = pathlib.Path(results_dir)
    runs, configs = _prepare(grid, results_dir, only)
    shared = share_sft(grid)
    out = []
    for i, run in enumerate(runs, 1):
        path = run.path(results_dir)
        head = f"[{i}/{len(runs)}] {run.key}" + (" (shared SFT warm start)" if run.sft_only else "")
        if dry_run:
            status = run_status(run, results_dir)
            echo(f"{head}: {status}")
            out.append({"run": run.key, "path": str(path), "status": status})
            continue
        record = _not_run(run, results_dir, head, shared, echo)
        if record is None:
            rc, err, wall = _execute(run, configs[run], path, command, runner)
            status = _outcome(run, path, rc, err, wall, head, echo)
            record = {"run": run.key, "path": str(path), "status": status, "seconds": wall}
        out.append(record)
    if not dry_run:
        counts = {s: sum(r["status"] == s for r in out) for s in ("finished", "done", "stopped", "failed")}
        echo("grid: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return out


def _on_signal(signum, frame) -> None:
    del frame
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the clean-up short
        signal.signal(sig, signal.SIG_IGN)
    raise GridInterrupted(signum)


def flag_error_line(argv: list[str], err: Exception) -> str:
    """One line for a command line that absl or config_flags refused. config_flags reports a
    --grid.KEY=V whose KEY the grid file lacks without the flag: find and name it."""
    grid_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--grid=")), None)
    if isinstance(err, (AttributeError, KeyError)) and grid_file:
        try:
            grid = load_config_file(grid_file)
        except Exception:  # noqa: BLE001 - only a better message is at stake
            return " ".join(str(err).split())
        for arg in argv:
            why = missing_key(grid, arg[len("--grid."):].split("=", 1)[0]) if arg.startswith("--grid.") else None
            if why:
                return f"{arg}: {why.replace('the config', 'the grid config')}"
    return " ".join(str(err).split())


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def main(argv):
    del argv
    command = shlex.join(["python", "-m", "experiments.run_grid", *sys.argv[1:]])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    grid = _GRID.value
    if not isinstance(grid, ml_collections.ConfigDict):  # config_flags' stand-in for a file it could not load
        try:
            _ = grid.suites  # raises the load error
        except OSError as e:
            _fail(f"--grid: cannot load the grid config file: {str(e).strip().splitlines()[-1].strip()}")
    try:
        records = run_grid(grid, _RESULTS_DIR.value, only=_ONLY.value, dry_run=_DRY_RUN.value, command=command)
    except GridConfigError as e:
        _fail(" ".join(str(e).split()))
    except GridInterrupted as e:
        print(f"grid: stopped by {signal.Signals(e.signum).name}; the running worker was stopped "
              "(its run resumes on the next call)", file=sys.stderr)
        sys.exit(128 + e.signum)
    if any(r["status"] == "failed" for r in records):
        sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, OSError, SyntaxError, TypeError, ValueError) as e:
        _fail(flag_error_line(argv, e))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _GRID = config_flags.DEFINE_config_file("grid", None, "Grid config file (experiments/grid_configs/*.py).")
    _RESULTS_DIR = flags.DEFINE_string("results_dir", "experiments/results", "Root of the run directories.")
    _DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the runs and their status; run nothing.")
    _ONLY = flags.DEFINE_string("only", "", "Run only the runs whose '<suite>/<run name>' contains this.")
    flags.mark_flags_as_required(["grid"])
    app.run(main, flags_parser=_parse_flags)
