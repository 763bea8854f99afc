"""One process of the 2-process CPU GRPO run of tests/test_multihost_rollout.py.

Usage: python tests/multihost_rollout_worker.py PORT PROCESS_ID NUM_PROCESSES POLICY_DIR WORKDIR OUT.npz
Each process owns 2 simulated CPU devices, builds the tiny synthetic run of `tiny_config`
with the policy (and tokenizer) exported to POLICY_DIR by `export_policy`, and runs
ITERATIONS GRPO iterations on the batches of `step_records` with a (data=2, fsdp=2) mesh
spanning both processes. OUT.npz gets the final params (gathered), the calibration state and, per
iteration, the ids of the records this process rolled out. The helpers are shared with the
test's single-process reference.
"""
import dataclasses
import os
import sys

import numpy as np

ITERATIONS, U, G = 2, 4, 4  # records per step (split over the processes), rollouts per record


def tiny_config():
    """test_pipeline's tiny quickstart (single_call) config with this test's step sizes."""
    from test_pipeline import tiny_config as pipeline_tiny_config

    c = pipeline_tiny_config(instances_per_step=U, group_size=G, max_new_tokens_per_turn=24,
                             max_total_tokens=24,
                             kl_coef=0.0)  # no reference forward in the step: less to compile
    c.sft.steps = 80  # enough for some format-valid rollouts: non-zero advantages
    c.sft.batch_size = 16
    c.sft.learning_rate = 1e-2
    return c


def build_run(workdir, policy_dir=None):
    """The run of `tiny_config` (a random policy, or the one exported to `policy_dir`)."""
    from recal_jax.training.run_config import parse_config
    from recal_jax.training.setup import set_up

    config = tiny_config()
    if policy_dir is not None:
        config.model.pretrained_path = str(policy_dir)
    return set_up(parse_config(config))


def export_policy(run, policy_dir) -> None:
    """A short SFT warm start of run.model on one device (so that some rollouts are
    format-valid), exported with the run's tokenizer to `policy_dir` (HF layout)."""
    import jax

    from recal_jax.models import save_pretrained
    from recal_jax.training import sft
    from recal_jax.training.mesh import make_mesh

    one_device = dataclasses.replace(run, mesh=make_mesh(data=1, devices=jax.devices()[:1]))
    state, _ = sft.warm_start(one_device, run.cfg.sft, jax.random.key(3), progress=False)
    save_pretrained(state.model(), policy_dir, run.model_config)
    run.tokenizer.save(policy_dir)


def grpo_parts(run, mesh):
    """(fresh TrainState of run.model, the GRPOIteration of the run's config on `mesh`)."""
    import jax

    from recal_jax.calibration import init_state
    from recal_jax.training import components
    from recal_jax.training.optim import make_optimizer
    from recal_jax.training.train_state import TrainState
    from recal_jax.training.train_step import make_train_step

    c = run.cfg
    optimizer = make_optimizer(components.grpo_optim_config(c.grpo))
    state = TrainState.create(run.model, optimizer, rng=jax.random.key(1), with_reference=c.grpo.kl_coef > 0,
                              calib_state=init_state(run.calibration, len(run.suite.train.model_names)))
    step = make_train_step(state.graphdef, optimizer, loss_config=components.loss_config(c.grpo), mesh=mesh)
    iteration = components.grpo_iteration(c.grpo, runner=run.train_runner, calibration=run.calibration,
                                          train_step=step, logprobs=components.logprobs_fn(state.graphdef),
                                          mesh=mesh)
    return state, iteration


def step_records(run):
    """The records of each of the ITERATIONS steps (stratified batches of U, as the pipeline draws them)."""
    from recal_jax.data import stratified_batches

    batches = stratified_batches(run.suite.train, U, np.random.default_rng(0))
    return [next(batches) for _ in range(ITERATIONS)]


def flat_tree(tree, prefix):
    """{prefix + path: numpy array} of a pytree of arrays (gathered from all processes when
    not fully addressable: the global params; this process's own values otherwise)."""
    import jax
    from jax.experimental import multihost_utils

    def value(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(k): value(v) for k, v in flat}


class RecordingRunner:
    """A RolloutRunner that notes the ids of the records it rolls out."""

    def __init__(self, runner):
        self.inner, self.scorer, self.engine, self.seen = runner, runner.scorer, runner.engine, []

    def run(self, params, records, *args, **kwargs):
        self.seen.append([r.id for r in records])
        return self.inner.run(params, records, *args, **kwargs)


def main(port: int, pid: int, nproc: int, policy_dir: str, workdir: str, out: str) -> None:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from recal_jax.training.distributed import maybe_initialize_distributed

    assert maybe_initialize_distributed(f"127.0.0.1:{port}", nproc, pid)
    import jax
    from flax import nnx

    from recal_jax.training.mesh import make_mesh, tree_shardings

    assert jax.process_count() == nproc and jax.device_count() == 2 * nproc
    run = build_run(workdir, policy_dir)
    mesh = make_mesh(data=nproc, fsdp=2)
    state, iteration = grpo_parts(run, mesh)
    state = jax.device_put(state, tree_shardings(state, mesh))  # global from the start, as after a step
    iteration.runner = RecordingRunner(run.train_runner)
    for records in step_records(run):
        state, metrics = iteration(state, records)
    seen = {f"ids_{i}": np.array(ids) for i, ids in enumerate(iteration.runner.seen)}
    np.savez(out, grad_norm=np.asarray(metrics["loss/grad_norm"]), format_valid=metrics["format_valid"],
             **seen, **flat_tree(nnx.to_pure_dict(state.params), "params"),
             **flat_tree(state.calib_state, "calib"))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
