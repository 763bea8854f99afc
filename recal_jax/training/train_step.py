"""Sharded GRPO and SFT train steps with (sum, denominator) gradient accumulation.

Alignment of per-token arrays: every [B, T] array is aligned to `tokens_bt`.
`logp_bt[:, t]` is log p(tokens[:, t] | tokens[:, :t]), read from the logits at t - 1;
position 0 has no prediction, so `logp_bt[:, 0] = entropy_bt[:, 0] = 0` and the loss mask
at position 0 is ignored. `entropy_bt[:, t]` is the entropy of the distribution that
predicted token t. `logp_old_bt` / `logp_ref_bt` must follow the same alignment (they
come from `compute_logprobs`, or from the sampler's logprobs written at the positions of
the tokens they scored). Log-probs and entropies are computed from the hidden states in
chunks of positions (`chunked_token_logprobs`): no [B, T, V] float32 tensor exists.

A GRPO batch without `logp_old_bt` uses stop_gradient(logp) of the same forward pass as the
behaviour log-probs (ratio exactly 1, the on-policy gradient): the single-update case needs
no separate old-policy forward. Reference log-probs (KL term) not given in the batch are
computed per micro-batch inside the step from `state.ref_params`.

Gradient accumulation: the batch is cut into `num_microbatches` interleaved micro-batches
(row j goes to micro-batch j % n, so each keeps its rows spread over the data-parallel
devices); lax.scan adds the gradients of each micro-batch's loss *sum* and its
denominator, and the update uses sum(grad) / sum(denom): exactly the gradient of the
full-batch loss for every aggregation mode.

Shared-prompt layout (a GRPO batch with `prompt_tokens_up`): the G rollouts of a group
share their prompt, so the batch carries each prompt once, `prompt_tokens_up` i32[U, P]
(right-padded) with `prompt_len_u` i32[U], and the rows' completions only: `tokens_bt`
i32[B, C] is row b's completion (B = U * G, row b = u * G + g), right-padded, and every
[B, C] array is aligned to it, with position 0 predicted from the prompt's last token (so
position 0 is a real prediction and its loss mask counts). The prompt tokens run through
the layers once per group and log-probs are computed on the completion positions only:
the same loss and gradient as the full layout of the same rollouts, for a fraction of the
work when prompts are long against completions (recal_jax.training.prompt_batch builds it).
Micro-batches then take whole groups (group u goes to micro-batch u % n).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from recal_jax.losses import (
    AGG_MODES, KL_KINDS, LossTerms, aggregate_terms, aux_to_metrics, policy_loss,
    reduce_stacked_aux, safe_divide,
)
from recal_jax.training.mesh import (
    BATCH_AXES, batch_parallelism, batch_sharding, replicated, tree_shardings,
)
from recal_jax.training.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Options of recal_jax.losses.policy_loss used by the GRPO step (spec section 7)."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    agg: str = "token-mean"
    kl_coef: float = 0.001
    kl_kind: str = "k3"

    def __post_init__(self):
        if self.agg not in AGG_MODES:
            raise ValueError(f"LossConfig.agg {self.agg!r} not in {AGG_MODES}")
        if self.kl_kind not in KL_KINDS:
            raise ValueError(f"LossConfig.kl_kind {self.kl_kind!r} not in {KL_KINDS}")
        if self.kl_coef < 0:
            raise ValueError(f"LossConfig.kl_coef must be >= 0; got {self.kl_coef}")


# ------------------------------------------------------------------ log-probs

def token_logprobs(logits_btv: jax.Array, tokens_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logp_bt, entropy_bt) aligned to tokens (see module doc), float32."""
    logits = logits_btv[:, :-1].astype(jnp.float32)
    logz_bt = jax.nn.logsumexp(logits, axis=-1)
    picked_bt = jnp.take_along_axis(logits, tokens_bt[:, 1:, None], axis=-1)[..., 0]
    probs = jnp.exp(logits - logz_bt[..., None])
    entropy_bt = logz_bt - jnp.sum(probs * logits, axis=-1)
    pad = jnp.zeros((tokens_bt.shape[0], 1), jnp.float32)
    return (jnp.concatenate([pad, picked_bt - logz_bt], axis=1),
            jnp.concatenate([pad, entropy_bt], axis=1))


LOGPROB_CHUNK_TOKENS = 1024  # rows x positions per chunk of the chunked log-probs


def chunked_token_logprobs(logits_fn: Callable[[jax.Array], jax.Array], h_btd: jax.Array,
                           tokens_bt: jax.Array, chunk_len: int) -> tuple[jax.Array, jax.Array]:
    """(logp_bt, entropy_bt) f32[B, T] equal to token_logprobs(logits_fn(h_btd), tokens_bt),
    computed over chunks of `chunk_len` positions: lax.scan over the chunks, each
    rematerialised, so only one chunk's logits f32[B, chunk_len, V] exist at a time (in the
    forward and in the backward pass).

    logits_fn: h_bcd -> logits f32[B, C, V] (e.g. Qwen2.lm_logits); h_btd: hidden states.
    """
    chex.assert_rank(h_btd, 3)
    chex.assert_equal_shape_prefix([h_btd, tokens_bt], 2)
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1; got {chunk_len}")
    b, t, d = h_btd.shape
    n = t - 1  # predicted positions 1..T-1, read from the hidden states at 0..T-2
    c = min(chunk_len, n)
    k = -(-n // c)
    h_kbcd = jnp.pad(h_btd[:, :-1], ((0, 0), (0, k * c - n), (0, 0)))
    h_kbcd = h_kbcd.reshape(b, k, c, d).swapaxes(0, 1)
    y_kbc = jnp.pad(tokens_bt[:, 1:], ((0, 0), (0, k * c - n))).reshape(b, k, c).swapaxes(0, 1)

    @jax.checkpoint
    def chunk(h_bcd, y_bc):
        logits_bcv = logits_fn(h_bcd).astype(jnp.float32)
        logz_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
        picked_bc = jnp.take_along_axis(logits_bcv, y_bc[..., None], axis=-1)[..., 0]
        probs_bcv = jnp.exp(logits_bcv - logz_bc[..., None])
        return picked_bc - logz_bc, logz_bc - jnp.sum(probs_bcv * logits_bcv, axis=-1)

    _, (logp_kbc, ent_kbc) = jax.lax.scan(lambda _, xs: (None, chunk(*xs)), None, (h_kbcd, y_kbc))
    pad = jnp.zeros((b, 1), jnp.float32)

    def unchunk(x_kbc):
        return jnp.concatenate([pad, x_kbc.swapaxes(0, 1).reshape(b, k * c)[:, :n]], axis=1)

    return unchunk(logp_kbc), unchunk(ent_kbc)


def chunk_len_for(rows: int, chunk_tokens: int = LOGPROB_CHUNK_TOKENS) -> int:
    """Positions per log-prob chunk so that a chunk holds about `chunk_tokens` tokens."""
    return max(1, chunk_tokens // max(rows, 1))


def _forward(graphdef: nnx.GraphDef, params: Any, tokens_bt, attention_mask_bt,
             chunk_tokens: int = LOGPROB_CHUNK_TOKENS):
    model = nnx.merge(graphdef, params)
    h_btd = model.hidden(tokens_bt, attention_mask_bt)
    return chunked_token_logprobs(model.lm_logits, h_btd, tokens_bt,
                                  chunk_len_for(tokens_bt.shape[0], chunk_tokens))


def _prompt_shared_forward(graphdef: nnx.GraphDef, params: Any, batch: Mapping[str, jax.Array],
                           chunk_tokens: int = LOGPROB_CHUNK_TOKENS):
    """(logp_bt, entropy_bt) f32[B, C] of the completions of a shared-prompt batch, position
    0 predicted from the prompt's last hidden state (see the module doc)."""
    model = nnx.merge(graphdef, params)
    tokens_bc = batch["tokens_bt"]
    h_last_ud, h_bcd = model.hidden_after_prompt(batch["prompt_tokens_up"], batch["prompt_len_u"], tokens_bc)
    g = tokens_bc.shape[0] // h_last_ud.shape[0]
    # chunked_token_logprobs predicts token t from hidden t - 1: prepend the prompt's last state
    h_btd = jnp.concatenate([jnp.repeat(h_last_ud, g, axis=0)[:, None], h_bcd], axis=1)
    tokens_bt = jnp.pad(tokens_bc, ((0, 0), (1, 0)))
    logp, ent = chunked_token_logprobs(model.lm_logits, h_btd, tokens_bt,
                                       chunk_len_for(tokens_bc.shape[0], chunk_tokens))
    return logp[:, 1:], ent[:, 1:]


def is_prompt_shared(batch: Mapping[str, Any]) -> bool:
    """Whether a GRPO batch uses the shared-prompt layout (module doc)."""
    return "prompt_tokens_up" in batch


def _batch_forward(graphdef: nnx.GraphDef, params: Any, batch: Mapping[str, Any],
                   chunk_tokens: int = LOGPROB_CHUNK_TOKENS):
    if is_prompt_shared(batch):
        return _prompt_shared_forward(graphdef, params, batch, chunk_tokens)
    return _forward(graphdef, params, batch["tokens_bt"], batch["attention_mask_bt"], chunk_tokens)


@functools.partial(jax.jit, static_argnums=0)
def batch_logprobs(graphdef: nnx.GraphDef, params: Any, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(logp_bt, entropy_bt) f32 aligned to batch["tokens_bt"], in either layout (full:
    tokens_bt + attention_mask_bt; shared-prompt: plus prompt_tokens_up and prompt_len_u),
    no gradient. Extra keys of the batch are ignored."""
    keys = ("tokens_bt", "attention_mask_bt", "prompt_tokens_up", "prompt_len_u")
    logp, ent = _batch_forward(graphdef, params, {k: batch[k] for k in keys if k in batch})
    return jax.lax.stop_gradient(logp), jax.lax.stop_gradient(ent)


@functools.partial(jax.jit, static_argnums=0)
def compute_logprobs(graphdef: nnx.GraphDef, params: Any, tokens_bt: jax.Array,
                     attention_mask_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logp_bt f32[B,T], entropy_bt f32[B,T]) of `tokens_bt` under params (no gradient).

    For the old-policy and reference log-probs of a GRPO batch; aligned as the module doc
    says (position 0 is 0).
    """
    logp, ent = _forward(graphdef, params, tokens_bt, attention_mask_bt)
    return jax.lax.stop_gradient(logp), jax.lax.stop_gradient(ent)


# ------------------------------------------------------------------ batch checks

_GRPO_KEYS = ("tokens_bt", "attention_mask_bt", "loss_mask_bt", "advantages_b")
_GRPO_OPTIONAL = ("logp_old_bt", "logp_ref_bt", "kl_coef_b")
_PROMPT_KEYS = ("prompt_tokens_up", "prompt_len_u")  # the shared-prompt layout's [U, ...] arrays
_SFT_KEYS = ("tokens_bt", "attention_mask_bt", "loss_mask_bt")


def _check_batch(batch: Mapping[str, Any], required, optional, rows_multiple: int) -> None:
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"batch lacks {missing}; it needs {list(required)}")
    unknown = set(batch) - set(required) - set(optional)
    if unknown:
        raise ValueError(f"batch has unknown keys {sorted(unknown)}")
    tokens_shape = np.shape(batch["tokens_bt"])
    if len(tokens_shape) != 2 or tokens_shape[1] < 2:
        raise ValueError(f"tokens_bt must be [B, T] with T >= 2; got {tokens_shape}")
    tokens = batch["tokens_bt"]
    if not jnp.issubdtype(getattr(tokens, "dtype", None) or np.asarray(tokens).dtype,
                          jnp.integer):
        raise ValueError("tokens_bt must hold integer token ids")
    b = tokens_shape[0]
    for key, value in batch.items():
        if key in _PROMPT_KEYS:
            continue
        want = (b,) if key.endswith("_b") else tokens_shape
        if np.shape(value) != want:
            raise ValueError(f"batch[{key!r}] has shape {np.shape(value)}; expected {want}")
    if b % rows_multiple:
        raise ValueError(f"batch size {b} must be divisible by num_microbatches * data * fsdp "
                         f"= {rows_multiple}")
    if any(k in batch for k in _PROMPT_KEYS):
        _check_prompts(batch, b, rows_multiple)


def _check_prompts(batch: Mapping[str, Any], b: int, rows_multiple: int) -> None:
    """The shared-prompt layout's prompt arrays: both present, U prompts dividing the B rows,
    and U divisible by num_microbatches * data * fsdp (micro-batches take whole groups)."""
    missing = [k for k in _PROMPT_KEYS if k not in batch]
    if missing:
        raise ValueError(f"a shared-prompt batch needs {list(_PROMPT_KEYS)}; it lacks {missing}")
    prompts = np.shape(batch["prompt_tokens_up"])
    if len(prompts) != 2 or prompts[0] < 1:
        raise ValueError(f"prompt_tokens_up must be [U, P]; got {prompts}")
    u = prompts[0]
    if np.shape(batch["prompt_len_u"]) != (u,):
        raise ValueError(f"prompt_len_u has shape {np.shape(batch['prompt_len_u'])}; expected ({u},)")
    if b % u:
        raise ValueError(f"{b} rows are not a multiple of the {u} prompts of prompt_tokens_up")
    if u % rows_multiple:
        raise ValueError(f"{u} prompts (groups) must be divisible by num_microbatches * data * fsdp "
                         f"= {rows_multiple}: a micro-batch takes whole groups")


def _to_microbatches(x: jax.Array, n: int, mesh: Mesh, rows_per_unit: int = 1) -> jax.Array:
    """[B, ...] -> [n, B/n, ...]; micro-batch i holds units i, i + n, i + 2n, ... of
    `rows_per_unit` consecutive rows each (1: single rows; G: whole groups)."""
    units = x.shape[0] // rows_per_unit
    y = x.reshape(units // n, n, rows_per_unit, *x.shape[1:]).swapaxes(0, 1)
    y = y.reshape(n, (units // n) * rows_per_unit, *x.shape[1:])
    spec = P(None, BATCH_AXES, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))


def _batch_microbatches(batch: dict, n: int, mesh: Mesh) -> dict:
    """Every array of `batch` cut into n micro-batches: rows interleaved, or (shared-prompt
    layout) whole groups interleaved, each with its prompt."""
    g = batch["tokens_bt"].shape[0] // batch["prompt_tokens_up"].shape[0] if is_prompt_shared(batch) else 1
    return {k: _to_microbatches(v, n, mesh, 1 if k in _PROMPT_KEYS else g) for k, v in batch.items()}


# ------------------------------------------------------------------ generic step

LossFn = Callable[[Any, dict], tuple[LossTerms, dict]]


def _accumulated_grads(loss_fn: LossFn, params: Any, batch: dict, n: int, mesh: Mesh):
    """(grads of the global mean, LossTerms of the batch, reduced aux) over n micro-batches.

    n > 1: lax.scan adds each micro-batch's gradient into a float32 accumulator; n == 1:
    no scan and no accumulator (the gradient is divided in place of its dtype).
    """
    def sum_loss(p, mb):
        terms, aux = loss_fn(p, mb)
        return terms.total, (terms, aux)

    grad_fn = jax.grad(sum_loss, has_aux=True)
    if n == 1:
        grads, (terms, aux) = grad_fn(params, batch)
        grads = jax.tree.map(lambda g, p: safe_divide(g, terms.denom).astype(p.dtype),
                             grads, params)
        return grads, terms, reduce_stacked_aux(jax.tree.map(lambda x: x[None], aux))
    micro = _batch_microbatches(batch, n, mesh)

    def body(carry, mb):
        grad_acc, denom_acc = carry
        grads, (terms, aux) = grad_fn(params, mb)
        grad_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_acc, grads)
        return (grad_acc, denom_acc + terms.denom), (terms, aux)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (grad_sum, denom), (terms, aux) = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32)), micro)
    grads = jax.tree.map(lambda g, p: safe_divide(g, denom).astype(p.dtype), grad_sum, params)
    total = LossTerms(jnp.sum(terms.total), denom)
    return grads, total, reduce_stacked_aux(aux)


class _ShardedStep:
    """Validates, places state and batch on the mesh, then runs the jitted step.

    The state keeps the shardings `tree_shardings(state, mesh, tensor_parallel)` gives it
    (params by their nnx metadata); the batch rows are split over ('data', 'fsdp').
    `lower(state, batch)` lowers the step for abstract (jax.ShapeDtypeStruct) or concrete
    arguments without running it, e.g. to `.compile().memory_analysis()` ahead of time.
    """

    def __init__(self, step_fn, mesh: Mesh, tensor_parallel: bool | None,
                 check: Callable[[TrainState, Mapping], None]):
        self._step_fn = step_fn
        self._mesh = mesh
        self._tensor_parallel = tensor_parallel
        self._check = check
        self._compiled = None
        self._state_shardings = None

    def _jitted(self, state: TrainState):
        if self._compiled is None:
            self._state_shardings = tree_shardings(state, self._mesh, self._tensor_parallel)
            self._compiled = jax.jit(
                self._step_fn,
                out_shardings=(self._state_shardings, replicated(self._mesh)),
                donate_argnums=0,
            )
        return self._compiled

    def __call__(self, state: TrainState, batch: Mapping[str, Any]):
        self._check(state, batch)
        step = self._jitted(state)
        state = jax.device_put(state, self._state_shardings)
        batch = {k: jax.device_put(v, batch_sharding(self._mesh, np.ndim(v)))
                 for k, v in batch.items()}
        return step(state, batch)

    def place(self, state: TrainState) -> TrainState:
        """`state` with the shardings the step gives it: placed so before the first step, the
        rollouts of step 0 see the same argument shardings as every later step (one compile
        of the sampler and the log-prob function instead of two)."""
        self._jitted(state)
        return jax.device_put(state, self._state_shardings)

    def lower(self, state: TrainState, batch: Mapping[str, Any]):
        """jax.stages.Lowered of the step for `state` / `batch` (shapes and dtypes only)."""
        self._check(state, batch)
        step = self._jitted(state)

        def spec(x, sharding):
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

        state = jax.tree.map(spec, state, self._state_shardings)
        batch = {k: spec(v, batch_sharding(self._mesh, np.ndim(v))) for k, v in batch.items()}
        return step.lower(state, batch)


def _apply(state: TrainState, optimizer, grads) -> TrainState:
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state, step=state.step + 1)


def _policy_mask(mb: dict) -> jax.Array:
    """The loss mask; position 0 has no prediction except in the shared-prompt layout."""
    mask = jnp.asarray(mb["loss_mask_bt"], jnp.float32)
    return mask if is_prompt_shared(mb) else mask.at[:, 0].set(0.0)


def _grad_step(loss_fn, state: TrainState, batch: dict, n: int, mesh: Mesh, optimizer):
    """Accumulated gradients over `n` microbatches, one optimizer update, and the metrics
    (loss_fn's aux plus loss, grad_norm, num_tokens)."""
    grads, loss, aux = _accumulated_grads(loss_fn, state.params, batch, n, mesh)
    metrics = aux_to_metrics(aux)
    metrics.update(loss=loss.value(), grad_norm=optax.global_norm(grads),
                   num_tokens=jnp.sum(_policy_mask(batch)))
    return _apply(state, optimizer, grads), metrics


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                    loss_config: LossConfig, mesh: Mesh, num_microbatches: int = 1,
                    tensor_parallel: bool | None = None,
                    logprob_chunk_tokens: int = LOGPROB_CHUNK_TOKENS):
    """GRPO step: (state, batch) -> (state, metrics), jitted and sharded over `mesh`.

    batch: tokens_bt i32[B,T], attention_mask_bt bool/int[B,T], loss_mask_bt f32[B,T],
      advantages_b f32[B]; optionally logp_old_bt f32[B,T] (absent: stop_gradient of the
      current log-probs, i.e. ratio 1, for one update per batch) and logp_ref_bt f32[B,T]
      (absent with loss_config.kl_coef > 0: computed per micro-batch from
      state.ref_params inside the step), and kl_coef_b f32[B], a per-row KL coefficient in
      place of loss_config.kl_coef (a scheduled one; it needs loss_config.kl_coef > 0, which
      keeps the reference). Or the shared-prompt layout (module doc): the
      same keys over the completions [B, C], plus prompt_tokens_up i32[U, P] and
      prompt_len_u i32[U], with U divisible by num_microbatches * data * fsdp.
    B must be divisible by num_microbatches * data * fsdp. logprob_chunk_tokens: tokens
    (rows x positions) per chunk of the log-prob computation.
    metrics: loss, grad_norm, num_tokens, and policy_loss's aux as plain scalars.
    """
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be >= 1; got {num_microbatches}")
    n = num_microbatches
    cfg = loss_config

    def forward(params, mb):
        return _batch_forward(graphdef, params, mb, logprob_chunk_tokens)

    def step_fn(state: TrainState, batch: dict):
        def loss_fn(params, mb):
            logp, ent = forward(params, mb)
            logp_old = mb["logp_old_bt"] if "logp_old_bt" in mb else jax.lax.stop_gradient(logp)
            logp_ref = mb.get("logp_ref_bt")
            if cfg.kl_coef > 0 and logp_ref is None:
                logp_ref = jax.lax.stop_gradient(forward(state.ref_params, mb)[0])
            return policy_loss(
                logp, logp_old, mb["advantages_b"], _policy_mask(mb),
                clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
                agg=cfg.agg, logp_ref=logp_ref, kl_coef=mb.get("kl_coef_b", cfg.kl_coef),
                kl_kind=cfg.kl_kind, entropy=ent)

        return _grad_step(loss_fn, state, dict(batch), n, mesh, optimizer)

    rows = n * batch_parallelism(mesh)

    def check(state, b):
        _check_batch(b, _GRPO_KEYS, _GRPO_OPTIONAL + _PROMPT_KEYS, rows)
        if cfg.kl_coef > 0 and "logp_ref_bt" not in b and state.ref_params is None:
            raise ValueError("kl_coef > 0 needs batch['logp_ref_bt'] or state.ref_params")
        if "kl_coef_b" in b and not cfg.kl_coef > 0 and "logp_ref_bt" not in b:
            raise ValueError("batch['kl_coef_b'] needs loss_config.kl_coef > 0 (the reference forward "
                             "is built only then) or batch['logp_ref_bt']")

    return _ShardedStep(step_fn, mesh, tensor_parallel, check)


def make_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation,
                  mesh: Mesh, num_microbatches: int = 1, agg: str = "token-mean",
                  tensor_parallel: bool | None = None):
    """Supervised (teacher-forced) step: (state, batch) -> (state, metrics).

    Loss: -logp of each target token with loss_mask_bt (position 0 ignored), aggregated
    with `agg` as a (sum, denom) pair. batch: tokens_bt, attention_mask_bt, loss_mask_bt.
    metrics: loss (= mean NLL under `agg`), entropy, grad_norm, num_tokens.
    """
    if agg not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {agg!r}; expected one of {AGG_MODES}")
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be >= 1; got {num_microbatches}")
    n = num_microbatches

    def loss_fn(params, mb):
        logp, ent = _forward(graphdef, params, mb["tokens_bt"], mb["attention_mask_bt"])
        mask = _policy_mask(mb)
        terms = aggregate_terms(-logp, mask, agg)
        return terms, {"entropy": aggregate_terms(jax.lax.stop_gradient(ent), mask,
                                                  "token-mean")}

    def step_fn(state: TrainState, batch: dict):
        return _grad_step(loss_fn, state, batch, n, mesh, optimizer)

    rows = n * batch_parallelism(mesh)

    def check(state, b):
        _check_batch(b, _SFT_KEYS, (), rows)

    return _ShardedStep(step_fn, mesh, tensor_parallel, check)
