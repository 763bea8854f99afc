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
from recal_jax.training.train_state import TrainState

calibrate_jit = jax.jit(calibrate, static_argnames=("config",))


@dataclasses.dataclass
class GRPOIteration:
    """Callable (state, records) -> (state, metrics). Holds the jitted pieces of a run."""

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
        calib_state = state.calib_state
        rollout, rewards = self.runner.run(
            state.params, records, self.group_size, key, sampling=self.sampling,
            freq_m=np.asarray(calib_state.freq),
            route_window=calib_state.route_window,
        )
        t_rollout = time.perf_counter() - t0
        ids_u = dataset_ids(self.runner.scorer.log, records)
        adv_ug, calib_state, diag = calibrate_jit(
            rewards.rewards_ugk, rewards.format_ok_ug, rewards.valid_ug, ids_u,
            config=self.calibration, state=calib_state,
            call_counts_ugm=rewards.call_counts_ugm.astype(np.float32), cost_ug=rewards.cost_ug,
        )
        batch = self.train_batch(state, rollout, np.asarray(adv_ug).reshape(-1))
        step_metrics = {}
        for _ in range(self.updates_per_batch):
            state, step_metrics = self.train_step(state, batch)
        state = state.replace(calib_state=calib_state, data_position=state.data_position + 1)
        elapsed = time.perf_counter() - t0
        metrics = rollout_metrics(rollout, rewards, self.runner.scorer.log.datasets, ids_u)
        metrics.update({f"loss/{k}": v for k, v in jax.device_get(step_metrics).items()})
        metrics["calibration"] = jax.device_get(diag)
        n_tokens = float(rollout.attention_mask_bt.sum())
        metrics["perf"] = {"seconds": elapsed, "rollout_seconds": t_rollout,
                           "tokens_per_second": n_tokens / max(elapsed, 1e-9)}
        return state, metrics

    def train_batch(self, state: TrainState, rollout: RolloutBatch, advantages_b: np.ndarray) -> dict:
        # Rollouts are right-padded to the engine's budget; train on the used prefix only,
        # rounded up to a multiple of `length_bucket` so that few shapes get compiled.
        used = int(rollout.attention_mask_bt.sum(1).max())
        t = min(-(-used // self.length_bucket) * self.length_bucket, rollout.tokens_bt.shape[1])
        batch = {
            "tokens_bt": rollout.tokens_bt[:, :t],
            "attention_mask_bt": rollout.attention_mask_bt[:, :t],
            "loss_mask_bt": rollout.loss_mask_bt[:, :t],
            "logp_old_bt": rollout.logp_old_bt[:, :t],
            "advantages_b": advantages_b.astype(np.float32),
        }
        if self.recompute_old_logprobs:
            # the training forward pass scores the behaviour tokens, so that with one update
            # per batch the ratio is exactly 1 (the sampler's decode path rounds differently)
            logp, _ = self.logprobs_fn(state.params, jnp.asarray(batch["tokens_bt"]),
                                       jnp.asarray(batch["attention_mask_bt"]))
            batch["logp_old_bt"] = np.asarray(logp) * batch["loss_mask_bt"]
        return batch


def rollout_metrics(rollout: RolloutBatch, rewards: RewardBatch, datasets: Sequence[str],
                    ids_u: np.ndarray) -> dict[str, Any]:
    """Reward per component and per dataset, format-valid rate, call stats, cost."""
    valid = rewards.valid_ug
    n_valid = max(int(valid.sum()), 1)
    r = rewards.rewards_ugk
    metrics: dict[str, Any] = {
        "reward": {name: float((r[..., k] * valid).sum() / n_valid) for k, name in enumerate(COMPONENTS)},
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
            accuracy[name] = float(r[..., 1][sel].mean())
    metrics["accuracy"] = accuracy
    return metrics
