"""The shared-prompt layout of a GRPO batch: each group's prompt runs once, the completions
attend to it. Checked against the full rows it replaces (the model's own `hidden`, the full
train step) and against a plain numpy attention written here."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recal_jax.models import ModelConfig, Qwen2
from recal_jax.models.layers import prompt_completion_attention
from recal_jax.training.components import uses_shared_prompt
from recal_jax.training.mesh import make_mesh
from recal_jax.training.optim import OptimConfig, make_optimizer
from recal_jax.training.prompt_batch import shared_prompt_batch
from recal_jax.training.run_config import GrpoSection
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import LossConfig, batch_logprobs, compute_logprobs, make_train_step

V = 64
CFG = ModelConfig.preset("tiny", vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, num_kv_heads=2)
OPT = OptimConfig(learning_rate=3e-3, warmup_steps=1, total_steps=10, eps=1e-4)


def rollouts(u=4, g=2, p_max=9, c_max=6, seed=0):
    """Full rows as the rollout engine lays them out: prompt then completion, right-padded;
    the rows of a group share their prompt."""
    rng = np.random.default_rng(seed)
    prompt_len_u = rng.integers(1, p_max + 1, u)
    completion_len_b = rng.integers(1, c_max + 1, u * g)
    t = p_max + c_max + 3
    tokens = np.full((u * g, t), V - 1, np.int32)
    mask = np.zeros((u * g, t), bool)
    loss = np.zeros((u * g, t), np.float32)
    prompts = [rng.integers(0, V - 1, n) for n in prompt_len_u]
    for b in range(u * g):
        p, c = prompt_len_u[b // g], completion_len_b[b]
        tokens[b, :p] = prompts[b // g]
        tokens[b, p:p + c] = rng.integers(0, V - 1, c)
        mask[b, :p + c] = True
        loss[b, p:p + c] = rng.integers(0, 2, c)  # some completion tokens are not the policy's
    return tokens, mask, loss, np.repeat(prompt_len_u, g).astype(np.int32)


def test_batch_builder_on_a_hand_made_case():
    tokens = np.array([[5, 6, 7, 1, 2, 0, 0],
                       [5, 6, 7, 3, 0, 0, 0],
                       [8, 4, 4, 4, 9, 0, 0],
                       [8, 9, 9, 9, 0, 0, 0]], np.int32)
    mask = tokens != 0
    loss = mask * np.array([[0, 0, 0, 1, 1, 0, 0]] * 2 + [[0, 1, 1, 1, 1, 0, 0]] * 2, np.float32)
    batch = shared_prompt_batch(tokens, mask, np.array([3, 3, 1, 1]), 2, bucket=4, pad_id=0,
                                per_token={"loss_mask_bt": loss})
    np.testing.assert_array_equal(batch["prompt_tokens_up"], [[5, 6, 7, 0], [8, 0, 0, 0]])
    np.testing.assert_array_equal(batch["prompt_len_u"], [3, 1])
    np.testing.assert_array_equal(batch["tokens_bt"], [[1, 2, 0, 0], [3, 0, 0, 0], [4, 4, 4, 9], [9, 9, 9, 0]])
    np.testing.assert_array_equal(batch["attention_mask_bt"], batch["tokens_bt"] != 0)
    np.testing.assert_array_equal(batch["loss_mask_bt"], [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    chex.assert_type([batch["prompt_tokens_up"], batch["tokens_bt"], batch["prompt_len_u"]], np.int32)


def test_batch_builder_rejects_what_it_cannot_share():
    tokens, mask, loss, plen = rollouts()
    with pytest.raises(ValueError, match="groups of 3"):
        shared_prompt_batch(tokens, mask, plen, 3, bucket=8)
    other = tokens.copy()
    other[1, 0] = (other[1, 0] + 1) % (V - 1)
    with pytest.raises(ValueError, match=r"rows \[1\] do not share"):
        shared_prompt_batch(other, mask, plen, 2, bucket=8)
    left = np.roll(mask, 1, axis=1)
    with pytest.raises(ValueError, match="right-padded"):
        shared_prompt_batch(tokens, left, plen, 2, bucket=8)
    with pytest.raises(ValueError, match="at least one token"):
        shared_prompt_batch(tokens, mask, np.zeros_like(plen), 2, bucket=8)


def _numpy_attention(q, k, v, visible):
    """q [T,H,D], k/v [S,K,D], visible bool[T,S] -> [T,H,D]: softmax attention, GQA by head."""
    h, kv = q.shape[1], k.shape[1]
    out = np.zeros_like(q, dtype=np.float64)
    for head in range(h):
        kh = head // (h // kv)
        s = q[:, head] @ k[:, kh].T / np.sqrt(q.shape[-1])
        s = np.where(visible, s, -np.inf)
        w = np.exp(s - s.max(1, keepdims=True))
        out[:, head] = (w / w.sum(1, keepdims=True)) @ v[:, kh]
    return out


@pytest.mark.parametrize("query_chunk", [0, 2])
def test_prompt_completion_attention_matches_numpy(query_chunk):
    rng = np.random.default_rng(1)
    u, g, p, c, h, kv, d = 2, 3, 5, 4, 4, 2, 8
    q = rng.normal(size=(u * g, c, h, d)).astype(np.float32)
    kc, vc = (rng.normal(size=(u * g, c, kv, d)).astype(np.float32) for _ in range(2))
    kp, vp = (rng.normal(size=(u, p, kv, d)).astype(np.float32) for _ in range(2))
    plen = np.array([5, 2])
    out = prompt_completion_attention(*map(jnp.asarray, (q, kc, vc, kp, vp, plen)), query_chunk=query_chunk)
    chex.assert_shape(out, (u * g, c, h, d))
    for b in range(u * g):
        n = plen[b // g]
        keys = np.concatenate([kp[b // g, :n], kc[b]])
        values = np.concatenate([vp[b // g, :n], vc[b]])
        visible = np.arange(n + c)[None, :] <= n + np.arange(c)[:, None]  # causal in the joined row
        np.testing.assert_allclose(out[b], _numpy_attention(q[b], keys, values, visible), atol=1e-5)


@pytest.mark.parametrize("query_chunk", [0, 3])
def test_hidden_after_prompt_equals_hidden_of_the_full_rows(query_chunk):
    model = Qwen2(ModelConfig.preset("tiny", **{**_cfg_kwargs(), "attention_query_chunk": query_chunk}),
                  rngs=nnx.Rngs(0))
    tokens, mask, _, plen = rollouts(u=3, g=2)
    batch = shared_prompt_batch(tokens, mask, plen, 2, bucket=4, pad_id=V - 1)
    h_last, h_comp = model.hidden_after_prompt(batch["prompt_tokens_up"], batch["prompt_len_u"], batch["tokens_bt"])
    chex.assert_shape(h_last, (3, CFG.hidden_size))
    chex.assert_shape(h_comp, batch["tokens_bt"].shape + (CFG.hidden_size,))
    chex.assert_tree_all_finite((h_last, h_comp))
    full = np.asarray(model.hidden(jnp.asarray(tokens), jnp.asarray(mask)))
    for b in range(6):
        p, c = plen[b], int(batch["attention_mask_bt"][b].sum())
        np.testing.assert_allclose(h_last[b // 2], full[b, p - 1], atol=2e-5)
        np.testing.assert_allclose(h_comp[b, :c], full[b, p:p + c], atol=2e-5)


def _cfg_kwargs():
    return dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


def new_state(seed=0):
    return TrainState.create(Qwen2(CFG, rngs=nnx.Rngs(seed)), make_optimizer(OPT), rng=jax.random.key(seed),
                             with_reference=True)


def both_layouts(u=8, g=2, seed=0):
    tokens, mask, loss, plen = rollouts(u=u, g=g, seed=seed)
    adv = np.random.default_rng(seed + 1).normal(size=u * g).astype(np.float32)
    full = {"tokens_bt": tokens, "attention_mask_bt": mask, "loss_mask_bt": loss, "advantages_b": adv}
    shared = shared_prompt_batch(tokens, mask, plen, g, bucket=4, pad_id=V - 1, per_token={"loss_mask_bt": loss})
    return full, shared | {"advantages_b": adv}, plen


def test_logprobs_of_the_completions_equal_the_full_rows():
    state = new_state()
    full, shared, plen = both_layouts()
    logp_full, ent_full = compute_logprobs(state.graphdef, state.params, full["tokens_bt"], full["attention_mask_bt"])
    logp, ent = batch_logprobs(state.graphdef, state.params, shared)
    chex.assert_shape([logp, ent], shared["tokens_bt"].shape)
    chex.assert_type([logp, ent], jnp.float32)
    for b in range(len(plen)):
        c = int(shared["attention_mask_bt"][b].sum())
        np.testing.assert_allclose(logp[b, :c], logp_full[b, plen[b]:plen[b] + c], atol=2e-5)
        np.testing.assert_allclose(ent[b, :c], ent_full[b, plen[b]:plen[b] + c], atol=2e-5)
    # the full layout through batch_logprobs is compute_logprobs
    np.testing.assert_allclose(batch_logprobs(state.graphdef, state.params, full)[0], logp_full, atol=1e-6)


@pytest.mark.parametrize("data, microbatches", [(1, 1), (1, 2), (4, 2)])
def test_train_step_gives_the_full_layouts_update(data, microbatches):
    """Two GRPO steps (KL term from the reference params, token-mean) on the same rollouts in
    both layouts: the same loss, gradient norm and parameters, also sharded over `data`
    devices with micro-batches of whole groups."""
    full, shared, _ = both_layouts()
    loss_cfg = LossConfig(kl_coef=0.05, agg="token-mean")
    results = []
    for batch in (full, shared):
        mesh = make_mesh(data=data, devices=jax.devices()[:data])
        step = make_train_step(new_state().graphdef, make_optimizer(OPT), loss_cfg, mesh, microbatches)
        state = new_state()
        for _ in range(2):
            state, metrics = step(state, batch)
        results.append((jax.tree.map(np.asarray, nnx.to_pure_dict(state.params)), jax.tree.map(np.asarray, metrics)))
    (p_full, m_full), (p_shared, m_shared) = results
    assert m_full["num_tokens"] == m_shared["num_tokens"] == full["loss_mask_bt"][:, 1:].sum()
    np.testing.assert_allclose(m_shared["loss"], m_full["loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m_shared["grad_norm"], m_full["grad_norm"], rtol=1e-4)
    assert m_full["grad_norm"] > 1e-3
    chex.assert_trees_all_close(p_shared, p_full, atol=2e-5, rtol=0)


def test_train_step_rejects_groups_that_do_not_split():
    _, shared, _ = both_layouts(u=2, g=4)
    mesh = make_mesh(data=4, devices=jax.devices()[:4])
    step = make_train_step(new_state().graphdef, make_optimizer(OPT), LossConfig(), mesh, 1)
    with pytest.raises(ValueError, match="2 prompts \\(groups\\) must be divisible"):
        step(new_state(), shared)
    with pytest.raises(ValueError, match="lacks \\['prompt_len_u'\\]"):
        step(new_state(), {k: v for k, v in shared.items() if k != "prompt_len_u"})


def test_the_layout_is_used_where_it_applies():
    one = make_mesh(data=1, devices=jax.devices()[:1])
    eight = make_mesh(data=8, devices=jax.devices()[:8])
    assert uses_shared_prompt(GrpoSection(instances_per_step=8), one)
    assert uses_shared_prompt(GrpoSection(instances_per_step=8), eight)
    assert not uses_shared_prompt(GrpoSection(instances_per_step=4), eight)  # 4 groups over 8 shards
    assert not uses_shared_prompt(GrpoSection(instances_per_step=8, microbatches=2), eight)
    assert not uses_shared_prompt(GrpoSection(instances_per_step=8, shared_prompt=False), one)


def test_iteration_builds_the_shared_batch_and_recomputes_old_logprobs_on_it():
    from types import SimpleNamespace

    from recal_jax.training.iteration import GRPOIteration

    tokens, mask, loss, plen = rollouts(u=2, g=3)
    rollout = SimpleNamespace(tokens_bt=tokens, attention_mask_bt=mask, loss_mask_bt=loss, prompt_len_b=plen,
                              logp_old_bt=-np.ones(tokens.shape, np.float32))
    seen = []

    def logprobs_fn(params, batch):
        seen.append(sorted(batch))
        return jnp.full(batch["tokens_bt"].shape, -2.0), None

    def make(updates, shared):
        return GRPOIteration(runner=SimpleNamespace(engine=SimpleNamespace(pad_id=V - 1)), calibration=None,
                             train_step=None, logprobs_fn=logprobs_fn, group_size=3, updates_per_batch=updates,
                             shared_prompt=shared, shared_prompt_bucket=4)

    adv = np.arange(6, dtype=np.float32)
    one = make(1, True).train_batch(None, rollout, adv)
    expected = shared_prompt_batch(tokens, mask, plen, 3, bucket=4, pad_id=V - 1, per_token={"loss_mask_bt": loss})
    assert set(one) == set(expected) | {"advantages_b"} and not seen
    for key, value in expected.items():
        np.testing.assert_array_equal(one[key], value)
    two = make(2, True).train_batch(SimpleNamespace(params=None), rollout, adv)
    assert len(seen) == 1 and set(expected) <= set(seen[0])  # the log-probs of the shared batch itself
    np.testing.assert_array_equal(two["logp_old_bt"], -2.0 * expected["loss_mask_bt"])
    full = make(1, False).train_batch(None, rollout, adv)
    assert "prompt_tokens_up" not in full and full["tokens_bt"].shape[0] == 6


@pytest.mark.parametrize("shared", [True, False])
def test_iteration_puts_the_scheduled_kl_coefficient_of_its_step_on_every_row(shared):
    from types import SimpleNamespace

    from recal_jax.losses import kl_coef_schedule
    from recal_jax.training.iteration import GRPOIteration

    tokens, mask, loss, plen = rollouts(u=2, g=3)
    rollout = SimpleNamespace(tokens_bt=tokens, attention_mask_bt=mask, loss_mask_bt=loss, prompt_len_b=plen,
                              logp_old_bt=-np.ones(tokens.shape, np.float32))
    it = GRPOIteration(runner=SimpleNamespace(engine=SimpleNamespace(pad_id=V - 1)), calibration=None,
                       train_step=None, logprobs_fn=None, group_size=3, shared_prompt=shared, shared_prompt_bucket=4,
                       kl_coef_schedule=kl_coef_schedule("linear", 0.1, 0.0, 10))
    batch = it.train_batch(SimpleNamespace(data_position=np.int32(4)), rollout, np.zeros(6, np.float32))
    np.testing.assert_allclose(batch["kl_coef_b"], np.full(6, 0.1 * (1 - 4 / 10)), rtol=1e-6)
    assert batch["kl_coef_b"].dtype == np.float32
    it.kl_coef_schedule = None
    assert "kl_coef_b" not in it.train_batch(SimpleNamespace(data_position=4), rollout, np.zeros(6, np.float32))
