"""Per-seed table of main-job runs (one `python -m launch.main --workdir=DIR/seed-S` per seed):

    python -m experiments.seed_table --runs_dir=experiments/results/quickstart

Writes DIR/TABLE.md (and prints it): per seed, the trained router's test accuracy, its SFT
start, the best single model (chosen on train, reported on test), the random router, the
oracle, format-valid rate, cost per query and wall time; then the mean and the minimum over
seeds, and per seed the checks of the quickstart's promise (at or above the best single
model, +0.02 over its own SFT start, format-valid >= 0.95) and of the multi-turn goal (above
the random router).

    python -m experiments.seed_table --runs_dir=experiments/results/compose --goals=compose

tabulates runs of launch/configs/compose.py against the compositional world's goals instead:
on the multi-hop datasets above the single-call oracle, overall above the linear classical
router, +0.05 over its own SFT start, format-valid >= 0.95; with the multi-turn behaviour
(calls per multi-hop question, share of multi-hop questions asked in two or more calls).

    python -m experiments.seed_table --runs_dir=experiments/results/dcrouter --goals=routing

tabulates runs on a score-only log (dcrouter, an own log) against the routing goals: +0.02
over the best single model at no more than 70% of its cost, and within 0.03 of the linear
classical router's front (the upper hull of its lambda sweep) at the router's own cost.
"""

from __future__ import annotations

import json
import pathlib

import pandas as pd
from absl import app, flags

from experiments import matched_cost, tables

_RUNS_DIR = flags.DEFINE_string("runs_dir", "experiments/results/quickstart", "Directory of seed-S/ runs.")
_GOALS = flags.DEFINE_enum("goals", "quickstart", ["quickstart", "compose", "routing"], "Which promises to check.")

COLUMNS = ("router", "sft_start", "best_single", "random", "oracle", "format_valid", "cost_per_query",
           "wall_s")


def seed_row(summary: dict) -> dict[str, float]:
    """The table's numbers of one run's summary.json."""
    refs = summary["references"]
    return {
        "router": summary["policy"]["accuracy"],
        "sft_start": summary.get("sft_policy", {}).get("accuracy", float("nan")),
        "best_single": refs["best_single"]["accuracy"],
        "random": refs["random"]["accuracy"],
        "oracle": refs["oracle"]["accuracy"],
        "format_valid": summary["policy"]["format_valid"],
        "cost_per_query": summary["policy"]["cost_per_query"],
        "wall_s": summary["timings"]["total_seconds"],
    }


def promise_checks(row: dict[str, float]) -> dict[str, bool]:
    """The quickstart's promise for one seed, and the multi-turn goal (above the random router)."""
    return {
        "> random": row["router"] > row["random"],
        ">= best single": row["router"] >= row["best_single"] - 1e-9,
        ">= SFT + 0.02": row["router"] >= row["sft_start"] + 0.02 - 1e-9,
        "format >= 0.95": row["format_valid"] >= 0.95,
    }


COMPOSE_COLUMNS = ("router", "sft_start", "linear", "best_single", "multi_hop", "multi_hop_oracle",
                   "multi_hop_decomposer", "one_hop", "multi_hop_calls", "multi_hop_decomposed", "format_valid",
                   "cost_per_query", "wall_s")


def compose_row(summary: dict) -> dict[str, float]:
    """The compose table's numbers of one run's summary.json (its `multi_turn` reading)."""
    refs, turns = summary["references"], summary["multi_turn"]
    multi, one = turns["multi_hop"], turns["one_hop"]
    return {
        "router": summary["policy"]["accuracy"],
        "sft_start": summary.get("sft_policy", {}).get("accuracy", float("nan")),
        "linear": refs["linear"]["accuracy"],
        "best_single": refs["best_single"]["accuracy"],
        "multi_hop": multi["accuracy"],
        "multi_hop_oracle": multi["references"]["oracle"],
        "multi_hop_decomposer": multi["references"].get("decomposer_best_per_hop", float("nan")),
        "one_hop": one["accuracy"],
        "multi_hop_calls": multi["calls_per_question"],
        "multi_hop_decomposed": multi["multi_call_share"],
        "format_valid": summary["policy"]["format_valid"],
        "cost_per_query": summary["policy"]["cost_per_query"],
        "wall_s": summary["timings"]["total_seconds"],
    }


def compose_checks(row: dict[str, float]) -> dict[str, bool]:
    """The compositional world's goals for one seed."""
    return {
        "multi-hop > oracle": row["multi_hop"] > row["multi_hop_oracle"],
        "> linear": row["router"] > row["linear"],
        ">= SFT + 0.05": row["router"] >= row["sft_start"] + 0.05 - 1e-9,
        "format >= 0.95": row["format_valid"] >= 0.95,
    }


ROUTING_COLUMNS = ("router", "sft_start", "best_single", "cost_share", "linear_at_cost", "linear_lambda0",
                   "format_valid", "cost_per_query", "wall_s")


def _front_at(reference: dict, cost: float) -> float:
    """A classical router's front (matched_cost.front of its lambda sweep) at `cost` (NaN below it)."""
    points = [(c, a) for _, c, a in reference.get("lambda_sweep", ())] or [
        (reference["cost_per_query"], reference["accuracy"])]
    (value,) = matched_cost.accuracy_at_costs(points, [cost])
    return float("nan") if value is None else value


def routing_row(summary: dict) -> dict[str, float]:
    """The routing table's numbers of one run's summary.json: the router against the best single
    model and against the linear router's front at the router's own cost."""
    refs, policy = summary["references"], summary["policy"]
    cost = policy["cost_per_query"]
    return {
        "router": policy["accuracy"],
        "sft_start": summary.get("sft_policy", {}).get("accuracy", float("nan")),
        "best_single": refs["best_single"]["accuracy"],
        "cost_share": cost / refs["best_single"]["cost_per_query"],
        "linear_at_cost": _front_at(refs["linear"], cost),
        "linear_lambda0": refs["linear"]["accuracy"],
        "format_valid": policy["format_valid"],
        "cost_per_query": cost,
        "wall_s": summary["timings"]["total_seconds"],
    }


def routing_checks(row: dict[str, float]) -> dict[str, bool]:
    """Issue #23's goals for one seed on a score-only log: +0.02 over the best single model at no
    more than 70% of its cost, and within 0.03 of the linear router's front at the router's cost."""
    return {
        ">= best single + 0.02": row["router"] >= row["best_single"] + 0.02 - 1e-9,
        "cost <= 70%": row["cost_share"] <= 0.7 + 1e-9,
        ">= linear front - 0.03": row["router"] >= row["linear_at_cost"] - 0.03 - 1e-9,
    }


GOALS = {"quickstart": (seed_row, promise_checks, COLUMNS), "compose": (compose_row, compose_checks, COMPOSE_COLUMNS),
         "routing": (routing_row, routing_checks, ROUTING_COLUMNS)}


def _fmt(name: str, value: float) -> str:
    if name == "multi_hop_calls":
        return f"{value:.2f}"
    if name == "cost_share":
        return f"{value:.0%}"
    if name == "cost_per_query":
        return f"{value:.3g}"
    if name == "wall_s":
        return f"{value:.0f}"
    return f"{value:.3f}"


def seed_table(rows: dict[int, dict[str, float]], goals: str = "quickstart") -> str:
    """Markdown: one line per seed, then mean and min over seeds (NaN when a seed lacks the number)."""
    if not rows:
        raise ValueError("no runs to tabulate")
    _, check, columns = GOALS[goals]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(columns)).sort_index()
    checks = pd.DataFrame([check(row) for row in frame.to_dict("records")], index=frame.index)
    summary = pd.DataFrame({"mean": frame.mean(skipna=False), "min": frame.min(skipna=False)}).T
    cells = [[str(seed)] + [_fmt(c, row[c]) for c in columns]
             + ["yes" if ok else "**no**" for ok in checks.loc[seed]] for seed, row in frame.iterrows()]
    cells += [[label] + [_fmt(c, row[c]) for c in columns] + [""] * checks.shape[1]
              for label, row in summary.iterrows()]
    return tables.markdown(cells, ["seed", *columns, *checks.columns])


def read_runs(runs_dir: pathlib.Path, goals: str = "quickstart") -> dict[int, dict[str, float]]:
    row_of = GOALS[goals][0]
    rows = {}
    for path in sorted(runs_dir.glob("seed-*/summary.json")):
        rows[int(path.parent.name.split("-", 1)[1])] = row_of(json.loads(path.read_text()))
    return rows


def main(argv):
    del argv
    runs_dir = pathlib.Path(_RUNS_DIR.value)
    table = seed_table(read_runs(runs_dir, _GOALS.value), _GOALS.value)
    (runs_dir / "TABLE.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
