"""Benchmark: the GRPO train step on full rows vs the shared-prompt layout of the same rollouts.

    python -m experiments.bench_shared_prompt                      # the quickstart's shapes, CPU
    python -m experiments.bench_shared_prompt --preset=qwen2.5-0.5b --dtype=bfloat16 \\
        --groups=64 --prompt_len=200 --completion_len=120 --microbatches=4   # on a GPU

Both layouts run in this process on the same rollouts: U groups of G rows, each group's
prompt of about --prompt_len tokens (lengths drawn in [prompt_len / 2, prompt_len]) and each
row's completion of about --completion_len tokens (in [completion_len / 2,
completion_len]), laid out as the rollout engine does (prompt then completion,
right-padded); both batches come from GRPOIteration.train_batch, as a run builds them
(the full layout: the used prefix of the rows, which are as wide as the engine makes them,
components.sequence_length with --max_total_tokens; the shared-prompt layout: prompt_batch). The first step of each is checked to give the same loss and gradient norm;
then each is timed after warm-up (median over --runs steps, each waited for). Defaults: the
quickstart's GRPO step (tiny 2-layer policy, vocabulary 1,024, 8 x 8 rollouts, prompts of
about 41 tokens, completions of 14, KL term with its reference forward in the step).
Prints a markdown table and the machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from types import SimpleNamespace

import jax
import numpy as np
from flax import nnx

from recal_jax.models import ModelConfig, Qwen2
from recal_jax.training.mesh import make_mesh
from recal_jax.training.optim import OptimConfig, make_optimizer
from recal_jax.training.run_config import GrpoSection
from recal_jax.training.components import sequence_length
from recal_jax.training.iteration import GRPOIteration
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import LossConfig, make_train_step


def rollout_rows(rng: np.random.Generator, groups: int, group_size: int, prompt_len: int, completion_len: int,
                 vocab: int, pad_id: int, seq_len: int = 0):
    """(tokens_bt, attention_mask_bt, loss_mask_bt, prompt_len_b): the engine's row layout;
    token ids in [0, vocab), pads pad_id, rows at least seq_len wide (the engine's T)."""
    p_u = rng.integers(max(prompt_len // 2, 1), prompt_len + 1, groups)
    c_b = rng.integers(max(completion_len // 2, 1), completion_len + 1, groups * group_size)
    t = max(int(p_u.max() + c_b.max()), seq_len)
    tokens = np.full((groups * group_size, t), pad_id, np.int32)
    loss = np.zeros(tokens.shape, np.float32)
    prompts = [rng.integers(0, vocab, n) for n in p_u]
    for b in range(groups * group_size):
        p, c = p_u[b // group_size], c_b[b]
        tokens[b, :p] = prompts[b // group_size]
        tokens[b, p:p + c] = rng.integers(0, vocab, c)
        loss[b, p:p + c] = 1.0
    mask = np.arange(t)[None, :] < (np.repeat(p_u, group_size) + c_b)[:, None]
    return tokens, mask, loss, np.repeat(p_u, group_size).astype(np.int32)


def layouts(args) -> tuple[dict, dict]:
    """(full, shared): the train batches GRPOIteration.train_batch builds from the same
    rollouts, without and with grpo.shared_prompt (old log-probs left to the step)."""
    rng = np.random.default_rng(args.seed)
    pad_id = args.vocab_size - 1
    seq_len = sequence_length(GrpoSection(max_total_tokens=args.max_total_tokens), [args.prompt_len])
    tokens, mask, loss, plen = rollout_rows(rng, args.groups, args.group_size, args.prompt_len,
                                            args.completion_len, vocab=pad_id, pad_id=pad_id, seq_len=seq_len)
    rollout = SimpleNamespace(tokens_bt=tokens, attention_mask_bt=mask, loss_mask_bt=loss, prompt_len_b=plen,
                              logp_old_bt=np.zeros(tokens.shape, np.float32))
    adv = rng.standard_normal(len(plen)).astype(np.float32)

    def batch(shared: bool) -> dict:
        iteration = GRPOIteration(runner=SimpleNamespace(engine=SimpleNamespace(pad_id=pad_id)), calibration=None,
                                  train_step=None, logprobs_fn=None, group_size=args.group_size,
                                  shared_prompt=shared)
        return iteration.train_batch(None, rollout, adv)

    return batch(False), batch(True)


def time_steps(step, state, batch, runs: int) -> tuple[float, dict]:
    state, metrics = step(state, batch)  # compiles
    first = jax.device_get(metrics)
    jax.block_until_ready(state.params)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready((state.params, metrics))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--num_layers", type=int, default=2, help="0 = the preset's")
    ap.add_argument("--vocab_size", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--group_size", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=41)
    ap.add_argument("--completion_len", type=int, default=14)
    ap.add_argument("--max_total_tokens", type=int, default=24, help="grpo.max_total_tokens: the rows' width T")
    ap.add_argument("--microbatches", type=int, default=1)
    ap.add_argument("--kl_coef", type=float, default=0.001)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    overrides = {"vocab_size": args.vocab_size, "dtype": args.dtype}
    if args.num_layers:
        overrides["num_layers"] = args.num_layers
    config = ModelConfig.preset(args.preset, **overrides)
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-5, warmup_steps=1, total_steps=10_000))
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    full, shared = layouts(args)
    rows = []
    for name, batch in (("full rows", full), ("shared prompt", shared)):
        state = TrainState.create(Qwen2(config, rngs=nnx.Rngs(args.seed)), optimizer, rng=jax.random.key(0),
                                  with_reference=args.kl_coef > 0)
        step = make_train_step(state.graphdef, optimizer, LossConfig(kl_coef=args.kl_coef), mesh, args.microbatches)
        seconds, first = time_steps(step, state, batch, args.runs)
        pieces = (f"{batch['tokens_bt'].shape[0]} x {batch['tokens_bt'].shape[1]}" if name == "full rows" else
                  f"{batch['prompt_tokens_up'].shape[0]} x {batch['prompt_tokens_up'].shape[1]} + "
                  f"{batch['tokens_bt'].shape[0]} x {batch['tokens_bt'].shape[1]}")
        rows.append((name, pieces, seconds, first))
    (_, _, t_full, m_full), (_, _, t_shared, m_shared) = rows
    for key in ("loss", "grad_norm"):
        if not np.isclose(m_full[key], m_shared[key], rtol=1e-2, atol=1e-6):
            raise SystemExit(f"the layouts disagree on {key}: {m_full[key]} vs {m_shared[key]}")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, devices: {jax.devices()}")
    print(f"model: {args.preset} ({config.num_layers} layers, vocab {config.vocab_size}, {args.dtype}); "
          f"{args.groups} x {args.group_size} rollouts, prompts ~{args.prompt_len}, completions ~{args.completion_len} "
          f"tokens; median of {args.runs} steps\n")
    print("| layout | tokens run (rows x width) | step (ms) | full / this |")
    print("|---|---|---:|---:|")
    for name, pieces, seconds, _ in rows:
        print(f"| {name} | {pieces} | {seconds * 1e3:.1f} | {t_full / seconds:.2f}x |")


if __name__ == "__main__":
    main()
