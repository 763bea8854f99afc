"""Checkpoints of the whole TrainState with orbax (atomic, keep N, every k steps).

On disk, step directories `<workdir>/<step>/` hold two items:
  state:    every array leaf of the TrainState (params, optimizer state, reference params,
            calibration state, rng, step, data position), keyed `leaf_00000`, ... in
            pytree order (the graphdef is code, rebuilt by the caller, not saved);
  metadata: JSON {"step", "leaf_paths" (the pytree path of every leaf, checked on
            restore), "user" (the caller's dict: config, data position notes, ...)}.
Orbax writes each step into a temporary directory and renames it when complete, so a
crash never leaves a half-written step that restore would pick up (leftover temporary
directories are cleaned up when the manager opens). A step that is damaged on disk all the
same (a bad disk, a copied run, a manual edit) does not stop a restart: `restore()` warns,
naming it, sets it aside as `<step>.corrupt` and restores the newest intact step.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from recal_jax.data.schema import DataError
from recal_jax.training.train_state import TrainState

log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
    """The checkpoint holds a TrainState of another structure (a different config or code)."""


def _flatten(state: Any) -> tuple[dict[str, Any], list[str], Any]:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(state)
    flat = {f"leaf_{i:05d}": leaf for i, (_, leaf) in enumerate(leaves_with_path)}
    paths = [jax.tree_util.keystr(path) for path, _ in leaves_with_path]
    return flat, paths, treedef


def _abstract_leaf(x: Any) -> jax.ShapeDtypeStruct:
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


class Checkpointer:
    """Saves a TrainState every `save_every` steps, keeping the newest `max_to_keep`.

    maybe_save(state) saves when state.step is a multiple of save_every; save(state)
    always saves (call it at the end of training). Use as a context manager or call
    close() so that pending writes finish.
    """

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 3,
                 save_every: int = 1000, async_save: bool = False):
        if max_to_keep < 1 or save_every < 1:
            raise ValueError(f"Checkpointer needs max_to_keep >= 1 and save_every >= 1; got "
                             f"{max_to_keep}, {save_every}")
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.save_every = save_every
        # The interval is decided here (orbax's policy would also save the first step).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=1,
            enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.workdir, options=options,
                                              item_names=("state", "metadata"))

    def maybe_save(self, state: TrainState, metadata: Mapping | None = None) -> bool:
        """Saves if state.step is due (a multiple of save_every). Returns whether it did."""
        if int(jax.device_get(state.step)) % self.save_every:
            return False
        return self.save(state, metadata)

    def save(self, state: TrainState, metadata: Mapping | None = None) -> bool:
        """Saves now, whatever the step (a step already on disk is not rewritten)."""
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():
            return False
        flat, paths, _ = _flatten(state)
        meta = {"step": step, "leaf_paths": paths, "user": dict(metadata or {})}
        return self._manager.save(step, force=True, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flat), metadata=ocp.args.JsonSave(meta)))

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, abstract_state: TrainState, step: int | None = None
                ) -> tuple[TrainState, dict]:
        """(state, user metadata) of `step`, default: the newest intact step.

        abstract_state: a TrainState of the same structure whose leaves are arrays or
        jax.ShapeDtypeStruct (their shardings are where the restored arrays go).
        Without `step`, a step that cannot be read is skipped with a warning naming it and,
        once an older step has been restored, set aside as `<step>.corrupt` (so that the
        run can save that step again). CheckpointMismatch (another state structure) is
        raised at once; DataError when no step can be read (nothing is set aside then).
        """
        if step is not None:
            return self._restore_step(abstract_state, step)
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.workdir}")
        unreadable: list[tuple[int, str]] = []
        for candidate in steps:
            try:
                restored = self._restore_step(abstract_state, candidate)
            except CheckpointMismatch:
                raise
            except Exception as e:  # orbax/tensorstore/json raise many types for damaged files
                reason = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                log.warning("checkpoint %s/%d is unreadable (%s); trying the previous one", self.workdir,
                            candidate, reason)
                unreadable.append((candidate, reason))
                continue
            for bad, _ in unreadable:
                self._set_aside(bad)
            if unreadable:
                log.warning("restored the intact checkpoint %s/%d", self.workdir, candidate)
            return restored
        raise DataError(f"{self.workdir}: no checkpoint can be read ("
                        + "; ".join(f"step {k}: {why}" for k, why in unreadable) + ")")

    def _restore_step(self, abstract_state: TrainState, step: int) -> tuple[TrainState, dict]:
        meta = self._manager.restore(step, args=ocp.args.Composite(
            metadata=ocp.args.JsonRestore()))["metadata"]
        abstract_flat, paths, treedef = _flatten(abstract_state)
        if meta["leaf_paths"] != paths:
            missing = sorted(set(meta["leaf_paths"]) ^ set(paths))[:5]
            raise CheckpointMismatch(
                f"checkpoint {self.workdir}/{step} does not match the given state structure "
                f"({len(meta['leaf_paths'])} leaves saved, {len(paths)} expected; first "
                f"differences: {missing})")
        target = {k: _abstract_leaf(v) for k, v in abstract_flat.items()}
        flat = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]
        leaves = [flat[k] for k in abstract_flat]
        return jax.tree_util.tree_unflatten(treedef, leaves), meta["user"]

    def _set_aside(self, step: int) -> None:
        """Renames the damaged step directory to `<step>.corrupt` (kept for inspection; orbax
        no longer lists it). With several processes the primary one renames it."""
        if jax.process_index() == 0:
            src = os.path.join(self.workdir, str(step))
            dst, n = f"{src}.corrupt", 1
            while os.path.exists(dst):
                dst, n = f"{src}.corrupt{n}", n + 1
            if os.path.isdir(src):
                os.rename(src, dst)
                log.warning("moved the unreadable checkpoint %s aside to %s", src, dst)
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def restore_latest(workdir: str | os.PathLike, abstract_state: TrainState
                   ) -> tuple[TrainState, dict] | None:
    """(state, user metadata) of the newest checkpoint in workdir, or None if there is none."""
    if not os.path.isdir(workdir):
        return None
    with Checkpointer(workdir) as ckpt:
        if ckpt.latest_step() is None:
            return None
        return ckpt.restore(abstract_state)
