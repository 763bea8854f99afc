"""Two CPU processes (2 devices each) run GRPO iterations, each rolling out its own half of
every step's records, == one process rolling out both halves (with the same per-process
keys), calibrating the whole batch and training on it."""
import dataclasses
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import multihost_rollout_worker as worker  # noqa: E402
from test_multihost import free_port, start_processes, wait_processes  # noqa: E402

NPROC = 2


def single_process_reference(run):
    """({name: array} of the final params and calibration state, per step [process p's record
    ids]): process p's slice rolled out with fold_in(key, p), the slices concatenated,
    calibrated together, one train step on the whole batch."""
    import jax
    from flax import nnx

    from recal_jax.calibration import calibrate
    from recal_jax.rollout.runner import dataset_ids
    from recal_jax.routing.rewards import RewardBatch
    from recal_jax.shapes import round_up
    from recal_jax.training.mesh import make_mesh

    state, iteration = worker.grpo_parts(run, make_mesh(data=1, devices=jax.devices()[:1]))
    calibrate_jit = jax.jit(calibrate, static_argnames="config")
    ids = []
    for records in worker.step_records(run):
        state, key = state.next_rng()
        k = len(records) // NPROC
        slices = [records[p * k:(p + 1) * k] for p in range(NPROC)]
        ids.append([[r.id for r in s] for s in slices])
        outs = [run.train_runner.run(state.params, s, worker.G, jax.random.fold_in(key, p),
                                     sampling=iteration.sampling) for p, s in enumerate(slices)]
        rewards = RewardBatch(**{f.name: np.concatenate([getattr(r, f.name) for _, r in outs])
                                 for f in dataclasses.fields(RewardBatch)})
        adv_ug, calib_state, _ = calibrate_jit(
            rewards.stateless_ugk, rewards.format_ok_ug, rewards.valid_ug, dataset_ids(run.suite.train, records),
            config=run.calibration, state=state.calib_state,
            call_counts_ugm=rewards.call_counts_ugm.astype(np.float32), cost_ug=rewards.cost_ug)
        rollout = {name: np.concatenate([getattr(r, name) for r, _ in outs])
                   for name in ("tokens_bt", "attention_mask_bt", "loss_mask_bt")}
        used = int(rollout["attention_mask_bt"].sum(1).max())
        t = min(round_up(used, iteration.length_bucket), rollout["tokens_bt"].shape[1])
        batch = {name: x[:, :t] for name, x in rollout.items()}
        batch["advantages_b"] = np.asarray(adv_ug, np.float32).reshape(-1)
        state, _ = iteration.train_step(state, batch)
        state = state.replace(calib_state=calib_state)
    params = worker.flat_tree(nnx.to_pure_dict(state.params), "params")
    return {**params, **worker.flat_tree(state.calib_state, "calib")}, ids


def _spawn(tmp_path, policy_dir):
    port = free_port()
    outs = [tmp_path / f"p{p}.npz" for p in range(NPROC)]
    procs = start_processes("multihost_rollout_worker.py",
                            [[port, p, NPROC, policy_dir, tmp_path / f"run{p}", outs[p]] for p in range(NPROC)])
    return procs, outs


def test_each_process_rolls_out_its_own_slice(tmp_path):
    policy_dir = tmp_path / "policy"
    worker.export_policy(worker.build_run(tmp_path / "sft"), policy_dir)
    procs, outs = _spawn(tmp_path, policy_dir)
    try:  # the reference runs while the workers do
        ref, ref_ids = single_process_reference(worker.build_run(tmp_path / "reference", policy_dir))
    finally:
        wait_processes(procs)
    got = [np.load(out) for out in outs]
    for step in range(worker.ITERATIONS):  # (a) each process rolled out its own slice
        for p in range(NPROC):
            assert list(got[p][f"ids_{step}"]) == ref_ids[step][p]
        assert set(ref_ids[step][0]).isdisjoint(ref_ids[step][1])
    assert float(got[0]["grad_norm"]) > 0  # advantages were not all zero: the check has teeth
    names = set(ref)  # params... and calib...
    for p in range(NPROC):
        assert {n for n in got[p].files if n.startswith(("params", "calib"))} == names
    for name in names:  # (b) the same calibration state and params on both processes
        np.testing.assert_array_equal(got[0][name], got[1][name], err_msg=name)
    for name in names:  # (c) == the single-process reference
        np.testing.assert_allclose(got[0][name], ref[name], atol=1e-5, rtol=0, err_msg=name)


def test_process_rows_and_single_process_gather():
    from recal_jax.training.distributed import allgather_rows, global_max, process_rows

    records = list("abcdef")
    assert [process_rows(records, p, 3) for p in range(3)] == [["a", "b"], ["c", "d"], ["e", "f"]]
    np.testing.assert_array_equal(process_rows(np.arange(8).reshape(4, 2), 1, 2), [[4, 5], [6, 7]])
    with pytest.raises(ValueError, match=r"instances_per_step \(6\) must be divisible by the number of processes"):
        process_rows(records, 0, 4, name="instances_per_step")
    got = allgather_rows({"x_ug": np.ones((2, 3), np.float32), "ok_u": np.array([True, False])})
    assert got["x_ug"].shape == (2, 3) and got["ok_u"].dtype == bool
    assert global_max(7) == 7
