"""Sharded GRPO/SFT train steps on 8 simulated CPU devices, with the real tiny Qwen2."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recal_jax.losses import policy_loss
from recal_jax.models import ModelConfig, Qwen2
from recal_jax.training.mesh import make_mesh, shard_batch, tree_shardings, variable_spec
from recal_jax.training.optim import OptimConfig, make_optimizer
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import (
    LossConfig, compute_logprobs, make_sft_step, make_train_step, token_logprobs,
)

B, T, V = 16, 8, 64
CFG = ModelConfig.preset("tiny", vocab_size=V, hidden_size=32, intermediate_size=64,
                         num_layers=2, num_heads=4, num_kv_heads=2)
# Adam's eps is raised so that updates of near-zero gradients stay linear in the gradient:
# with eps=1e-8, float32 summation-order noise in a ~1e-9 gradient flips a whole lr-sized
# update, which would hide real sharding bugs behind tolerance noise.
OPT = OptimConfig(learning_rate=3e-3, warmup_steps=1, total_steps=10, weight_decay=0.01,
                  eps=1e-4)
LOSS = LossConfig(dual_clip=3.0, agg="seq-mean-token-mean", kl_coef=0.05, kl_kind="k3")


def new_state(seed=0):
    model = Qwen2(CFG, rngs=nnx.Rngs(seed))
    return TrainState.create(model, make_optimizer(OPT), rng=jax.random.key(seed),
                             with_reference=True)


def grpo_batch(state, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    attn = np.ones((B, T), bool)
    attn[::3, :2] = False                         # left padding on some rows
    loss_mask = np.zeros((B, T), np.float32)
    loss_mask[:, T // 2:] = 1.0
    loss_mask[5] = 0.0                            # a padded rollout
    logp, _ = compute_logprobs(state.graphdef, state.params, tokens, attn)
    logp_old = np.asarray(logp) + rng.normal(0, 0.05, (B, T)).astype(np.float32)
    return dict(tokens_bt=tokens, attention_mask_bt=attn, loss_mask_bt=loss_mask,
                logp_old_bt=logp_old, advantages_b=rng.normal(size=B).astype(np.float32))


def run_steps(mesh, n_micro, steps=2, loss_cfg=LOSS):
    """(params after 2 steps, metrics of every step)."""
    state = new_state()
    batch = grpo_batch(state)
    step = make_train_step(state.graphdef, make_optimizer(OPT), loss_cfg, mesh, n_micro)
    history, params2 = [], None
    for i in range(steps):
        state, metrics = step(state, batch)
        history.append(jax.tree.map(np.asarray, metrics))
        if i == 1:
            params2 = params_np(state)
    assert int(state.step) == steps
    return params2, history


def params_np(state):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(state.params))


@pytest.fixture(scope="module")
def single():
    return run_steps(make_mesh(data=1, devices=jax.devices()[:1]), 1, steps=6)


def test_token_logprobs_alignment_matches_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 5)).astype(np.float32)
    tokens = rng.integers(0, 5, (2, 4)).astype(np.int32)
    logp, ent = token_logprobs(jnp.asarray(logits), jnp.asarray(tokens))
    for b in range(2):
        assert logp[b, 0] == 0.0 and ent[b, 0] == 0.0
        for t in range(1, 4):
            z = logits[b, t - 1].astype(np.float64)
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            np.testing.assert_allclose(logp[b, t], np.log(p[tokens[b, t]]), rtol=1e-5)
            np.testing.assert_allclose(ent[b, t], -(p * np.log(p)).sum(), rtol=1e-5)


def test_first_step_loss_matches_policy_loss_of_model(single):
    state0 = new_state()
    batch = grpo_batch(state0)
    logp, _ = compute_logprobs(state0.graphdef, state0.params, batch["tokens_bt"],
                               batch["attention_mask_bt"])
    mask = batch["loss_mask_bt"].copy()
    mask[:, 0] = 0
    # reference params = initial params, so logp_ref = logp at step 0
    loss, _ = policy_loss(logp, batch["logp_old_bt"], batch["advantages_b"], mask,
                          dual_clip=3.0, agg=LOSS.agg, logp_ref=logp, kl_coef=0.05)
    first = single[1][0]
    np.testing.assert_allclose(first["loss"], loss.value(), rtol=1e-5, atol=1e-6)
    chex.assert_tree_all_finite(first)


def test_all_axes_and_microbatches_equal_single_device(single):
    """The fast representative: data, fsdp and tensor axes and 2 micro-batches at once."""
    params, hist = run_steps(make_mesh(data=2, fsdp=2, tensor=2), 2)
    chex.assert_trees_all_close(params, single[0], atol=1e-5, rtol=0)
    for k in ("loss", "clipfrac_high", "clipfrac_low", "approx_kl", "entropy", "kl",
              "ratio_min", "ratio_max", "grad_norm", "num_tokens"):
        np.testing.assert_allclose(hist[1][k], single[1][1][k], atol=1e-5, err_msg=k)


@pytest.mark.slow
def test_sharded_steps_equal_single_device_data8(single):
    params, hist = run_steps(make_mesh(data=8), 1)
    chex.assert_trees_all_close(params, single[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(hist[1]["loss"], single[1][1]["loss"], atol=1e-5)


@pytest.mark.slow
def test_sharded_steps_equal_single_device_fsdp(single):
    params, hist = run_steps(make_mesh(data=2, fsdp=4), 1)
    chex.assert_trees_all_close(params, single[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(hist[1]["loss"], single[1][1]["loss"], atol=1e-5)


@pytest.mark.slow
def test_microbatches_equal_one_batch_with_tensor_parallel(single):
    params, hist = run_steps(make_mesh(data=2, tensor=4), 4)
    chex.assert_trees_all_close(params, single[0], atol=1e-5, rtol=0)
    for k in ("loss", "clipfrac_high", "clipfrac_low", "approx_kl", "entropy", "kl",
              "ratio_min", "ratio_max", "grad_norm", "num_tokens"):
        np.testing.assert_allclose(hist[1][k], single[1][1][k], atol=1e-5, err_msg=k)


def test_params_are_sharded_by_metadata():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    state = new_state()
    sh = tree_shardings(state, mesh)
    embed_spec = sh.params["embed"].get_value().spec
    assert tuple(embed_spec) == ("tensor", "fsdp")   # (vocab, embed)
    mu = sh.opt_state[1][0].mu["embed"].get_value().spec   # adam moments follow params
    assert tuple(mu) == ("tensor", "fsdp")
    assert tuple(sh.step.spec) == ()


def test_grpo_loss_decreases_on_fixed_batch(single):
    losses = [float(m["loss"]) for m in single[1]]
    assert losses[-1] < losses[0] - 1e-3, losses


def sft_run(mesh, n_micro, steps):
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    batch = dict(tokens_bt=tokens, attention_mask_bt=np.ones((B, T), bool),
                 loss_mask_bt=(rng.uniform(size=(B, T)) < 0.8).astype(np.float32))
    state = new_state()
    step = make_sft_step(state.graphdef, make_optimizer(OPT), mesh, n_micro)
    hist = []
    for _ in range(steps):
        state, m = step(state, batch)
        chex.assert_tree_all_finite(m)
        hist.append(float(m["loss"]))
    return hist, params_np(state)


def test_sft_loss_decreases():
    hist, _ = sft_run(make_mesh(data=4, fsdp=2), 2, steps=4)
    assert hist[0] == pytest.approx(np.log(V), rel=0.05)  # near-uniform init
    assert hist[1] == hist[0]   # warmup: the learning rate of step 0 is 0
    assert hist[3] < hist[2] < hist[1], hist


@pytest.mark.slow
def test_sft_microbatching_is_exact():
    _, one = sft_run(make_mesh(data=1, devices=jax.devices()[:1]), 1, steps=3)
    _, two = sft_run(make_mesh(data=4, fsdp=2), 2, steps=3)
    chex.assert_trees_all_close(one, two, atol=1e-5, rtol=0)


def test_bad_inputs_raise():
    state = new_state()
    batch = grpo_batch(state)
    mesh = make_mesh(data=8)
    step = make_train_step(state.graphdef, make_optimizer(OPT), LOSS, mesh, 4)
    with pytest.raises(ValueError, match="divisible"):
        step(state, batch)
    step = make_train_step(state.graphdef, make_optimizer(OPT), LOSS, mesh, 1)
    with pytest.raises(ValueError, match="lacks"):
        step(state, {k: v for k, v in batch.items() if k != "advantages_b"})
    with pytest.raises(ValueError, match="advantages_b"):
        step(state, batch | {"advantages_b": np.zeros(B + 1, np.float32)})
    no_ref = state.replace(ref_params=None)
    with pytest.raises(ValueError, match="ref_params"):
        step(no_ref, batch)
    with pytest.raises(ValueError, match="agg"):
        LossConfig(agg="mean")


def test_make_mesh_validates():
    assert make_mesh().shape == {"data": 8, "fsdp": 1, "tensor": 1}
    assert make_mesh(fsdp=2, tensor=2).shape["data"] == 2
    with pytest.raises(ValueError, match="devices"):
        make_mesh(data=3)
    with pytest.raises(ValueError, match="-1"):
        make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="divisible"):
        shard_batch({"x": np.zeros((6, 2))}, make_mesh(data=4, fsdp=2))


def test_mesh_is_auto_and_shared_with_models():
    from recal_jax.models import sharding
    assert make_mesh is sharding.make_mesh   # one mesh maker for models and training
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert mesh.axis_names == ("data", "fsdp", "tensor")


def test_variable_spec_out_sharding_is_fitted():
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    both = nnx.Param(jnp.zeros((8, 6)), out_sharding=("fsdp", "tensor"), eager_sharding=False)
    assert tuple(variable_spec(both, mesh)) == ("fsdp", "tensor")
    # a mesh axis used twice keeps its first use; a size (3) that does not divide is dropped
    twice = nnx.Param(jnp.zeros((8, 4)), out_sharding=("tensor", "tensor"), eager_sharding=False)
    assert tuple(variable_spec(twice, mesh)) == ("tensor", None)
    odd = nnx.Param(jnp.zeros((3, 4)), out_sharding=("fsdp", None), eager_sharding=False)
    assert tuple(variable_spec(odd, mesh)) == (None, None)
    # logical axes: tensor by name, fsdp on the largest free dimension (models' rule)
    logical = nnx.Param(jnp.zeros((64, 32)), logical_axes=("vocab", "embed"))
    assert tuple(variable_spec(logical, mesh)) == ("tensor", "fsdp")
    assert tuple(variable_spec(logical, mesh, tensor_parallel=False)) == ("fsdp", None)
    assert tuple(variable_spec(nnx.Param(jnp.zeros((4,))), mesh)) == ()


def test_missing_logp_old_is_the_on_policy_ratio_one_step():
    """Without logp_old_bt the step uses stop_gradient(logp): the same update as passing the
    current policy's log-probs (ratio 1), with no extra forward."""
    state = new_state()
    batch = grpo_batch(state)
    logp, _ = compute_logprobs(state.graphdef, state.params, batch["tokens_bt"],
                               batch["attention_mask_bt"])
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    loss_cfg = LossConfig(agg="seq-mean-token-mean", kl_coef=0.05)
    results = []
    for b in (batch | {"logp_old_bt": np.asarray(logp)},
              {k: v for k, v in batch.items() if k != "logp_old_bt"}):
        step = make_train_step(state.graphdef, make_optimizer(OPT), loss_cfg, mesh, 2)
        new, metrics = step(new_state(), b)
        results.append((params_np(new), jax.tree.map(np.asarray, metrics)))
    (p_with, m_with), (p_without, m_without) = results
    chex.assert_trees_all_close(p_without, p_with, atol=1e-6, rtol=0)
    np.testing.assert_allclose(m_without["grad_norm"], m_with["grad_norm"], rtol=1e-5)
    np.testing.assert_allclose(m_without["loss"], m_with["loss"], rtol=1e-5, atol=1e-7)
    assert m_without["ratio_min"] == m_without["ratio_max"] == 1.0
    assert m_with["grad_norm"] > 1e-4


def test_train_batch_drops_old_logprobs_for_one_update():
    from types import SimpleNamespace

    from recal_jax.training.iteration import GRPOIteration

    rng = np.random.default_rng(0)
    rollout = SimpleNamespace(
        tokens_bt=rng.integers(0, V, (4, 40)).astype(np.int32),
        attention_mask_bt=np.arange(40)[None] < np.array([[20], [33], [5], [10]]),
        loss_mask_bt=np.ones((4, 40), np.float32),
        logp_old_bt=-np.ones((4, 40), np.float32))
    calls = []

    def logprobs_fn(params, batch):
        calls.append(batch["tokens_bt"].shape)
        return jnp.full(batch["tokens_bt"].shape, -2.0), None

    def make(updates, recompute):
        return GRPOIteration(runner=None, calibration=None, train_step=None,
                             logprobs_fn=logprobs_fn, group_size=2, updates_per_batch=updates,
                             recompute_old_logprobs=recompute)

    adv = np.zeros(4, np.float32)
    state = SimpleNamespace(params=None)
    one = make(1, True).train_batch(state, rollout, adv)
    assert "logp_old_bt" not in one and one["tokens_bt"].shape == (4, 40) and not calls
    two = make(2, True).train_batch(state, rollout, adv)
    assert calls == [(4, 40)] and float(two["logp_old_bt"].min()) == -2.0
    off = make(1, False).train_batch(state, rollout, adv)
    np.testing.assert_array_equal(off["logp_old_bt"], -1.0)


def test_per_row_kl_coefficient_in_the_batch():
    """batch['kl_coef_b'] (grpo.kl_schedule) replaces loss_config.kl_coef: the loss is policy_loss
    with those per-row weights, and a constant row vector equals the constant. Measured two steps
    after the start (at the reference itself the KL term is 0, and OPT's warm-up makes the first
    step's learning rate 0); a step donates its state, so each measurement starts afresh."""
    mesh = make_mesh(data=2, devices=jax.devices()[:2])
    batch = grpo_batch(new_state())
    step = make_train_step(new_state().graphdef, make_optimizer(OPT), LOSS, mesh, 1)

    def after_two_steps():
        return step(step(new_state(), batch)[0], batch)[0]

    def loss_after(extra):
        return float(step(after_two_steps(), {**batch, **extra})[1]["loss"])

    state0 = new_state()
    logp_ref, _ = compute_logprobs(state0.graphdef, state0.params, batch["tokens_bt"], batch["attention_mask_bt"])
    state2 = after_two_steps()
    logp2, _ = compute_logprobs(state2.graphdef, state2.params, batch["tokens_bt"], batch["attention_mask_bt"])
    mask = batch["loss_mask_bt"].copy()
    mask[:, 0] = 0
    coef_b = np.linspace(0.0, 0.2, B).astype(np.float32)
    want, _ = policy_loss(logp2, batch["logp_old_bt"], batch["advantages_b"], mask, dual_clip=3.0, agg=LOSS.agg,
                          logp_ref=logp_ref, kl_coef=jnp.asarray(coef_b))
    per_row = loss_after({"kl_coef_b": coef_b})
    np.testing.assert_allclose(per_row, want.value(), rtol=1e-5, atol=1e-6)
    constant = loss_after({})
    np.testing.assert_allclose(loss_after({"kl_coef_b": np.full(B, LOSS.kl_coef, np.float32)}), constant,
                               rtol=1e-6, atol=1e-7)
    assert abs(per_row - constant) > 1e-6
    no_kl = make_train_step(state0.graphdef, make_optimizer(OPT), LossConfig(kl_coef=0.0), mesh, 1)
    with pytest.raises(ValueError, match="kl_coef_b.*needs loss_config.kl_coef > 0"):
        no_kl(new_state().replace(ref_params=None), {**batch, "kl_coef_b": coef_b})
