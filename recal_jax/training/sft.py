"""Stage 2, the SFT warm start: teacher-forced training on protocol demonstrations, for a
fixed number of steps or until a held-out criterion is met. `warm_start` holds all of it."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from recal_jax.data.registry import SUITES
from recal_jax.routing.pools import call_many_sync
from recal_jax.shapes import SEQ_LEN_BUCKET, round_up
from recal_jax.training.builders import prompt_builder, suite_request
from recal_jax.training.components import sft_optim_config
from recal_jax.training.mesh import batch_parallelism
from recal_jax.training.optim import make_optimizer
from recal_jax.training.run_config import ConfigError, SftSection
from recal_jax.training.sft_data import COPY_CHECKS, Demonstration, build_demonstrations, pack_demonstrations
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import make_sft_step

if TYPE_CHECKING:
    from recal_jax.training.setup import Run

log = logging.getLogger(__name__)

TRAIN_KEYS = ("tokens_bt", "attention_mask_bt", "loss_mask_bt")
_CHECK_MASK = {"answer": "answer_mask_bt", "all": "copy_mask_bt"}


@dataclasses.dataclass(frozen=True)
class HeldOutCriterion:
    """Stop SFT once the copy accuracy on held-out demonstrations (never trained on) reaches
    `target`, checked every `every` steps from `min_steps` on. Copy accuracy: the share of
    demonstrations whose copied segments the policy predicts token for token under teacher
    forcing: with check='answer' the final-answer segment (`<answer> .. </answer>`, copied out of
    the <information> block); with check='all' also every query it copies (a decomposition's
    sub-questions, whose subjects come from the question and from the previous reply)."""

    demos: Sequence[Demonstration]
    target: float
    every: int = 50
    min_steps: int = 0
    check: str = "answer"

    def __post_init__(self):
        if self.check not in COPY_CHECKS:
            raise ValueError(f"HeldOutCriterion.check must be one of {COPY_CHECKS}, got {self.check!r}")
        if not self.demos:
            raise ValueError("HeldOutCriterion needs held-out demonstrations")
        if not any(d.answer_span[1] > d.answer_span[0] for d in self.demos):
            raise ValueError("HeldOutCriterion: the demonstrations have no answer segment "
                             "(single_call has nothing to copy; use a fixed step count)")
        if not 0.0 < self.target <= 1.0 or self.every < 1:
            raise ValueError(f"HeldOutCriterion needs 0 < target <= 1 and every >= 1, got {self.target}, {self.every}")


def segment_hits(pred_bt, tokens_bt, mask_bt):
    """bool[B]: every masked token of tokens_bt is predicted (pred_bt[:, t-1] == tokens_bt[:, t]),
    for rows with a masked token; pred_bt: the argmax at each position [B, T-1]."""
    right_bt = (pred_bt == tokens_bt[:, 1:]) | ~mask_bt[:, 1:]
    return jnp.all(right_bt, axis=-1) & jnp.any(mask_bt, axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _copy_hits(graphdef, params, tokens_bt, attention_mask_bt, mask_bt) -> jax.Array:
    logits_btv = nnx.merge(graphdef, params)(tokens_bt, attention_mask_bt)
    return segment_hits(jnp.argmax(logits_btv[:, :-1], axis=-1), tokens_bt, mask_bt)


def answer_copy_accuracy(state: TrainState, arrays: dict[str, np.ndarray], batch_size: int = 64,
                         check: str = "answer") -> float:
    """Share of packed demonstrations (with an answer segment) whose copied segments (`check`,
    see HeldOutCriterion) are predicted exactly."""
    has_answer = arrays["answer_mask_bt"].any(axis=1)
    mask = arrays[_CHECK_MASK[check]]
    hits = []
    for start in range(0, len(has_answer), batch_size):
        sl = slice(start, start + batch_size)
        hits.append(np.asarray(_copy_hits(state.graphdef, state.params, arrays["tokens_bt"][sl],
                                          arrays["attention_mask_bt"][sl], mask[sl])))
    return float(np.concatenate(hits)[has_answer].mean())


def run_sft(state: TrainState, sft_step: Callable, demos: Sequence[Demonstration], *, steps: int,
            batch_size: int, seq_len: int, pad_id: int, seed: int,
            log_fn: Callable[[int, dict], None] | None = None, progress: bool = True,
            until: HeldOutCriterion | None = None, switch: SwitchAfterCopy | None = None,
            copy_weight: float = 1.0) -> tuple[TrainState, dict]:
    """At most `steps` updates on batches drawn without replacement (reshuffled each epoch);
    with `until`, stops early once its criterion holds; with `switch` (needs `until`), trains on
    switch.demos from the first check whose accuracy reaches switch.at. Returns (state, info) with
    info = {"steps": updates made, "heldout_copy_accuracy": last check (absent without `until`),
    "switched_at_step": the update after which switch.demos took over (only when they did)}.
    copy_weight multiplies the loss weight of every copied segment (the queries and the answer)."""
    if not demos:
        raise ValueError("SFT needs at least one demonstration")
    if switch is not None and (until is None or len(switch.demos) != len(demos)):
        raise ValueError("SFT's demonstration switch needs a held-out criterion and as many demonstrations "
                         f"as it replaces ({len(switch.demos)} for {len(demos)})")
    pack = functools.partial(_train_arrays, seq_len=seq_len, pad_id=pad_id, copy_weight=copy_weight)
    arrays = pack(demos)
    heldout = pack_demonstrations(until.demos, seq_len, pad_id) if until is not None else None
    n = len(demos)
    if batch_size > n:
        raise ValueError(f"SFT batch_size {batch_size} exceeds the {n} demonstrations")
    rng = np.random.default_rng(seed)
    order, cursor = rng.permutation(n), 0
    info: dict = {"steps": 0}
    bar = tqdm(range(steps), desc="sft", disable=not progress, leave=False)
    for step in bar:
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        idx = np.sort(order[cursor:cursor + batch_size])
        cursor += batch_size
        state, metrics = sft_step(state, {k: v[idx] for k, v in arrays.items()})
        info["steps"] = step + 1
        check = until is not None and (step + 1) % until.every == 0
        log_now = log_fn is not None and (step % 10 == 0 or step == steps - 1 or check)
        # reading the metrics waits for the step: only on the steps that log, so that the host
        # prepares the next batches while the device trains
        m = {k: float(v) for k, v in metrics.items()} if log_now or (progress and step % 10 == 0) else {}
        done = False
        if check:
            accuracy = answer_copy_accuracy(state, heldout, check=until.check)
            info["heldout_copy_accuracy"] = m["heldout_copy_accuracy"] = accuracy
            done = step + 1 >= until.min_steps and m["heldout_copy_accuracy"] >= until.target
            if switch is not None and "switched_at_step" not in info and accuracy >= switch.at and not done:
                arrays, info["switched_at_step"] = pack(switch.demos), step + 1
                log.warning("SFT: held-out copy accuracy %.3f at step %d: switching demonstrations", accuracy, step + 1)
        if log_now:
            log_fn(step, m)
        if "loss" in m:
            bar.set_postfix(loss=f"{m['loss']:.3f}")
        if done:
            break
    jax.block_until_ready(state.params)  # the queued steps belong to SFT's time, not the next phase's
    return state, info


def _train_arrays(demos: Sequence[Demonstration], *, seq_len: int, pad_id: int, copy_weight: float) -> dict:
    """The TRAIN_KEYS arrays of `demos`, the copied segments' loss weights times copy_weight."""
    arrays = pack_demonstrations(demos, seq_len, pad_id)
    arrays["loss_mask_bt"] = arrays["loss_mask_bt"] * np.where(arrays["copy_mask_bt"], np.float32(copy_weight), 1)
    return {k: arrays[k] for k in TRAIN_KEYS}


@dataclasses.dataclass(frozen=True)
class SwitchAfterCopy:
    """Train on `demos` (one for each demonstration they replace, in the same order) once the
    held-out copy accuracy reaches `at` (sft.rename_after_copy: the renamed demonstrations)."""

    demos: Sequence[Demonstration]
    at: float


def split_heldout(demos: Sequence[Demonstration], questions: dict[str, str], num_questions: int,
                  seed: int) -> tuple[list[Demonstration], list[Demonstration]]:
    """(train, held-out): every demonstration of `num_questions` randomly drawn distinct
    questions is held out, so that no held-out question is ever trained on (a training split
    may repeat questions). `questions` maps record id -> question text."""
    distinct = sorted({questions[d.record_id] for d in demos})
    if num_questions >= len(distinct):
        raise ValueError(f"cannot hold out {num_questions} of {len(distinct)} distinct questions")
    rng = np.random.default_rng(seed)
    held = {distinct[i] for i in rng.choice(len(distinct), size=num_questions, replace=False)}
    train = [d for d in demos if questions[d.record_id] not in held]
    return train, [d for d in demos if questions[d.record_id] in held]


def warm_start(run: "Run", sft: SftSection, key, *, log_fn: Callable[[int, dict], None] | None = None,
               progress: bool = True) -> tuple[TrainState, dict]:
    """SFT on the suite's demonstrations -> (the SFT TrainState, info): info["steps"] = updates
    made, "heldout_copy_accuracy" with sft.until_copy_accuracy, "notes" = the sizes adapted
    to a small log. No steps: the policy as built."""
    sft_opt = make_optimizer(sft_optim_config(sft))
    state = TrainState.create(run.model, sft_opt, rng=key)
    if sft.steps <= 0:
        return state, {"steps": 0}
    demos = demonstrations(run, sft)
    notes: list[str] = []
    until = switch = None
    if sft.rename_after_copy:  # the world's own names first; the renamed share once the copy holds
        renamed, demos = demos, demonstrations(run, dataclasses.replace(sft, rename_share=0.0))
    if sft.until_copy_accuracy:
        train, until, note = _held_out(run, sft, demos)
        notes += [note] if note else []
        if sft.rename_after_copy:
            kept = {id(d) for d in train}
            switch = SwitchAfterCopy([r for r, d in zip(renamed, demos) if id(d) in kept], at=sft.rename_after_copy)
        demos = train
    batch_size = sft.batch_size
    if batch_size > len(demos):  # a small log: as many demonstrations per batch as the log has
        shards = batch_parallelism(run.mesh)
        batch_size = len(demos) - len(demos) % shards
        if batch_size < 1:
            raise ConfigError(f"--config.sft.batch_size={sft.batch_size}: the log has only {len(demos)} "
                              f"demonstrations, fewer than the {shards} batch shards of the mesh (--config.mesh.*)")
        notes.append(f"sft.batch_size={sft.batch_size} exceeds the {len(demos)} demonstrations of this log; "
                     f"using {batch_size}")
    for note in notes:
        log.warning("SFT: %s", note)
    step = make_sft_step(state.graphdef, sft_opt, mesh=run.mesh)
    demo_len = round_up(max(len(d.token_ids) for d in demos), SEQ_LEN_BUCKET)
    if switch is not None:
        demo_len = max(demo_len, round_up(max(len(d.token_ids) for d in switch.demos), SEQ_LEN_BUCKET))
    state, info = run_sft(state, step, demos, steps=sft.steps, batch_size=batch_size,
                          seq_len=min(demo_len, run.seq_len), pad_id=run.tokenizer.pad_id, seed=run.cfg.run.seed,
                          log_fn=log_fn, progress=progress, until=until, switch=switch, copy_weight=sft.copy_weight)
    log.warning("SFT: %d steps%s", info["steps"], "" if until is None else
                f", held-out copy accuracy ({sft.copy_check}) {info.get('heldout_copy_accuracy', float('nan')):.3f}")
    return state, {**info, **({"notes": notes} if notes else {})}


def demonstrations(run: "Run", sft: SftSection) -> list[Demonstration]:
    """The demonstrations of the train split (sft_data.build_demonstrations with sft's options),
    replies taken from the run's own train pool, then those of sft.fresh_worlds re-drawn worlds."""
    runner = run.train_runner
    pool = runner.engine.pool
    reply = lambda model, query, record: call_many_sync(pool, [(model, query, record)])[0].text  # noqa: E731
    demos = _demonstrations_of(run, sft, run.suite.train, runner.prompt_ids, reply, run.cfg.run.seed)
    for k in range(sft.fresh_worlds):
        demos += _fresh_world_demonstrations(run, sft, k)
    return demos


def _demonstrations_of(run: "Run", sft: SftSection, log_, prompt_ids, reply, seed: int) -> list[Demonstration]:
    return build_demonstrations(
        log_, run.tokenizer.encode, prompt_ids, reply, run.train_runner.engine.information_ids,
        rule=sft.routing, best_prob=sft.best_prob, query_style=sft.query_style, reply_swap=sft.reply_swap,
        answer_weight=sft.answer_weight, think=sft.think, seed=seed, planner=run.planner,
        direct_share=sft.direct_share, renamer=SUITES[run.cfg.run.suite].renamer, rename_share=sft.rename_share,
    )


def _fresh_world_demonstrations(run: "Run", sft: SftSection, k: int) -> list[Demonstration]:
    """The demonstrations of every question (both splits) of the suite's k-th re-drawn world."""
    fresh, reply_text = SUITES[run.cfg.run.suite].resample(suite_request(run.cfg), k)
    log_ = dataclasses.replace(fresh.train, records=fresh.train.records + fresh.test.records)
    prompts = prompt_builder(run.cfg, log_, run.tokenizer)
    return _demonstrations_of(run, sft, log_, prompts, lambda model, query, record: reply_text(model, query),
                              run.cfg.run.seed + 1 + k)


def _held_out(run: "Run", sft: SftSection, demos: list[Demonstration]):
    """(training demonstrations, HeldOutCriterion, note or ''): the demonstrations of
    sft.heldout_questions questions are held out to decide when to stop (at most a quarter
    of the distinct questions on a small log). With sft.fresh_worlds they are questions of one
    more re-drawn world, whose names no training demonstration shows."""
    if sft.fresh_worlds:
        heldout = _fresh_world_demonstrations(run, sft, sft.fresh_worlds)
        picks = np.random.default_rng(run.cfg.run.seed).choice(len(heldout), size=min(sft.heldout_questions,
                                                                                     len(heldout)), replace=False)
        return demos, HeldOutCriterion([heldout[i] for i in sorted(picks)], target=sft.until_copy_accuracy,
                                       every=sft.check_every, min_steps=sft.min_steps, check=sft.copy_check), ""
    questions = {r.id: r.question for r in run.suite.train.records}
    distinct = len({questions[d.record_id] for d in demos})
    n_held, note = sft.heldout_questions, ""
    if n_held > distinct // 4:
        n_held = max(distinct // 4, 1)
        note = (f"sft.heldout_questions={sft.heldout_questions} is more than a quarter of the {distinct} distinct "
                f"training questions; holding out {n_held}")
    train, heldout = split_heldout(demos, questions, n_held, run.cfg.run.seed)
    return train, HeldOutCriterion(heldout, target=sft.until_copy_accuracy, every=sft.check_every,
                                   min_steps=sft.min_steps, check=sft.copy_check), note
