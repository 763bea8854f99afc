"""experiments/bench_shared_prompt.py at tiny sizes: both layouts run, agree, and are reported."""
import sys

import numpy as np

from experiments import bench_shared_prompt


def test_rows_are_laid_out_as_the_engine_does():
    rng = np.random.default_rng(0)
    tokens, mask, loss, plen = bench_shared_prompt.rollout_rows(rng, 3, 2, 9, 5, vocab=50, pad_id=63)
    assert tokens.shape[0] == mask.shape[0] == 6 and np.all(plen[::2] == plen[1::2])
    for b in range(6):
        n = int(mask[b].sum())
        assert mask[b, :n].all() and not mask[b, n:].any()  # right-padded
        assert (tokens[b, :n] < 50).all() and (tokens[b, n:] == 63).all()
        assert loss[b, :plen[b]].sum() == 0 and loss[b, plen[b]:n].all()  # the completion is trained on
        np.testing.assert_array_equal(tokens[b, :plen[b]], tokens[b - b % 2, :plen[b]])  # the group's prompt


def test_tiny_run_prints_both_layouts(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_shared_prompt", "--num_layers=1", "--vocab_size=128", "--groups=2",
                                      "--group_size=2", "--runs=1"])
    bench_shared_prompt.main()
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and "layout" not in line]
    assert [line.split(" | ")[0] for line in table] == ["| full rows", "| shared prompt"]
    assert table[0].endswith("| 1.00x |")
