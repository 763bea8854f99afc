"""Sharded GRPO and SFT train steps with (sum, denominator) gradient accumulation.

Alignment of per-token arrays: every [B, T] array is aligned to `tokens_bt`.
`logp_bt[:, t]` is log p(tokens[:, t] | tokens[:, :t]), read from the logits at t - 1;
position 0 has no prediction, so `logp_bt[:, 0] = entropy_bt[:, 0] = 0` and the loss mask
at position 0 is ignored. `entropy_bt[:, t]` is the entropy of the distribution that
predicted token t. `logp_old_bt` / `logp_ref_bt` must follow the same alignment (they
come from `compute_logprobs`, or from the sampler's logprobs written at the positions of
the tokens they scored).

Gradient accumulation: the batch is cut into `num_microbatches` interleaved micro-batches
(row j goes to micro-batch j % n, so each keeps its rows spread over the data-parallel
devices); lax.scan adds the gradients of each micro-batch's loss *sum* and its
denominator, and the update uses sum(grad) / sum(denom): exactly the gradient of the
full-batch loss for every aggregation mode.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

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


def _forward(graphdef: nnx.GraphDef, params: Any, tokens_bt, attention_mask_bt):
    model = nnx.merge(graphdef, params)
    return token_logprobs(model(tokens_bt, attention_mask_bt), tokens_bt)


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

_GRPO_KEYS = ("tokens_bt", "attention_mask_bt", "loss_mask_bt", "logp_old_bt", "advantages_b")
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
    if not jnp.issubdtype(jnp.asarray(batch["tokens_bt"]).dtype, jnp.integer):
        raise ValueError("tokens_bt must hold integer token ids")
    b = tokens_shape[0]
    for key, value in batch.items():
        want = (b,) if key.endswith("_b") else tokens_shape
        if np.shape(value) != want:
            raise ValueError(f"batch[{key!r}] has shape {np.shape(value)}; expected {want}")
    if b % rows_multiple:
        raise ValueError(f"batch size {b} must be divisible by num_microbatches * data * fsdp "
                         f"= {rows_multiple}")


def _to_microbatches(x: jax.Array, n: int, mesh: Mesh) -> jax.Array:
    """[B, ...] -> [n, B/n, ...]; micro-batch i holds rows i, i + n, i + 2n, ..."""
    y = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
    spec = P(None, BATCH_AXES, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))


# ------------------------------------------------------------------ generic step

LossFn = Callable[[Any, dict], tuple[LossTerms, dict]]


def _accumulated_grads(loss_fn: LossFn, params: Any, batch: dict, n: int, mesh: Mesh):
    """(grads of the global mean, LossTerms of the batch, reduced aux) over n micro-batches."""
    micro = {k: _to_microbatches(v, n, mesh) for k, v in batch.items()}

    def sum_loss(p, mb):
        terms, aux = loss_fn(p, mb)
        return terms.total, (terms, aux)

    grad_fn = jax.grad(sum_loss, has_aux=True)

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
    """

    def __init__(self, step_fn, mesh: Mesh, tensor_parallel: bool | None,
                 check: Callable[[TrainState, Mapping], None]):
        self._step_fn = step_fn
        self._mesh = mesh
        self._tensor_parallel = tensor_parallel
        self._check = check
        self._compiled = None
        self._state_shardings = None

    def __call__(self, state: TrainState, batch: Mapping[str, Any]):
        self._check(state, batch)
        if self._compiled is None:
            self._state_shardings = tree_shardings(state, self._mesh, self._tensor_parallel)
            self._compiled = jax.jit(
                self._step_fn,
                out_shardings=(self._state_shardings, replicated(self._mesh)),
                donate_argnums=0,
            )
        state = jax.device_put(state, self._state_shardings)
        batch = {k: jax.device_put(v, batch_sharding(self._mesh, np.ndim(v)))
                 for k, v in batch.items()}
        return self._compiled(state, batch)


def _apply(state: TrainState, optimizer, grads) -> TrainState:
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state, step=state.step + 1)


def _policy_mask(mb: dict) -> jax.Array:
    mask = jnp.asarray(mb["loss_mask_bt"], jnp.float32)
    return mask.at[:, 0].set(0.0)


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
                    tensor_parallel: bool | None = None):
    """GRPO step: (state, batch) -> (state, metrics), jitted and sharded over `mesh`.

    batch: tokens_bt i32[B,T], attention_mask_bt bool/int[B,T], loss_mask_bt f32[B,T],
      logp_old_bt f32[B,T], advantages_b f32[B], optionally logp_ref_bt f32[B,T]. When
      loss_config.kl_coef > 0 and logp_ref_bt is absent, the reference log-probs are
      computed in the step from state.ref_params.
    B must be divisible by num_microbatches * data * fsdp.
    metrics: loss, grad_norm, num_tokens, and policy_loss's aux as plain scalars.
    """
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be >= 1; got {num_microbatches}")
    n = num_microbatches
    cfg = loss_config

    def loss_fn(params, mb):
        logp, ent = _forward(graphdef, params, mb["tokens_bt"], mb["attention_mask_bt"])
        return policy_loss(
            logp, mb["logp_old_bt"], mb["advantages_b"], _policy_mask(mb),
            clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
            agg=cfg.agg, logp_ref=mb.get("logp_ref_bt"), kl_coef=cfg.kl_coef,
            kl_kind=cfg.kl_kind, entropy=ent)

    def step_fn(state: TrainState, batch: dict):
        batch = dict(batch)
        if cfg.kl_coef > 0 and "logp_ref_bt" not in batch:
            batch["logp_ref_bt"] = jax.lax.stop_gradient(_forward(
                graphdef, state.ref_params, batch["tokens_bt"], batch["attention_mask_bt"])[0])
        return _grad_step(loss_fn, state, batch, n, mesh, optimizer)

    rows = n * batch_parallelism(mesh)

    def check(state, b):
        _check_batch(b, _GRPO_KEYS, ("logp_ref_bt",), rows)
        if cfg.kl_coef > 0 and "logp_ref_bt" not in b and state.ref_params is None:
            raise ValueError("kl_coef > 0 needs batch['logp_ref_bt'] or state.ref_params")

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
    check = lambda state, b: _check_batch(b, _SFT_KEYS, (), rows)
    return _ShardedStep(step_fn, mesh, tensor_parallel, check)
