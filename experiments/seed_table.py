"""Per-seed table of main-job runs (one `python -m launch.main --workdir=DIR/seed-S` per seed):

    python -m experiments.seed_table --runs_dir=experiments/results/quickstart

Writes DIR/TABLE.md (and prints it): per seed, the trained router's test accuracy, its SFT
start, the best single model (chosen on train, reported on test), the random router, the
oracle, format-valid rate, cost per query and wall time; then the mean and the minimum over
seeds, and per seed the checks of the quickstart's promise (at or above the best single
model, +0.02 over its own SFT start, format-valid >= 0.95) and of the multi-turn goal (above
the random router).
"""

from __future__ import annotations

import json
import pathlib

import pandas as pd
from absl import app, flags

from experiments import tables

_RUNS_DIR = flags.DEFINE_string("runs_dir", "experiments/results/quickstart", "Directory of seed-S/ runs.")

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


def _fmt(name: str, value: float) -> str:
    if name == "cost_per_query":
        return f"{value:.3g}"
    if name == "wall_s":
        return f"{value:.0f}"
    return f"{value:.3f}"


def seed_table(rows: dict[int, dict[str, float]]) -> str:
    """Markdown: one line per seed, then mean and min over seeds (NaN when a seed lacks the number)."""
    if not rows:
        raise ValueError("no runs to tabulate")
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(COLUMNS)).sort_index()
    checks = pd.DataFrame([promise_checks(row) for row in frame.to_dict("records")], index=frame.index)
    summary = pd.DataFrame({"mean": frame.mean(skipna=False), "min": frame.min(skipna=False)}).T
    cells = [[str(seed)] + [_fmt(c, row[c]) for c in COLUMNS]
             + ["yes" if ok else "**no**" for ok in checks.loc[seed]] for seed, row in frame.iterrows()]
    cells += [[label] + [_fmt(c, row[c]) for c in COLUMNS] + [""] * checks.shape[1]
              for label, row in summary.iterrows()]
    return tables.markdown(cells, ["seed", *COLUMNS, *checks.columns])


def read_runs(runs_dir: pathlib.Path) -> dict[int, dict[str, float]]:
    rows = {}
    for path in sorted(runs_dir.glob("seed-*/summary.json")):
        rows[int(path.parent.name.split("-", 1)[1])] = seed_row(json.loads(path.read_text()))
    return rows


def main(argv):
    del argv
    runs_dir = pathlib.Path(_RUNS_DIR.value)
    table = seed_table(read_runs(runs_dir))
    (runs_dir / "TABLE.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
