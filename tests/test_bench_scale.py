"""experiments/bench_scale.py: the train step compiled from abstract inputs (tiny preset)."""
import math

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import bench_scale
from recal_jax.models import Qwen2
from recal_jax.training.optim import OptimConfig, make_optimizer
from recal_jax.training.train_state import TrainState


def test_compile_step_reports_memory_of_the_real_step():
    cfg = bench_scale.ScaleConfig(preset="tiny", num_layers=2, batch=4, seq_len=16,
                                  microbatches=2, remat="full", dtype="float32")
    row = bench_scale.compile_step(cfg)
    assert set(row) >= {"preset", "num_layers", "batch", "seq_len", "microbatches", "remat",
                        "compile_s", "argument_bytes", "output_bytes", "temp_bytes"}
    assert (row["preset"], row["num_layers"], row["batch"], row["remat"]) == ("tiny", 2, 4, "full")
    assert row["compile_s"] > 0 and row["temp_bytes"] > 0
    # the arguments are exactly the state (params, AdamW moments, reference params, ...)
    # and the batch: the abstract state has the shapes of a real one
    model_cfg = cfg.model_config()
    real = TrainState.create(Qwen2(model_cfg, rngs=nnx.Rngs(0)),
                             make_optimizer(OptimConfig(learning_rate=1e-6)),
                             rng=jax.random.key(0), with_reference=True)
    state_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(real))
    batch_bytes = sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize
                      for s in bench_scale.abstract_batch(4, 16).values())
    assert row["argument_bytes"] == state_bytes + batch_bytes


def test_bad_flags_raise():
    with pytest.raises(ValueError, match="microbatches"):
        bench_scale.ScaleConfig(batch=6, microbatches=4)
    with pytest.raises(ValueError, match="remat"):
        bench_scale.ScaleConfig(remat="some").model_config()


def test_cpu_weight_hoisting_is_what_the_default_leaves_out():
    """On XLA:CPU the bf16 step with hoisting keeps f32 copies of the weights as temporaries
    (4 bytes per parameter and copy); the default compile leaves them out."""
    if jax.default_backend() != "cpu":
        pytest.skip("the hoisting option only applies to XLA:CPU")
    base = dict(preset="tiny", num_layers=2, batch=4, seq_len=16, microbatches=2,
                remat="full", dtype="bfloat16")
    default = bench_scale.compile_step(bench_scale.ScaleConfig(**base))
    hoisted = bench_scale.compile_step(bench_scale.ScaleConfig(**base, cpu_weight_hoisting=True))
    assert default["compiler_options"] == bench_scale.CPU_ONLY_PASSES_OFF
    assert hoisted["compiler_options"] == {}
    assert default["argument_bytes"] == hoisted["argument_bytes"]
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(
        Qwen2(bench_scale.ScaleConfig(**base).model_config(), rngs=nnx.Rngs(0)), nnx.Param)))
    # at least one f32 copy of the policy's weights is the difference
    assert hoisted["temp_bytes"] - default["temp_bytes"] >= 4 * n_params
