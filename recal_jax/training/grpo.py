"""One GRPO iteration with ReCal: roll out, score, calibrate, update (mu times)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recal_jax.calibration import COMPONENTS, CalibrationConfig, calibrate
from recal_jax.data.schema import RoutingRecord
from recal_jax.rollout.engine import RolloutBatch
from recal_jax.routing.rewards import RewardBatch
from recal_jax.rollout.runner import RolloutRunner, dataset_ids
from recal_jax.rollout.sampler import SamplingOptions
from recal_jax.shapes import round_up
from recal_jax.training.train_state import TrainState

calibrate_jit = jax.jit(calibrate, static_argnames=("config",))


@dataclasses.dataclass(kw_only=True)
class GRPOIteration:
    """Callable (state, records) -> (state, metrics). Holds the jitted pieces of a run;
    built with keywords (recal_jax.training.components.grpo_iteration builds it from a config)."""

    runner: RolloutRunner
    calibration: CalibrationConfig
    train_step: Callable  # (state, batch) -> (state, metrics)
    logprobs_fn: Callable  # (params, tokens_bt, attention_mask_bt) -> (logp_bt, entropy_bt)
    group_size: int
    updates_per_batch: int = 1
    recompute_old_logprobs: bool = True
    sampling: SamplingOptions = SamplingOptions()
    length_bucket: int = 32

    def __call__(self, state: TrainState, records: Sequence[RoutingRecord]) -> tuple[TrainState, dict]:
        t0 = time.perf_counter()
        state, key = state.next_rng()
        rollout, rewards = self.runner.run(state.params, records, self.group_size, key, sampling=self.sampling)
        t_rollout = time.perf_counter() - t0
        ids_u = dataset_ids(self.runner.scorer.log, records)
        # route and balance (and their state) are calibration's: it gets the raw facts
        adv_ug, calib_state, diag = calibrate_jit(
            rewards.stateless_ugk, rewards.format_ok_ug, rewards.valid_ug, ids_u,
            config=self.calibration, state=state.calib_state,
            call_counts_ugm=rewards.call_counts_ugm.astype(np.float32), cost_ug=rewards.cost_ug,
        )
        batch = self.train_batch(state, rollout, np.asarray(adv_ug).reshape(-1))
        step_metrics = {}
        for _ in range(self.updates_per_batch):
            state, step_metrics = self.train_step(state, batch)
        state = state.replace(calib_state=calib_state, data_position=state.data_position + 1)
        elapsed = time.perf_counter() - t0
        diag = jax.device_get(diag)
        reward_mean_k = diag.pop("reward_mean_k")  # logged as reward/<component>
        metrics = rollout_metrics(rollout, rewards, reward_mean_k, self.runner.scorer.log.datasets, ids_u)
        metrics.update({f"loss/{k}": v for k, v in jax.device_get(step_metrics).items()})
        metrics["calibration"] = diag
        n_tokens = float(rollout.attention_mask_bt.sum())
        metrics["perf"] = {"seconds": elapsed, "rollout_seconds": t_rollout,
                           "tokens_per_second": n_tokens / max(elapsed, 1e-9)}
        return state, metrics

    def train_batch(self, state: TrainState, rollout: RolloutBatch, advantages_b: np.ndarray) -> dict:
        """The train step's batch: the used prefix of the rollouts (rounded up to a multiple of
        `length_bucket` so that few shapes get compiled).

        Behaviour log-probs with `recompute_old_logprobs` (the sampler's decode path rounds
        differently from the training forward): with one update per batch the batch carries
        no logp_old_bt and the step uses stop_gradient of its own forward (ratio exactly 1,
        no extra forward pass); with several updates they are recomputed here once, before
        the first update. Without it, the sampler's log-probs are used.
        """
        used = int(rollout.attention_mask_bt.sum(1).max())
        t = min(round_up(used, self.length_bucket), rollout.tokens_bt.shape[1])
        batch = {
            "tokens_bt": rollout.tokens_bt[:, :t],
            "attention_mask_bt": rollout.attention_mask_bt[:, :t],
            "loss_mask_bt": rollout.loss_mask_bt[:, :t],
            "logp_old_bt": rollout.logp_old_bt[:, :t],
            "advantages_b": advantages_b.astype(np.float32),
        }
        if self.recompute_old_logprobs and self.updates_per_batch == 1:
            del batch["logp_old_bt"]
        elif self.recompute_old_logprobs:
            logp, _ = self.logprobs_fn(state.params, jnp.asarray(batch["tokens_bt"]),
                                       jnp.asarray(batch["attention_mask_bt"]))
            batch["logp_old_bt"] = np.asarray(logp) * batch["loss_mask_bt"]
        return batch


def rollout_metrics(rollout: RolloutBatch, rewards: RewardBatch, reward_mean_k, datasets: Sequence[str],
                    ids_u: np.ndarray) -> dict[str, Any]:
    """Reward per component (reward_mean_k f32[K]: calibrate's diagnostics, where route and
    balance are computed) and accuracy per dataset, format-valid rate, call stats, cost."""
    valid = rewards.valid_ug
    n_valid = max(int(valid.sum()), 1)
    metrics: dict[str, Any] = {
        "reward": {name: float(reward_mean_k[k]) for k, name in enumerate(COMPONENTS)},
        "format_valid": float((rewards.format_ok_ug & valid).sum() / n_valid),
        "calls_per_rollout": float(rewards.call_counts_ugm.sum() / n_valid),
        "cost_per_rollout": float((rewards.cost_ug * valid).sum() / n_valid),
        "cost_total": float((rewards.cost_ug * valid).sum()),
        "completion_tokens": float(rollout.loss_mask_bt.sum() / max(len(rollout.completion_texts), 1)),
    }
    accuracy = {}
    for d, name in enumerate(datasets):
        sel = (ids_u == d)[:, None] & valid
        if sel.any():
            accuracy[name] = float(rewards.answer_ug[sel].mean())
    metrics["accuracy"] = accuracy
    return metrics
