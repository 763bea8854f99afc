"""SFT warm start: teacher-forced training on protocol demonstrations."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from recal_jax.training.sft_data import Demonstration, pack_demonstrations
from recal_jax.training.train_state import TrainState


def run_sft(state: TrainState, sft_step: Callable, demos: Sequence[Demonstration], *, steps: int,
            batch_size: int, seq_len: int, pad_id: int, seed: int,
            log_fn: Callable[[int, dict], None] | None = None, progress: bool = True) -> TrainState:
    """`steps` updates on batches drawn without replacement (reshuffled each epoch)."""
    if not demos:
        raise ValueError("SFT needs at least one demonstration")
    arrays = pack_demonstrations(demos, seq_len, pad_id)
    n = len(demos)
    if batch_size > n:
        raise ValueError(f"SFT batch_size {batch_size} exceeds the {n} demonstrations")
    rng = np.random.default_rng(seed)
    order, cursor = rng.permutation(n), 0
    bar = tqdm(range(steps), desc="sft", disable=not progress, leave=False)
    for step in bar:
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        idx = np.sort(order[cursor:cursor + batch_size])
        cursor += batch_size
        state, metrics = sft_step(state, {k: v[idx] for k, v in arrays.items()})
        if log_fn is not None and (step % 10 == 0 or step == steps - 1):
            m = {k: float(v) for k, v in metrics.items()}
            log_fn(step, m)
            bar.set_postfix(loss=f"{m['loss']:.3f}")
    return state
