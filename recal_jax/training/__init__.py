"""Training: mesh and shardings, train state, sharded GRPO/SFT steps, optimizer,
checkpoints, multi-process start-up."""
from recal_jax.training.checkpoint import Checkpointer, restore_latest
from recal_jax.training.distributed import (
    host_local_batch_to_global, maybe_initialize_distributed,
)
from recal_jax.training.mesh import (
    MESH_AXES, batch_sharding, make_mesh, shard_batch, shard_tree,
    tree_shardings,
)
from recal_jax.training.optim import OptimConfig, make_optimizer, make_schedule
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import (
    LossConfig, compute_logprobs, make_sft_step, make_train_step, token_logprobs,
)

__all__ = [
    "Checkpointer", "LossConfig", "MESH_AXES", "OptimConfig", "TrainState",
    "batch_sharding", "compute_logprobs", "host_local_batch_to_global", "make_mesh",
    "make_optimizer", "make_schedule", "make_sft_step", "make_train_step",
    "maybe_initialize_distributed", "restore_latest", "shard_batch", "shard_tree",
    "token_logprobs", "tree_shardings",
]
