"""experiments.compose_copy: the copy shares on hand-built rollouts (expected values by hand)."""

import math

from experiments.compose_copy import copy_rows, copy_table


def _rollout(dataset, question, queries, replies, answer):
    return {"dataset": dataset, "question": question, "queries": queries, "replies": replies, "answer": answer}


ROLLOUTS = [
    # two hops, every copy right
    _rollout("birth_country", "in which country was kadobi born?",
             ["where was kadobi born?", "which country is lamepu in?"], ["Lamepu", "Sorivat"], "sorivat"),
    # two hops, the second query misspells the first reply; the answer copies the last reply
    _rollout("birth_country", "in which country was kadobi born?",
             ["where was kadobi born?", "which country is lamepo in?"], ["lamepu", "sorivat"], "Sorivat."),
    # one hop, subject garbled, answer garbled
    _rollout("birthplace", "where was nitasu born?", ["where was nitaso born?"], ["gavado"], "godako"),
    # one hop, no call at all
    _rollout("birthplace", "where was nitasu born?", [], [], "gavado"),
]


def test_copy_rows_by_hand():
    df = copy_rows(ROLLOUTS)
    assert list(df.subject_copy) == [True, True, False, False]
    assert list(df.answer_copy) == [True, True, False, False]
    assert list(df.hops) == [2, 2, 1, 1]
    assert df.hop_copy[0] is True and df.hop_copy[1] is False
    assert df.hop_copy[2] is None and df.hop_copy[3] is None


def test_copy_table_shares():
    table = copy_table(ROLLOUTS)
    assert table.loc["birth_country", "subject_copy"] == 1.0
    assert table.loc["birth_country", "hop_copy"] == 0.5
    assert table.loc["birthplace", "answer_copy"] == 0.0
    assert table.loc["all", "n"] == 4
    assert table.loc["all", "subject_copy"] == 0.5
    assert table.loc["all", "hop_copy"] == 0.5  # over the two rollouts where it applies
    assert math.isnan(table.loc["all", "hops"])
