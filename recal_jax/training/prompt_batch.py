"""The shared-prompt layout of a GRPO batch (recal_jax.training.train_step's module doc).

The G rollouts of a group answer the same prompt, so the train step needs each prompt once
and the rows' completions only. From the rollouts' full rows (prompt then completion,
right-padded, as RolloutBatch holds them) this builds:

  prompt_tokens_up i32[U, P], prompt_len_u i32[U]: group u's prompt, right-padded;
  tokens_bt, attention_mask_bt, loss_mask_bt [B, C] (and any other per-token array, e.g.
  logp_old_bt): row b's completion, position c = full position prompt_len_b + c.

P and C are rounded up to a multiple of `bucket` so that few shapes get compiled.
"""

from __future__ import annotations

import numpy as np

from recal_jax.shapes import round_up


def shared_prompt_batch(tokens_bt: np.ndarray, attention_mask_bt: np.ndarray, prompt_len_b: np.ndarray,
                        group_size: int, *, bucket: int, pad_id: int = 0,
                        per_token: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The shared-prompt arrays of B = U * G full rows (row b = u * G + g).

    tokens_bt i32[B, T], attention_mask_bt bool[B, T] (each row's real tokens first, then
    pads), prompt_len_b i32[B] (1 <= prompt_len_b <= real length). per_token: further [B, T]
    arrays aligned to tokens_bt (loss mask, sampler log-probs), cut to their completion
    columns (0 past a row's end). Raises ValueError when a row is not right-padded or the
    rows of a group do not share one prompt.
    """
    tokens_bt, mask_bt = np.asarray(tokens_bt), np.asarray(attention_mask_bt).astype(bool)
    prompt_len_b = np.asarray(prompt_len_b, np.int64)
    b, t = tokens_bt.shape
    if group_size < 1 or b % group_size:
        raise ValueError(f"{b} rows are not a whole number of groups of {group_size}")
    if mask_bt.shape != (b, t) or prompt_len_b.shape != (b,):
        raise ValueError(f"attention_mask_bt {mask_bt.shape} and prompt_len_b {prompt_len_b.shape} must "
                         f"match tokens_bt {tokens_bt.shape}")
    length_b = mask_bt.sum(1)
    if not np.array_equal(mask_bt, np.arange(t)[None, :] < length_b[:, None]):
        raise ValueError("the shared-prompt layout needs right-padded rows (real tokens first, then pads)")
    if np.any(prompt_len_b < 1) or np.any(prompt_len_b > length_b):
        raise ValueError("every row needs a prompt of at least one token, within its real tokens")
    u = b // group_size
    first_b = np.repeat(np.arange(u) * group_size, group_size)
    p = int(prompt_len_b.max())
    prompt_cols = np.arange(p)[None, :]
    in_prompt_bp = prompt_cols < prompt_len_b[:, None]
    same = (prompt_len_b == prompt_len_b[first_b]) & np.all(
        np.where(in_prompt_bp, tokens_bt[:, :p] == tokens_bt[first_b, :p], True), axis=1)
    if not same.all():
        raise ValueError(f"rows {np.flatnonzero(~same)[:5].tolist()} do not share their group's prompt")

    width_p = round_up(p, bucket)
    prompt_len_u = prompt_len_b[::group_size]
    prompt_tokens_up = np.full((u, width_p), pad_id, np.int32)
    prompt_tokens_up[:, :p] = np.where(in_prompt_bp[::group_size], tokens_bt[::group_size, :p], pad_id)

    completion_len_b = length_b - prompt_len_b
    width_c = round_up(max(int(completion_len_b.max()), 1), bucket)
    cols_bc = prompt_len_b[:, None] + np.arange(width_c)[None, :]
    real_bc = np.arange(width_c)[None, :] < completion_len_b[:, None]
    source_bc = np.minimum(cols_bc, t - 1)

    def completion(x_bt: np.ndarray, fill) -> np.ndarray:
        x_bt = np.asarray(x_bt)
        return np.where(real_bc, np.take_along_axis(x_bt, source_bc, axis=1), fill).astype(x_bt.dtype)

    batch = {
        "prompt_tokens_up": prompt_tokens_up,
        "prompt_len_u": prompt_len_u.astype(np.int32),
        "tokens_bt": completion(tokens_bt, pad_id).astype(np.int32),
        "attention_mask_bt": real_bc,
    }
    for key, x_bt in (per_token or {}).items():
        if np.shape(x_bt) != (b, t):
            raise ValueError(f"{key} has shape {np.shape(x_bt)}; expected {(b, t)}")
        batch[key] = completion(x_bt, 0)
    return batch
