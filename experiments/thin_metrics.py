"""Thinning the metrics.jsonl of long runs before their results are committed:

    python -m experiments.thin_metrics --every=25 experiments/results_greedy/dcrouter-recipe

A 2,000-step dcrouter run logs 17 MB (a row per step, with ReCal's per-dataset statistics:
`calibration/dataset_count|reward_mean|scale/<i>`, 14 datasets x 5 components). Every file
`metrics.jsonl` under the given paths is rewritten in place with:
- every row of the phases other than "train" (SFT, evaluations);
- the train rows of every `--every`-th step and of the last step, without the per-dataset keys.
What RESULTS.md reads stays: the summaries' stability figures are computed by the run itself,
and the report's diagnostics (advantage std per component, informative share, answer gain, cost
ratio) become means over the kept rows. Each rewritten file gets a `.thinned` note beside it
saying what was kept, and a file that has one is left as it is. The file is read as a run reads
it (recal_jax.evaluation.run_dir.read_metrics_file): a line cut by a kill is dropped, and a step
logged twice keeps its last row.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Iterable

from recal_jax.evaluation.run_dir import read_metrics_file

PER_DATASET_KEY = re.compile(r"^calibration/dataset_[a-z_]+/\d+$")
NOTE = ".thinned"


def thin_rows(rows: Iterable[dict], every: int) -> list[dict]:
    """The rows kept: non-train rows whole; train rows at step % every == 0 or the last train
    step, without the per-dataset keys."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    rows = list(rows)
    train_steps = [int(r["step"]) for r in rows if r.get("phase") == "train"]
    last = max(train_steps) if train_steps else None
    kept = []
    for row in rows:
        if row.get("phase") != "train":
            kept.append(row)
        elif int(row["step"]) % every == 0 or int(row["step"]) == last:
            kept.append({k: v for k, v in row.items() if not PER_DATASET_KEY.match(k)})
    return kept


def thin_file(path: pathlib.Path, every: int) -> bool:
    """Rewrites `path` thinned; False (untouched) when it was thinned before."""
    note = path.with_name(path.name + NOTE)
    if note.exists():
        return False
    rows = read_metrics_file(path)
    kept = thin_rows(rows, every)
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    note.write_text(f"every {every}th train step and the last; per-dataset calibration keys dropped; "
                    f"{len(kept)} of {len(rows)} rows kept\n")
    return True


def main(argv):
    paths = [pathlib.Path(p) for p in argv[1:]]
    if not paths:
        raise app.UsageError("give one or more run or results directories")
    for root in paths:
        files = [root] if root.is_file() else sorted(root.rglob("metrics.jsonl"))
        for path in files:
            before = path.stat().st_size / 1e6
            if thin_file(path, _EVERY.value):
                print(f"{path}: {before:.1f} MB -> {path.stat().st_size / 1e6:.2f} MB")
            else:
                print(f"{path}: thinned before, left as it is")


if __name__ == "__main__":
    from absl import app, flags

    _EVERY = flags.DEFINE_integer("every", 25, "Keep the train rows of every this many steps (and the last).")
    app.run(main)
