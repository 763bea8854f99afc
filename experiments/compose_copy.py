"""How well a compose-suite router copies names: from a run's exported evaluation rollouts.

    python -m experiments.compose_copy --run_dir=experiments/results/compose/seed-0

Per question form, the share of rollouts whose
  * subject copy: the first query parses to a template of the world and names the question's subject
    (the policy copied an entity name out of the prompt);
  * answer copy: the final answer is the last reply, after SQuAD normalisation (the policy copied
    an entity name out of an <information> block);
  * hop copy: (two-hop rollouts of two calls) the second query names the first reply.
A two-hop question to the best model per hop is right about 0.9 of the time when all three copies
hold; these shares say how much of the gap to that is the copy, not the routing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from absl import app, flags

from recal_jax.data.answer_text import normalize_answer
from recal_jax.data.compose_world import parse_query
from recal_jax.data.jsonl import quiet_datasets

_RUN_DIR = flags.DEFINE_string("run_dir", None, "a run directory with eval_rollouts/ (summary.json names it)",
                               required=True)


def copy_rows(rollouts) -> pd.DataFrame:
    """One row per rollout: dataset, hops, subject_copy, answer_copy, hop_copy (None when it does not apply)."""
    rows = []
    for r in rollouts:
        question = parse_query(r["question"])
        queries, replies = r["queries"], r["replies"]
        first = parse_query(queries[0]) if queries else None
        second = parse_query(queries[1]) if len(queries) > 1 else None
        rows.append({
            "dataset": r["dataset"],
            "hops": len(question.hops) if question else 0,
            "subject_copy": bool(question and first and first.subject == question.subject),
            "answer_copy": bool(replies) and normalize_answer(r["answer"]) == normalize_answer(replies[-1]),
            "hop_copy": (None if len(replies) < 2 or question is None or len(question.hops) < 2 else
                         bool(second and second.subject == normalize_answer(replies[0]))),
        })
    return pd.DataFrame(rows)


def copy_table(rollouts) -> pd.DataFrame:
    df = copy_rows(rollouts)
    table = df.groupby("dataset").agg(hops=("hops", "first"), n=("hops", "size"), subject_copy=("subject_copy", "mean"),
                                      answer_copy=("answer_copy", "mean"), hop_copy=("hop_copy", "mean"))
    table.loc["all"] = [float("nan"), len(df), df.subject_copy.mean(), df.answer_copy.mean(),
                        df.hop_copy.dropna().astype(float).mean()]
    return table


def _rollouts_dir(run_dir: Path) -> Path:
    summary = run_dir / "summary.json"
    if summary.is_file():
        named = json.loads(summary.read_text()).get("eval_rollouts")
        if named and Path(named).is_dir():
            return Path(named)
    return run_dir / "eval_rollouts"


def main(argv):
    del argv
    import datasets

    with quiet_datasets():
        rollouts = datasets.load_from_disk(str(_rollouts_dir(Path(_RUN_DIR.value))))
    print(copy_table(rollouts).to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    app.run(main)
