"""Stage 2(b), `dataset` scale: divide advantages by each dataset's RMS (batch or EMA).

a f32[U,G,C] (group-centred advantages, C components), valid bool[U,G], dataset_ids i32[U].
Per-dataset statistics are segment sums over instances (no loop over datasets).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dataset_moments(a_ugc, valid_ug, dataset_ids_u, num_datasets: int):
    """(second moment f32[D,C] = mean of a^2 over the dataset's valid rollouts, count i32[D])."""
    a = jnp.asarray(a_ugc, jnp.float32)
    valid = jnp.asarray(valid_ug, bool)
    ids = jnp.asarray(dataset_ids_u, jnp.int32)
    sq_uc = jnp.sum(jnp.where(valid[..., None], a * a, 0.0), axis=1)
    cnt_u = jnp.sum(valid, axis=1).astype(jnp.int32)
    sq_dc = jax.ops.segment_sum(sq_uc, ids, num_segments=num_datasets)
    cnt_d = jax.ops.segment_sum(cnt_u, ids, num_segments=num_datasets)
    m2_dc = sq_dc / jnp.maximum(cnt_d, 1).astype(jnp.float32)[:, None]
    return m2_dc, cnt_d


def _apply(a_ugc, valid_ug, dataset_ids_u, use_dc, m2_dc, eps):
    s_dc = jnp.sqrt(m2_dc)
    divisor_dc = jnp.where(use_dc & (s_dc >= eps), s_dc + eps, 1.0)
    scaled = a_ugc / divisor_dc[dataset_ids_u][:, None, :]
    return jnp.where(jnp.asarray(valid_ug, bool)[..., None], scaled, 0.0), divisor_dc


def dataset_scale(a_ugc, valid_ug, dataset_ids_u, *, num_datasets: int, min_count: int = 8, eps: float = 1e-6):
    """Batch-statistics dataset scale -> (a / (s_d + eps) f32[U,G,C], divisor f32[D,C]).

    s_d = sqrt(mean of a^2 over ALL valid rollouts of dataset d in the batch). A dataset with
    fewer than `min_count` valid rollouts, or s_d < eps, is left unscaled (divisor 1).
    """
    a = jnp.asarray(a_ugc, jnp.float32)
    m2_dc, cnt_d = dataset_moments(a, valid_ug, dataset_ids_u, num_datasets)
    use_dc = jnp.broadcast_to((cnt_d >= min_count)[:, None], m2_dc.shape)
    return _apply(a, valid_ug, dataset_ids_u, use_dc, m2_dc, eps)


def dataset_scale_ema(a_ugc, valid_ug, dataset_ids_u, m2_dc, initialized_dc, *, num_datasets: int,
                      decay: float = 0.9, min_count: int = 8, eps: float = 1e-6):
    """EMA dataset scale -> (scaled f32[U,G,C], divisor f32[D,C], new m2 f32[D,C], new init bool[D,C]).

    A dataset with >= min_count valid rollouts in this batch updates its statistic:
    m2 <- batch m2 on its first such batch, else decay * m2 + (1 - decay) * batch m2.
    Otherwise (absent, or too few rollouts) the statistic is unchanged. The advantages are
    divided by sqrt(m2) + eps wherever the statistic is initialised and sqrt(m2) >= eps.
    """
    a = jnp.asarray(a_ugc, jnp.float32)
    batch_m2, cnt_d = dataset_moments(a, valid_ug, dataset_ids_u, num_datasets)
    update = jnp.broadcast_to((cnt_d >= min_count)[:, None], batch_m2.shape)
    init = jnp.asarray(initialized_dc, bool)
    old = jnp.asarray(m2_dc, jnp.float32)
    blended = jnp.where(init, decay * old + (1.0 - decay) * batch_m2, batch_m2)
    new_m2 = jnp.where(update, blended, old)
    new_init = init | update
    scaled, divisor = _apply(a, valid_ug, dataset_ids_u, new_init, new_m2, eps)
    return scaled, divisor, new_m2, new_init
