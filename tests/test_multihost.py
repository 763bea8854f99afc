"""Two CPU processes (2 devices each) train on halves of a batch == one process, whole batch."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from recal_jax.training.distributed import maybe_initialize_distributed

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import multihost_worker as worker  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_reference():
    import jax

    from recal_jax.training.mesh import make_mesh
    from recal_jax.training.train_step import make_train_step

    state, batch, kw = worker.setup_problem()
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    step = make_train_step(state.graphdef, kw["optimizer"], kw["loss_config"], mesh, 1)
    for _ in range(worker.STEPS):
        state, metrics = step(state, batch)
    return worker.flat_params(state.params), float(metrics["loss"])


def start_processes(script: str, args_per_process: list[list]) -> list[subprocess.Popen]:
    """Starts tests/<script> once per argument list, all at once, in an environment without
    the caller's multi-process or XLA settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS", "SLURM", "XLA_FLAGS"))}
    env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, script), *map(str, args)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for args in args_per_process]
    return procs


def wait_processes(procs: list[subprocess.Popen]) -> None:
    """Waits for `procs` (killing any left after a failure); fails with a process's output tail."""
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]


def test_two_processes_match_single_process(tmp_path):
    port, nproc = free_port(), 2
    outs = [tmp_path / f"p{p}.npz" for p in range(nproc)]
    wait_processes(start_processes("multihost_worker.py", [[port, p, nproc, outs[p]] for p in range(nproc)]))

    ref_params, ref_loss = single_process_reference()
    for out in outs:
        got = np.load(out)
        np.testing.assert_allclose(got["loss"], ref_loss, atol=1e-5)
        assert set(got.files) - {"loss"} == set(ref_params)
        for k, v in ref_params.items():
            np.testing.assert_allclose(got[k], v, atol=1e-5, rtol=0, err_msg=k)


def test_single_process_is_left_alone(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
              "SLURM_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    assert maybe_initialize_distributed() is False
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    assert maybe_initialize_distributed() is False
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="missing"):
        maybe_initialize_distributed()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="not an integer"):
        maybe_initialize_distributed()
