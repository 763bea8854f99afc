"""One GRPO iteration with ReCal: roll out, score, calibrate, update (mu times)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from recal_jax.calibration import COMPONENTS, CalibrationConfig, calibrate
from recal_jax.data.schema import RoutingRecord
from recal_jax.evaluation.per_dataset import per_dataset_mean
from recal_jax.rollout.engine import RolloutBatch
from recal_jax.routing.rewards import RewardBatch
from recal_jax.rollout.runner import RolloutRunner, dataset_ids
from recal_jax.rollout.sampler import SamplingOptions
from recal_jax.shapes import SHARED_PROMPT_BUCKET, TRAIN_LENGTH_BUCKET, round_up
from recal_jax.training.distributed import (
    allgather_rows, global_max, host_local_batch_to_global, process_local, process_rows,
)
from recal_jax.training.prompt_batch import shared_prompt_batch
from recal_jax.training.train_state import TrainState

calibrate_jit = jax.jit(calibrate, static_argnames=("config",))


@dataclasses.dataclass(kw_only=True)
class GRPOIteration:
    """Callable (state, records) -> (state, metrics). Holds the jitted pieces of a run;
    built with keywords (recal_jax.training.components.grpo_iteration builds it from a config)."""

    runner: RolloutRunner
    calibration: CalibrationConfig
    train_step: Callable  # (state, batch) -> (state, metrics)
    logprobs_fn: Callable  # (params, batch) -> (logp_bt, entropy_bt): train_step.batch_logprobs
    group_size: int
    updates_per_batch: int = 1
    recompute_old_logprobs: bool = True
    sampling: SamplingOptions = SamplingOptions()
    length_bucket: int = TRAIN_LENGTH_BUCKET
    # the train batch in the shared-prompt layout (each group's prompt once; train_step's
    # module doc) when one process runs: the same gradient, less work
    shared_prompt: bool = False
    shared_prompt_bucket: int = SHARED_PROMPT_BUCKET
    mesh: Mesh | None = None  # the train step's mesh: needed with several processes (see _call_multi_process)
    # step -> KL coefficient (grpo.kl_schedule); None: the train step's own loss_config.kl_coef
    kl_coef_schedule: Callable[[int], float] | None = None

    def __call__(self, state: TrainState, records: Sequence[RoutingRecord]) -> tuple[TrainState, dict]:
        if jax.process_count() > 1:
            return self._call_multi_process(state, records)
        t0 = time.perf_counter()
        state, key = state.next_rng()
        rollout, rewards = self.runner.run(state.params, records, self.group_size, key, sampling=self.sampling)
        t_rollout = time.perf_counter() - t0
        ids_u = dataset_ids(self.runner.scorer.log, records)
        adv_ug, calib_state, diag = self._calibrate(rewards, ids_u, state.calib_state)
        batch = self.train_batch(state, rollout, np.asarray(adv_ug).reshape(-1))
        state, step_metrics = self._update(state, batch, calib_state)
        elapsed = time.perf_counter() - t0
        metrics = self._metrics(rollout, rewards, ids_u, diag, step_metrics, seconds=elapsed, rollout_seconds=t_rollout,
                                n_tokens=float(rollout.attention_mask_bt.sum()), kl_coef=batch.get("kl_coef_b"))
        return state, metrics

    def _call_multi_process(self, state: TrainState, records: Sequence[RoutingRecord]) -> tuple[TrainState, dict]:
        """Process p of P rolls out records[p*U/P:(p+1)*U/P] (U divisible by P) with the key
        fold_in(key, p), from process-local copies of the params (distributed.process_local:
        the process's own buffers when it holds the whole value, else gathered). The per-row
        reward arrays are all-gathered, so every process runs the same calibrate on the global
        U x G batch (identical calib_state everywhere) and keeps its own rows of the
        advantages; the train batch (the same width on every process) becomes one global
        batch over `mesh`. Reward metrics are over the global batch; perf seconds are this
        process's."""
        if self.mesh is None:
            raise ValueError(f"GRPOIteration with {jax.process_count()} processes needs mesh= (the train "
                             "step's mesh) to assemble the global batch")
        t0 = time.perf_counter()
        p, n = jax.process_index(), jax.process_count()
        mine = process_rows(records, p, n, name="instances_per_step (records per GRPO step)")
        state, key = state.next_rng()
        params = process_local(state.params)
        rollout, rewards = self.runner.run(params, mine, self.group_size, jax.random.fold_in(process_local(key), p),
                                           sampling=self.sampling)
        t_rollout = time.perf_counter() - t0
        ids_u = dataset_ids(self.runner.scorer.log, records)  # the records are the same on every process
        rows = allgather_rows({**{f.name: getattr(rewards, f.name) for f in dataclasses.fields(RewardBatch)},
                               "tokens_b": rollout.attention_mask_bt.sum(1),
                               "completion_tokens_b": rollout.loss_mask_bt.sum(1)})
        rewards = RewardBatch(**{f.name: rows[f.name] for f in dataclasses.fields(RewardBatch)})
        # calib_state from the host: calibrate's outputs stay uncommitted, which the train step
        # may place on the global mesh (a committed process-local array it may not)
        adv_ug, calib_state, diag = self._calibrate(rewards, ids_u, jax.device_get(state.calib_state))
        width = min(round_up(int(rows["tokens_b"].max()), self.length_bucket), global_max(rollout.tokens_bt.shape[1]))
        batch = self.train_batch(state, rollout, process_rows(np.asarray(adv_ug), p, n).reshape(-1),
                                 width=width, params=params)
        state, step_metrics = self._update(state, host_local_batch_to_global(batch, self.mesh), calib_state)
        metrics = self._metrics(rollout, rewards, ids_u, diag, step_metrics, n_tokens=float(rows["tokens_b"].sum()),
                                seconds=time.perf_counter() - t0, rollout_seconds=t_rollout,
                                kl_coef=batch.get("kl_coef_b"))
        metrics["completion_tokens"] = float(rows["completion_tokens_b"].mean())
        return state, metrics

    def _calibrate(self, rewards: RewardBatch, ids_u: np.ndarray, calib_state):
        """calibrate (jitted) on the environment's report: (advantages f32[U, G], new state, diagnostics).
        Route and balance (and their state) are calibration's: it gets the raw facts."""
        return calibrate_jit(
            rewards.stateless_ugk, rewards.format_ok_ug, rewards.valid_ug, ids_u,
            config=self.calibration, state=calib_state,
            call_counts_ugm=rewards.call_counts_ugm.astype(np.float32), cost_ug=rewards.cost_ug,
        )

    def _update(self, state: TrainState, batch: dict, calib_state) -> tuple[TrainState, dict]:
        """`updates_per_batch` train steps on `batch`, then the new calibration state and data position."""
        step_metrics = {}
        for _ in range(self.updates_per_batch):
            state, step_metrics = self.train_step(state, batch)
        state = state.replace(calib_state=calib_state, data_position=state.data_position + 1)
        return state, step_metrics

    def _metrics(self, rollout: RolloutBatch, rewards: RewardBatch, ids_u: np.ndarray, diag, step_metrics, *,
                 n_tokens: float, seconds: float, rollout_seconds: float, kl_coef: np.ndarray | None = None) -> dict[str, Any]:
        diag = jax.device_get(diag)
        reward_mean_k = diag.pop("reward_mean_k")  # logged as reward/<component>
        metrics = rollout_metrics(rollout, rewards, reward_mean_k, self.runner.scorer.log.datasets, ids_u)
        metrics.update({f"loss/{k}": v for k, v in jax.device_get(step_metrics).items()})
        if kl_coef is not None:  # the scheduled coefficient of this step's update
            metrics["loss/kl_coef"] = float(kl_coef[0])
        metrics["calibration"] = diag
        metrics["perf"] = {"seconds": seconds, "rollout_seconds": rollout_seconds,
                           "tokens_per_second": n_tokens / max(seconds, 1e-9)}
        return metrics

    def train_batch(self, state: TrainState, rollout: RolloutBatch, advantages_b: np.ndarray, *,
                    width: int | None = None, params=None) -> dict:
        """The train step's batch: with `shared_prompt` (and no `width`) the shared-prompt layout
        (prompt_batch.shared_prompt_batch; prompt and completion widths rounded up to a multiple
        of `shared_prompt_bucket`); else the used prefix of the full rows (rounded up likewise so that
        few shapes get compiled), or `width` columns when given (padded with masked pad tokens
        where the rollouts are narrower: the multi-process batch).

        Behaviour log-probs with `recompute_old_logprobs` (the sampler's decode path rounds
        differently from the training forward): with one update per batch the batch carries
        no logp_old_bt and the step uses stop_gradient of its own forward (ratio exactly 1,
        no extra forward pass); with several updates they are recomputed here once, before
        the first update, under `params` (default state.params). Without it, the sampler's
        log-probs are used. With `kl_coef_schedule`, kl_coef_b holds the coefficient of step
        state.data_position on every row.
        """
        if self.shared_prompt and width is None:
            batch = shared_prompt_batch(
                rollout.tokens_bt, rollout.attention_mask_bt, rollout.prompt_len_b, self.group_size,
                bucket=self.shared_prompt_bucket, pad_id=self.runner.engine.pad_id,
                per_token={"loss_mask_bt": rollout.loss_mask_bt, "logp_old_bt": rollout.logp_old_bt})
        else:
            if width is None:
                used = int(rollout.attention_mask_bt.sum(1).max())
                width = min(round_up(used, self.length_bucket), rollout.tokens_bt.shape[1])
            t = width
            pad_id = self.runner.engine.pad_id if t > rollout.tokens_bt.shape[1] else 0  # only read when padding
            batch = {
                "tokens_bt": _columns(rollout.tokens_bt, t, pad_id),
                "attention_mask_bt": _columns(rollout.attention_mask_bt, t),
                "loss_mask_bt": _columns(rollout.loss_mask_bt, t),
                "logp_old_bt": _columns(rollout.logp_old_bt, t),
            }
        batch["advantages_b"] = advantages_b.astype(np.float32)
        if self.kl_coef_schedule is not None:
            coef = float(self.kl_coef_schedule(int(state.data_position)))
            batch["kl_coef_b"] = np.full(advantages_b.shape, coef, np.float32)
        if self.recompute_old_logprobs and self.updates_per_batch == 1:
            del batch["logp_old_bt"]
        elif self.recompute_old_logprobs:
            logp, _ = self.logprobs_fn(state.params if params is None else params, batch)
            batch["logp_old_bt"] = np.asarray(logp) * batch["loss_mask_bt"]
        return batch


def _columns(x_bt: np.ndarray, width: int, fill=0) -> np.ndarray:
    """x_bt[:, :width], padded on the right with `fill` up to `width` columns if narrower."""
    x_bt = x_bt[:, :width]
    if x_bt.shape[1] < width:
        x_bt = np.pad(x_bt, ((0, 0), (0, width - x_bt.shape[1])), constant_values=fill)
    return x_bt


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
    ids_ug = np.broadcast_to(np.asarray(ids_u)[:, None], valid.shape)
    metrics["accuracy"] = per_dataset_mean(rewards.answer_ug[valid], ids_ug[valid], datasets)
    return metrics
