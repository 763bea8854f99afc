"""Checkpoint round trips of the whole TrainState (orbax), on CPU."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recal_jax.models import ModelConfig, Qwen2
from recal_jax.training.checkpoint import Checkpointer, restore_latest
from recal_jax.training.mesh import make_mesh, shard_tree
from recal_jax.training.optim import OptimConfig, make_optimizer
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import LossConfig, make_train_step

B, T, V = 8, 8, 64
CFG = ModelConfig.preset("tiny", vocab_size=V, hidden_size=32, intermediate_size=64,
                         num_layers=1, num_heads=2, num_kv_heads=1)
OPT = make_optimizer(OptimConfig(learning_rate=1e-2, warmup_steps=2, total_steps=10))
MESH = make_mesh(data=2, fsdp=2, tensor=2)


def new_state(seed=0):
    calib = {"freq_m": jnp.full((4,), 0.25, jnp.float32), "moments_dk": jnp.zeros((3, 6)),
             "initialised_d": jnp.zeros((3,), bool)}
    state = TrainState.create(Qwen2(CFG, rngs=nnx.Rngs(seed)), OPT,
                              rng=jax.random.key(seed), calib_state=calib,
                              with_reference=True, data_position=0)
    return shard_tree(state, MESH)


def batch_for(step_idx):
    rng = np.random.default_rng(step_idx)
    return dict(tokens_bt=rng.integers(0, V, (B, T)).astype(np.int32),
                attention_mask_bt=np.ones((B, T), bool),
                loss_mask_bt=np.ones((B, T), np.float32),
                logp_old_bt=-rng.uniform(3.0, 5.0, (B, T)).astype(np.float32),
                advantages_b=rng.normal(size=B).astype(np.float32))


def advance(state, step_fn, n):
    """n train steps that also move every non-param part of the state."""
    for _ in range(n):
        pos = int(state.data_position)
        state, _ = step_fn(state, batch_for(pos))
        state, _ = state.next_rng()
        state = state.replace(
            data_position=state.data_position + 1,
            calib_state={**state.calib_state,
                         "freq_m": 0.9 * state.calib_state["freq_m"] +
                         0.1 * jax.nn.one_hot(pos % 4, 4)})
    return state


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.fixture(scope="module")
def step_fn():
    s = new_state()
    return make_train_step(s.graphdef, OPT, LossConfig(kl_coef=0.1), MESH, 1)


def test_resume_is_bit_identical(tmp_path, step_fn):
    k = 2
    straight = advance(new_state(), step_fn, 2 * k)

    with Checkpointer(tmp_path, max_to_keep=2, save_every=k) as ckpt:
        half = advance(new_state(), step_fn, k)
        assert ckpt.maybe_save(half, metadata={"suite": "synthetic", "k": k})
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        new_state(seed=5))
    restored, meta = restore_latest(tmp_path, abstract)
    assert meta == {"suite": "synthetic", "k": k}
    assert int(restored.step) == k and int(restored.data_position) == k
    for a, b in zip(leaves(restored), leaves(half)):
        np.testing.assert_array_equal(a, b)
    resumed = advance(restored, step_fn, k)
    assert len(leaves(resumed)) == len(leaves(straight))
    for a, b in zip(leaves(resumed), leaves(straight)):
        np.testing.assert_array_equal(a, b)  # bit-identical: params, opt, rng, calib


def test_keep_n_interval_and_final_save(tmp_path, step_fn):
    state = new_state()
    with Checkpointer(tmp_path, max_to_keep=2, save_every=2) as ckpt:
        saved = []
        for _ in range(5):
            state = advance(state, step_fn, 1)
            saved.append(ckpt.maybe_save(state))
        assert saved == [False, True, False, True, False]
        assert ckpt.save(state)              # the end of training: always saved
        assert not ckpt.save(state)          # ... once
        assert ckpt.all_steps() == [4, 5]    # keep the newest 2
    assert not any(n.startswith("tmp") or ".orbax-checkpoint-tmp" in n
                   for n in os.listdir(tmp_path))


def test_restore_errors(tmp_path):
    assert restore_latest(tmp_path / "nothing", new_state()) is None
    state = new_state()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(state)
    other = state.replace(calib_state={"freq_m": state.calib_state["freq_m"]})
    with pytest.raises(ValueError, match="does not match"):
        restore_latest(tmp_path, other)
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)


def _damage(step_dir, how):
    import glob
    import shutil

    if how == "metadata":
        (step_dir / "metadata" / "metadata").write_text("{not json")
    elif how == "arrays":
        for f in glob.glob(str(step_dir / "state" / "**" / "*"), recursive=True):
            if os.path.isfile(f) and "metadata" not in os.path.basename(f).lower():
                open(f, "wb").write(b"\0garbage")
    else:
        shutil.rmtree(step_dir / "state")


@pytest.mark.parametrize("how", ["metadata", "arrays", "missing_state"])
def test_corrupt_newest_checkpoint_falls_back(tmp_path, how, caplog):
    s1 = new_state(seed=1).replace(step=jnp.asarray(1, jnp.int32))
    s2 = new_state(seed=2).replace(step=jnp.asarray(2, jnp.int32))
    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        ckpt.save(s1, metadata={"n": 1})
        ckpt.save(s2, metadata={"n": 2})
    _damage(tmp_path / "2", how)
    with caplog.at_level("WARNING"), Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 2
        restored, meta = ckpt.restore(new_state(seed=5))
        assert meta == {"n": 1} and int(restored.step) == 1
        for a, b in zip(leaves(restored), leaves(s1)):
            np.testing.assert_array_equal(a, b)
        assert f"{tmp_path}/2 is unreadable" in caplog.text
        assert ckpt.all_steps() == [1] and (tmp_path / "2.corrupt").is_dir()
        assert ckpt.save(s2)  # the step can be written again
        assert ckpt.all_steps() == [1, 2]


def test_every_checkpoint_unreadable_is_a_data_error(tmp_path):
    from recal_jax.data import DataError

    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(new_state())
    _damage(tmp_path / "0", "metadata")
    with pytest.raises(DataError, match="no checkpoint can be read .*step 0: JSONDecodeError"):
        restore_latest(tmp_path, new_state())
    assert (tmp_path / "0").is_dir()  # nothing is moved aside when nothing can be restored
