"""Does the GRPO step fit? Checked in setup, before any work.

A quick analytic estimate first (parameters with AdamW moments and the reference copy, plus
activations of every layer for every token of a step); only when it comes near the device's
memory is the real step compiled ahead of time and `compiled.memory_analysis()` read, which
is what the step will use (arguments + outputs + temporaries - donated aliases). A step that
does not fit is a ConfigError naming the flag, not an out-of-memory error after SFT.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from recal_jax.training.components import grpo_optim_config, loss_config
from recal_jax.training.optim import make_optimizer
from recal_jax.training.run_config import ConfigError, RunConfig
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import make_train_step

# Compile and measure when the estimate passes this share of the device's memory.
MEASURE_ABOVE = 0.25
# A step must leave this share of memory for the rest of the process.
FIT_BELOW = 0.9
# Activation bytes kept per token per layer per hidden unit (f32 forward values of the
# attention and MLP blocks, read back by the backward pass; an upper-side estimate).
_ACTIVATION_BYTES_PER_UNIT = 24


def device_memory_bytes() -> int:
    """This process's first device's memory: its allocator limit on an accelerator, physical RAM on CPU."""
    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, RuntimeError, NotImplementedError):  # a backend without allocator stats
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def analytic_step_bytes(num_params: int, param_bytes: int, rows: int, seq_len: int, hidden: int, layers: int,
                        vocab: int, with_reference: bool, microbatches: int) -> int:
    """Parameters (+ 2 f32 AdamW moments, + the reference copy) and one micro-batch's activations."""
    weights = num_params * (param_bytes * (2 if with_reference else 1) + 8)
    tokens = rows // max(microbatches, 1) * seq_len
    activations = tokens * (hidden * layers * _ACTIVATION_BYTES_PER_UNIT + 4 * min(vocab, 8192))
    return int(weights + activations)


def measured_step_bytes(step, state, rows: int, seq_len: int) -> int:
    """memory_analysis of the compiled GRPO step at [rows, seq_len] (nothing is run)."""
    batch = {"tokens_bt": np.zeros((rows, seq_len), np.int32), "attention_mask_bt": np.ones((rows, seq_len), bool),
             "loss_mask_bt": np.ones((rows, seq_len), np.float32), "advantages_b": np.zeros((rows,), np.float32)}
    m = step.lower(state, batch).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def check_step_fits(cfg: RunConfig, model, model_config, mesh, seq_len: int, budget: int | None = None) -> int | None:
    """Raises ConfigError when the GRPO step of `cfg` cannot fit in `budget` bytes (default:
    the device's); returns the measured bytes when it was compiled to find out, else None."""
    budget = device_memory_bytes() if budget is None else budget
    g = cfg.grpo
    rows = g.instances_per_step * g.group_size
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    param_bytes = jnp.dtype(model_config.param_dtype).itemsize
    estimate = analytic_step_bytes(num_params, param_bytes, rows, seq_len, model_config.hidden_size,
                                   model_config.num_layers, model_config.vocab_size, g.kl_coef > 0, g.microbatches)
    if estimate < MEASURE_ABOVE * budget:
        return None
    optimizer = make_optimizer(grpo_optim_config(g))
    state = jax.eval_shape(lambda: TrainState.create(model, optimizer, rng=jax.random.key(0),
                                                     with_reference=g.kl_coef > 0))
    step = make_train_step(state.graphdef, optimizer, loss_config=loss_config(g), mesh=mesh,
                           num_microbatches=g.microbatches)
    need = measured_step_bytes(step, state, rows, seq_len)
    if need > FIT_BELOW * budget:
        raise ConfigError(
            f"--config.grpo.instances_per_step={g.instances_per_step}: x grpo.group_size={g.group_size} rollouts of "
            f"{seq_len} tokens need {_size(need)} for the GRPO step (memory_analysis of the compiled "
            f"step), more than {FIT_BELOW:.0%} of this device's {_size(budget)}; lower them, raise "
            f"grpo.microbatches, or set model.remat")
    return need


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
