"""Aggregate a results directory written by run_grid into RESULTS.md, plots and summary.json.

    python -m experiments.report --results_dir=experiments/results

Per suite: a table with one row per preset (and route weight): mean test accuracy over seeds,
its 95% t-interval, per-dataset accuracy, cost per query and the stability figures; then the
policy after SFT (mean over all the suite's runs: each run's `sft_policy`; with a shared SFT
job per seed that is the same start evaluated once per run) and the reference routers,
the trained classical ones (knn, linear, softmax at lambda = 0) among them.
A suite with a route-weight sweep also gets a matched-cost table (experiments/matched_cost.py):
each swept preset's and each classical router's accuracy at 50%, 70% and 100% of the best
single model's cost per query, and a plot of all their fronts.
Directories whose name starts with `_` (the grid's shared SFT jobs) are not read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import pandas as pd

from experiments import grid_stats, matched_cost, report_diagnostics, report_plots, tables
from experiments.grid_layout import (COMMAND, SUMMARY, is_helper_dir, own_route_weight, parse_run_name,
                                     sft_run_name)
from recal_jax.calibration import ALL_PRESET_NAMES
from recal_jax.evaluation.classical_routers import CLASSICAL_NAMES

PRESET_ORDER = ALL_PRESET_NAMES
REFERENCE_ORDER = ("random", "best_single", "oracle", "cheapest_correct", *CLASSICAL_NAMES)
SFT_LABEL = "after SFT (no RL)"
DASH = "—"
NOTES = "NOTES.md"  # hand-written reading of a suite's numbers, kept beside its runs


@dataclasses.dataclass
class RunResult:
    suite: str
    name: str
    preset: str
    route_weight: float | None
    seed: int
    summary: dict
    train_rows: list[dict]
    config: dict
    directory: pathlib.Path | None = None  # where the run was read from


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_runs(results_dir) -> dict[str, list[RunResult]]:
    """suite -> its finished runs (directories <suite>/<run name>/ holding summary.json)."""
    results_dir = pathlib.Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"results directory {str(results_dir)!r} does not exist")
    suites: dict[str, list[RunResult]] = {}
    for suite_dir in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        for run_dir in sorted(p for p in suite_dir.iterdir() if p.is_dir()):
            if is_helper_dir(run_dir.name) or not (run_dir / SUMMARY).is_file():
                continue  # '_'-directories (the shared SFT jobs) are no preset rows
            try:
                preset, rw, seed = parse_run_name(run_dir.name)
            except ValueError:
                continue
            summary = json.loads((run_dir / SUMMARY).read_text())
            if "policy" not in summary:
                continue
            config_path = run_dir / "config.json"
            config = json.loads(config_path.read_text()) if config_path.exists() else {}
            rows = [r for r in _read_jsonl(run_dir / "metrics.jsonl") if r.get("phase") == "train"]
            suites.setdefault(suite_dir.name, []).append(
                RunResult(suite_dir.name, run_dir.name, preset, rw, seed, summary, rows, config, run_dir))
    return suites


def _label(preset: str, rw: float | None) -> str:
    return preset if rw is None else f"{preset} rw={rw:g}"


def _sort_key(key: tuple[str, float | None]):
    preset, rw = key
    rank = PRESET_ORDER.index(preset) if preset in PRESET_ORDER else len(PRESET_ORDER)
    return (rank, preset, -1.0 if rw is None else rw)


def group_runs(runs: list[RunResult]) -> dict[tuple, list[RunResult]]:
    """(preset, route weight) -> its runs (the seeds of one table row), in table order."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in runs:
        groups.setdefault((r.preset, r.route_weight), []).append(r)
    return {key: sorted(groups[key], key=lambda r: r.seed) for key in sorted(groups, key=_sort_key)}


PER_DATASET = "per_dataset/"  # column prefix of a dataset's accuracy in the aggregation frames
STABILITY = ("reward_std_last_third", "grad_norm_spikes")


def _router_columns(result: dict, datasets: list[str]) -> dict:
    """A router result's numbers as flat columns: accuracy, cost_per_query, per_dataset/<d>."""
    per = result.get("per_dataset", {})
    return {"accuracy": result.get("accuracy"), "cost_per_query": result.get("cost_per_query"),
            **{PER_DATASET + d: per.get(d) for d in datasets}}


def _router_means(datasets: list[str]) -> dict:
    """Named aggregations: the finite mean of each router column."""
    columns = ["accuracy", "cost_per_query", *(PER_DATASET + d for d in datasets)]
    return {c: (c, grid_stats.finite_mean) for c in columns}


def _as_router(row, datasets: list[str]) -> dict:
    """{accuracy, per_dataset, cost_per_query} of an aggregated row."""
    return {"accuracy": grid_stats.finite_or_none(row["accuracy"]),
            "per_dataset": {d: grid_stats.finite_or_none(row[PER_DATASET + d]) for d in datasets},
            "cost_per_query": grid_stats.finite_or_none(row["cost_per_query"])}


def _mean_router(results: list[dict], datasets: list[str]) -> dict:
    """Mean over runs of {accuracy, per_dataset, cost_per_query} dicts."""
    return _as_router(pd.DataFrame([_router_columns(r, datasets) for r in results]).agg(grid_stats.finite_mean),
                      datasets)


def _preset_rows(runs: list[RunResult], datasets: list[str]) -> list[dict]:
    """One row per (preset, route weight), in table order: mean accuracy and its CI over the
    seeds, mean per-dataset accuracy, cost and stability figures."""
    groups = group_runs(runs)
    keys = {_label(*key): key for key in groups}
    frame = pd.DataFrame([
        {"label": _label(*key), "seed": r.seed, **_router_columns(r.summary["policy"], datasets),
         **{k: r.summary.get("stability", {}).get(k) for k in STABILITY},
         "collapsed": bool(r.summary.get("stability", {}).get("collapsed", False)),
         "grpo_steps": int(r.summary.get("grpo_steps", 0))}
        for key, members in groups.items() for r in members])
    agg = frame.groupby("label", sort=False).agg(
        seeds=("seed", lambda s: [int(x) for x in s]), n=("seed", "size"),
        ci95_half=("accuracy", lambda s: grid_stats.mean_ci95(s)[1]),
        collapsed=("collapsed", "sum"), grpo_steps=("grpo_steps", lambda s: sorted({int(x) for x in s})),
        **{k: (k, grid_stats.finite_mean) for k in STABILITY}, **_router_means(datasets))
    rows = []
    for label, row in zip(agg.index, agg.to_dict("records")):
        preset, rw = keys[label]
        # every accuracy is finite (mean_ci95 checks), so their finite mean is mean_ci95's mean
        mean, half = row["accuracy"], grid_stats.finite_or_none(row["ci95_half"])
        rows.append({
            "label": label, "preset": preset, "route_weight": rw,
            "route_weight_used": own_route_weight(preset) if rw is None else rw,
            "seeds": row["seeds"], "n": int(row["n"]), "accuracy": mean, "ci95_half": half,
            "ci95": None if half is None else [mean - half, mean + half],
            **{k: v for k, v in _as_router(row, datasets).items() if k != "accuracy"},
            **{k: grid_stats.finite_or_none(row[k]) for k in STABILITY},
            "collapsed": int(row["collapsed"]), "grpo_steps": row["grpo_steps"],
        })
    return rows


def _sft_steps(run: RunResult) -> int:
    """SFT steps behind a run: its own, or those of the shared warm start it was loaded from
    (a run started from `<suite>/_sft-s<seed>/export` has sft.steps 0 of its own). The start is
    read where the run's config points, else beside the run (a results directory that was
    moved, or made under another root, keeps its `_sft-s<seed>` next to the runs)."""
    own = int(run.config["sft"]["steps"])
    start = str(run.config.get("model", {}).get("pretrained_path", ""))
    if own == 0 and start:
        candidates = [pathlib.Path(start).parent / "config.json"]
        if run.directory is not None:
            candidates.append(run.directory.parent / sft_run_name(run.seed) / "config.json")
        for config in candidates:
            if config.exists():
                return int(json.loads(config.read_text())["sft"]["steps"])
    return own


def aggregate_suite(runs: list[RunResult]) -> dict[str, Any]:
    """The numbers of one suite's section (JSON-ready)."""
    if not runs:
        raise ValueError("aggregate_suite needs at least one finished run")
    datasets = sorted({d for r in runs for d in r.summary["policy"].get("per_dataset", {})})
    rows = _preset_rows(runs, datasets)
    sft_runs = [r.summary["sft_policy"] for r in runs if "sft_policy" in r.summary]
    sft = {**_mean_router(sft_runs, datasets), "n": len(sft_runs)} if sft_runs else None
    sft_steps = sorted({_sft_steps(r) for r in runs if "sft" in r.config})
    return {
        "datasets": datasets, "rows": rows, "sft": sft, "references": _references(runs, datasets),
        "classical_fronts": classical_fronts(runs), "num_runs": len(runs), "seeds": sorted({r.seed for r in runs}),
        "grpo_steps": sorted({s for row in rows for s in row["grpo_steps"]}), "sft_steps": sft_steps,
    }


def _reference_rank(key: str) -> tuple:
    return (REFERENCE_ORDER.index(key) if key in REFERENCE_ORDER else len(REFERENCE_ORDER), key)


def _references(runs: list[RunResult], datasets: list[str]) -> dict[str, dict]:
    """label -> the mean over runs of each reference router (REFERENCE_ORDER first). The label
    is the router's name when every run agrees on it (e.g. "best_single (large-pro)"), else its key."""
    frame = pd.DataFrame([{"key": k, "name": res.get("name", k), **_router_columns(res, datasets)}
                          for r in runs for k, res in r.summary.get("references", {}).items()])
    if frame.empty:
        return {}
    agg = frame.groupby("key").agg(names=("name", lambda s: set(s)), **_router_means(datasets))
    references = {}
    for key in sorted(agg.index, key=_reference_rank):
        row = agg.loc[key]
        label = next(iter(row["names"])) if len(row["names"]) == 1 else key
        references[label] = {"key": key, **_as_router(row, datasets)}
    return references


def _one_run_per_seed(runs: list[RunResult]) -> dict[int, RunResult]:
    """The first run (by name) of each seed: the reference routers of a seed are the same in
    all its runs (same log, same seed)."""
    out: dict[int, RunResult] = {}
    for r in sorted(runs, key=lambda r: r.name):
        out.setdefault(r.seed, r)
    return out


def _classical_sweeps(runs: list[RunResult]) -> dict[str, dict[int, list]]:
    """classical router key -> seed -> its lambda sweep [(lambda, cost per query, accuracy), ...]."""
    out: dict[str, dict[int, list]] = {}
    for seed, run in _one_run_per_seed(runs).items():
        for key in CLASSICAL_NAMES:
            sweep = run.summary.get("references", {}).get(key, {}).get("lambda_sweep") or []
            if sweep:
                out.setdefault(key, {})[seed] = sweep
    return out


def classical_points(runs: list[RunResult]) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """classical router key -> seed -> its lambda sweep as (cost per query, accuracy) points."""
    return {key: {seed: [(float(c), float(a)) for _, c, a in sweep] for seed, sweep in by_seed.items()}
            for key, by_seed in _classical_sweeps(runs).items()}


def classical_fronts(runs: list[RunResult]) -> dict[str, list[list[float]]]:
    """classical router key -> [lambda, cost, accuracy] per lambda, means over the seeds."""
    frame = pd.DataFrame([{"key": key, "lambda": float(lam), "cost": float(cost), "accuracy": float(acc)}
                          for key, by_seed in _classical_sweeps(runs).items()
                          for sweep in by_seed.values() for lam, cost, acc in sweep],
                          columns=["key", "lambda", "cost", "accuracy"])
    means = frame.groupby(["key", "lambda"]).agg(cost=("cost", grid_stats.finite_mean),
                                                 accuracy=("accuracy", grid_stats.finite_mean))
    present = set(means.index.get_level_values("key"))
    return {key: [[float(lam), float(row.cost), float(row.accuracy)] for lam, row in means.loc[key].iterrows()]
            for key in CLASSICAL_NAMES if key in present}


def sweep_points(runs: list[RunResult]) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """swept preset -> seed -> (cost per query, accuracy) of its runs of that seed over the route
    weight (the plain run included: it is the point at the preset's own route weight)."""
    swept = {r.preset for r in runs if r.route_weight is not None}
    out: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for r in runs:
        if r.preset in swept:
            policy = r.summary["policy"]
            out.setdefault(r.preset, {}).setdefault(r.seed, []).append(
                (float(policy["cost_per_query"]), float(policy["accuracy"])))
    return {p: out[p] for p in sorted(out, key=lambda p: _sort_key((p, None)))}


def matched_cost_numbers(runs: list[RunResult], agg: dict[str, Any]) -> dict[str, Any] | None:
    """The matched-cost table's numbers: None without a sweep or a best single model's cost."""
    presets = sweep_points(runs)
    best = next((ref for ref in agg["references"].values() if ref["key"] == "best_single"), None)
    if not presets or best is None or not best["cost_per_query"]:
        return None
    costs = matched_cost.level_costs(best["cost_per_query"])
    routers = {**presets, **classical_points(runs)}
    return {"levels": list(matched_cost.LEVELS), "level_costs": costs, "best_single": best["cost_per_query"],
            "rows": [{"label": label, "kind": "preset" if label in presets else "classical",
                      "cells": matched_cost.matched_cost_row(points, costs)} for label, points in routers.items()],
            "points": routers}


def matched_cost_table(numbers: dict[str, Any]) -> str:
    head = ["router"] + [f"acc @ {f:.0%} cost ({c:.3g} USD)" for f, c in zip(numbers["levels"], numbers["level_costs"])]
    return tables.markdown([[row["label"]] + [_matched_cell(cell) for cell in row["cells"]] for row in numbers["rows"]],
                           head)


def _matched_cell(cell: dict) -> str:
    if cell["mean"] is None:
        return DASH
    half = "" if cell["ci95_half"] is None else f" ± {cell['ci95_half']:.3f}"
    return f"{cell['mean']:.3f}{half} (n={cell['n']})"


def _f(value, fmt: str = ".3f") -> str:
    return DASH if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def markdown_table(agg: dict[str, Any]) -> str:
    """The suite's table: presets, then the SFT-only policy, then the reference routers."""
    datasets = agg["datasets"]
    head = (["router", "accuracy", "95% CI"] + datasets
            + ["cost/query (USD)", "reward std (last 1/3)", "grad-norm spikes", "collapsed", "seeds"])
    lines = []

    def line(label, acc, ci, per, cost, tail):
        lines.append([label, _f(acc), ci] + [_f(per.get(d)) for d in datasets] + [_f(cost, ".3g")] + tail)

    for row in agg["rows"]:
        ci = "n/a" if row["ci95"] is None else f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"
        line(row["label"], row["accuracy"], ci, row["per_dataset"], row["cost_per_query"],
             [_f(row["reward_std_last_third"]), _f(row["grad_norm_spikes"], ".1f"),
              f"{row['collapsed']}/{row['n']}", str(row["n"])])
    if agg["sft"] is not None:
        s = agg["sft"]
        line(SFT_LABEL, s["accuracy"], DASH, s["per_dataset"], s["cost_per_query"], [DASH] * 3 + [str(s["n"])])
    for label, ref in agg["references"].items():
        line(label, ref["accuracy"], DASH, ref["per_dataset"], ref["cost_per_query"], [DASH] * 4)
    return tables.markdown(lines, head)


def _commands(suite_dir: pathlib.Path) -> list[str]:
    path = suite_dir / COMMAND
    return [c for c in path.read_text().splitlines() if c.strip()] if path.exists() else []


def _curves(runs: list[RunResult]) -> dict[str, tuple[list[int], list[float]]]:
    """Training curves of the plain preset rows (the route-weight sweep has its own plot)."""
    curves = {}
    for key, members in group_runs(runs).items():
        if key[1] is not None:
            continue
        per_run = [{row["step"]: row["reward/answer"] for row in r.train_rows
                    if row.get("reward/answer") is not None} for r in members]
        steps, values = grid_stats.mean_curve(per_run)
        if steps:
            curves[_label(*key)] = (steps, values)
    return curves


def _suite_plots(suite: str, runs: list[RunResult], agg: dict[str, Any], results_dir: pathlib.Path) -> dict[str, str]:
    """Draws the suite's plots into results_dir; returns plot name -> file name."""
    plots = {"accuracy_vs_cost": f"{suite}-accuracy_vs_cost.png"}
    fronts = agg["classical_fronts"]
    plain_rows = [row for row in agg["rows"] if row["route_weight"] is None]  # sweep rows: the pareto plot
    report_plots.accuracy_vs_cost(plain_rows, agg["references"], results_dir / plots["accuracy_vs_cost"], suite,
                                  fronts=fronts)
    if any(row["route_weight"] is not None for row in agg["rows"]):
        plots["pareto"] = f"{suite}-pareto_route_weight.png"
        report_plots.pareto_fronts(agg["rows"], agg["references"], results_dir / plots["pareto"], suite, fronts=fronts)
    if agg.get("matched_cost"):
        mc = agg["matched_cost"]
        plots["matched_cost"] = f"{suite}-matched_cost_fronts.png"
        report_plots.matched_cost_fronts(mc["points"], mc["level_costs"], agg["references"],
                                         results_dir / plots["matched_cost"], suite, dashed=CLASSICAL_NAMES)
    curves = _curves(runs)
    if curves:
        plots["training_curves"] = f"{suite}-training_curves.png"
        report_plots.training_curves(curves, results_dir / plots["training_curves"], suite)
    return plots


def _matched_cost_text(agg: dict[str, Any]) -> list[str]:
    mc = agg.get("matched_cost")
    if not mc:
        return []
    return ["", "### Accuracy at matched cost", "",
            f"Accuracy of each router's accuracy-cost front at 50%, 70% and 100% of the best single model's "
            f"cost per query ({mc['best_single']:.3g} USD): presets over their route-weight sweep, classical "
            "routers over their lambda sweep; one front per seed (the non-decreasing upper convex hull of its "
            "points: what routing between them at random reaches), mean and 95% t-interval over the seeds "
            "whose front reaches that cost (n). — : no front reaches it. Definition: `experiments/matched_cost.py`.",
            "", matched_cost_table(mc)]


def suite_section(suite: str, runs: list[RunResult], results_dir: pathlib.Path) -> tuple[str, dict]:
    agg = aggregate_suite(runs)
    commands = _commands(results_dir / suite)
    agg["commands"] = commands
    agg["matched_cost"] = matched_cost_numbers(runs, agg)
    agg["plots"] = plots = _suite_plots(suite, runs, agg, results_dir)
    steps = ", ".join(map(str, agg["grpo_steps"])) or DASH
    sft_steps = ", ".join(map(str, agg["sft_steps"])) or DASH
    out = [f"## {suite}", "",
           f"{agg['num_runs']} finished runs; seeds {', '.join(map(str, agg['seeds']))} "
           f"(the `seeds` column gives each row's count); GRPO steps {steps}; SFT steps {sft_steps}. "
           "Accuracy is on the test split; the CI is the 95% Student-t interval of the mean over seeds.", "",
           "Runs produced by:", ""]
    out += [f"    {c}" for c in commands] if commands else ["    (no command.txt in this suite directory)"]
    out += ["", markdown_table(agg), ""]
    out += [f"![{name}]({file})" for name, file in plots.items()]
    out += _matched_cost_text(agg)
    agg["diagnostics"] = report_diagnostics.aggregate_diagnostics(group_runs(runs), _label)
    out += ["", "### Paired differences and calibration diagnostics (spec section 5)", "",
            "Means over seeds; Δ columns pair runs of the same seed (same SFT start) and give the "
            "95% t-interval half-width. Column definitions: `experiments/report_diagnostics.py`.", "",
            report_diagnostics.diagnostics_table(agg["diagnostics"])]
    notes = results_dir / suite / NOTES
    if notes.is_file():
        out += ["", "### Reading", "", notes.read_text().strip()]
    return "\n".join(out) + "\n", agg


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(results_dir) -> pathlib.Path:
    """Writes RESULTS.md, summary.json and the plots into results_dir; returns RESULTS.md's path."""
    results_dir = pathlib.Path(results_dir)
    suites = load_runs(results_dir)
    sections, numbers = [], {}
    for suite, runs in suites.items():
        text, agg = suite_section(suite, runs, results_dir)
        sections.append(text)
        numbers[suite] = agg
    body = "# Results\n\n" + ("\n".join(sections) if sections else "No finished runs yet.\n")
    (results_dir / "summary.json").write_text(json.dumps(_jsonable(numbers), indent=2, sort_keys=True))
    path = results_dir / "RESULTS.md"
    path.write_text(body)
    return path


def main(argv):
    del argv
    print(f"wrote {write_report(_RESULTS_DIR.value)}")


if __name__ == "__main__":
    from absl import app, flags

    _RESULTS_DIR = flags.DEFINE_string("results_dir", "experiments/results", "Root written by run_grid.py.")
    app.run(main)
