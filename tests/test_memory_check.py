"""The GRPO step's memory is checked before any work: a step that cannot fit is one line naming
the flag (memory_analysis of the compiled step), and a small one is never compiled for it."""
import jax
import numpy as np
import pytest
from flax import nnx

from recal_jax.training import memory_check
from recal_jax.training.run_config import ConfigError, parse_config
from recal_jax.training.setup import set_up
from tests.test_pipeline import tiny_config


def test_analytic_estimate_by_hand():
    # 1000 params in f32 with a reference copy: 1000 * (4 * 2 + 8); 4 rows / 2 micro-batches x 10
    # tokens = 20 tokens x (16 hidden x 2 layers x 24 + 4 x 100 vocab)
    got = memory_check.analytic_step_bytes(1000, 4, rows=4, seq_len=10, hidden=16, layers=2, vocab=100,
                                           with_reference=True, microbatches=2)
    assert got == 1000 * 16 + 20 * (16 * 2 * 24 + 400)


def test_a_step_that_does_not_fit_stops_setup(monkeypatch):
    monkeypatch.setattr(memory_check, "device_memory_bytes", lambda: 2**20)  # a 1 MiB device
    with pytest.raises(ConfigError, match=r"^--config.grpo.instances_per_step=4: .*memory_analysis"):
        set_up(parse_config(tiny_config(steps=1)))


def test_measured_bytes_cover_the_parameters(monkeypatch):
    cfg = parse_config(tiny_config(steps=1))
    run = set_up(cfg)
    params = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(run.model, nnx.Param)))
    monkeypatch.setattr(memory_check, "MEASURE_ABOVE", 0.0)  # always compile and measure
    need = memory_check.check_step_fits(cfg, run.model, run.model_config, run.mesh, run.seq_len, budget=2**40)
    assert need is not None and need >= 3 * params  # params, two AdamW moments (and the reference copy)
