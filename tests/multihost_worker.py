"""One process of the 2-process CPU training run of tests/test_multihost.py.

Usage: python tests/multihost_worker.py PORT PROCESS_ID NUM_PROCESSES OUT.npz
Each process owns 2 simulated CPU devices, loads its half of the fixed batch, trains
STEPS GRPO steps on a (data=2, fsdp=2) mesh spanning both processes, and writes the
final params (gathered) to OUT.npz. `setup_problem` is shared with the test's
single-process reference.
"""
import os
import sys

import numpy as np

B, T, V, STEPS = 8, 8, 64, 2


def setup_problem():
    """(fresh TrainState, the full batch as numpy, step-building kwargs)."""
    import jax
    from flax import nnx

    from recal_jax.models import ModelConfig, Qwen2
    from recal_jax.training.optim import OptimConfig, make_optimizer
    from recal_jax.training.train_state import TrainState
    from recal_jax.training.train_step import LossConfig

    cfg = ModelConfig.preset("tiny", vocab_size=V, hidden_size=32, intermediate_size=64,
                             num_layers=1, num_heads=2, num_kv_heads=1)
    optimizer = make_optimizer(OptimConfig(learning_rate=3e-3, total_steps=10, eps=1e-4))
    state = TrainState.create(Qwen2(cfg, rngs=nnx.Rngs(0)), optimizer,
                              rng=jax.random.key(0), with_reference=True)
    rng = np.random.default_rng(0)
    batch = dict(tokens_bt=rng.integers(0, V, (B, T)).astype(np.int32),
                 attention_mask_bt=np.ones((B, T), bool),
                 loss_mask_bt=np.ones((B, T), np.float32),
                 logp_old_bt=-rng.uniform(3.5, 4.5, (B, T)).astype(np.float32),
                 advantages_b=rng.normal(size=B).astype(np.float32))
    return state, batch, dict(optimizer=optimizer, loss_config=LossConfig(kl_coef=0.1))


def flat_params(params):
    """{path: numpy array} of an nnx params State (fully addressable or gathered)."""
    import jax
    from flax import nnx
    from jax.experimental import multihost_utils

    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]
    return {jax.tree_util.keystr(k): np.asarray(multihost_utils.process_allgather(v, tiled=True))
            for k, v in flat}


def main(port: int, pid: int, nproc: int, out: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from recal_jax.training.distributed import (
        host_local_batch_to_global, maybe_initialize_distributed,
    )
    assert maybe_initialize_distributed(f"127.0.0.1:{port}", nproc, pid)
    import jax

    from recal_jax.training.mesh import make_mesh
    from recal_jax.training.train_step import make_train_step

    assert jax.process_count() == nproc and jax.device_count() == 2 * nproc
    mesh = make_mesh(data=nproc, fsdp=2)
    state, batch, kw = setup_problem()
    rows = B // nproc
    local = {k: v[pid * rows:(pid + 1) * rows] for k, v in batch.items()}
    global_batch = host_local_batch_to_global(local, mesh)
    step = make_train_step(state.graphdef, kw["optimizer"], kw["loss_config"], mesh, 1)
    for _ in range(STEPS):
        state, metrics = step(state, global_batch)
    np.savez(out, loss=np.asarray(metrics["loss"]), **flat_params(state.params))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
