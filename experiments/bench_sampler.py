"""Throughput of the jit sampler vs transformers `generate` (PyTorch CPU), plus training
tokens/s of the same tiny model. Prints a markdown table.

    python -m experiments.bench_sampler [--preset tiny] [--prompt-len 32] [--new 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from recal_jax.models import ModelConfig, Qwen2, save_pretrained
from recal_jax.rollout.sampler import Sampler


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_ours(model, prompts, mask, new: int, repeats: int) -> float:
    sampler = Sampler(model, pad_id=0, eos_id=None)

    def run():
        out = sampler.sample(prompts, mask, jax.random.key(0), max_new_tokens=new, greedy=True)
        jax.block_until_ready(out)

    run()  # warm-up (compile)
    return prompts.shape[0] * new / _best_of(run, repeats)


def bench_hf(path: str, prompts, mask, new: int, repeats: int, threads: int) -> float:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids, att = torch.tensor(prompts, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def run():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=att, do_sample=False,
                           max_new_tokens=new, min_new_tokens=new, eos_token_id=None,
                           pad_token_id=0)

    run()  # warm-up
    return prompts.shape[0] * new / _best_of(run, repeats)


def bench_train(model, batch: int, seq: int, steps: int) -> float:
    """Tokens/s of jit(forward + backward of mean next-token cross-entropy) + adam update."""
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, tokens_bt):
        def loss_fn(model):
            logits_btv = model(tokens_bt[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(
                logits_btv, tokens_bt[:, 1:]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    vocab = model.config.vocab_size
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, vocab, jnp.int32)
    jax.block_until_ready(step(model, optimizer, tokens))  # warm-up (compile)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(model, optimizer, tokens)
    jax.block_until_ready(loss)
    if not np.isfinite(float(loss)):
        raise RuntimeError(f"non-finite training loss {float(loss)}")
    return batch * seq * steps / (time.perf_counter() - t0)


def machine() -> str:
    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (f"{dev.platform}:{dev.device_kind}, host {cpu}, {os.cpu_count()} cpus, "
            f"jax {jax.__version__}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--repeats", type=int, default=3)
    # 2 threads is the reference setting; 1 thread is added because on an oversubscribed
    # host torch's OpenMP workers can stall each other (then 1 thread is much faster).
    ap.add_argument("--hf-threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-seq", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=10)
    args = ap.parse_args()

    cfg = ModelConfig.preset(args.preset)
    model = Qwen2(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as path:
        save_pretrained(model, path)
        for b in args.batches:
            prompts = rng.integers(1, cfg.vocab_size, size=(b, args.prompt_len)).astype(np.int32)
            mask = np.ones_like(prompts, bool)
            ours = bench_ours(model, prompts, mask, args.new, args.repeats)
            hf = [bench_hf(path, prompts, mask, args.new, args.repeats, t)
                  for t in args.hf_threads]
            rows.append((f"generate, batch {b}, {args.new} new (prompt {args.prompt_len})",
                         ours, hf))
    train = bench_train(model, args.train_batch, args.train_seq, args.train_steps)

    print(f"\nMachine: {machine()}; torch CPU. Model preset `{args.preset}` (random init, "
          f"float32), greedy, no EOS, best of {args.repeats} after warm-up. Tokens/s.\n")
    hf_cols = [f"HF generate ({t} thr)" for t in args.hf_threads]
    ratio_cols = [f"ours / HF ({t} thr)" for t in args.hf_threads]
    print("| workload | recal_jax | " + " | ".join(hf_cols + ratio_cols) + " |")
    print("|---|---:|" + "---:|" * (2 * len(hf_cols)))
    for name, ours, hf in rows:
        cells = [f"{h:,.0f}" for h in hf] + [f"{ours / h:.1f}" for h in hf]
        print(f"| {name} | {ours:,.0f} | " + " | ".join(cells) + " |")
    dash = " | ".join(["-"] * (2 * len(hf_cols)))
    print(f"| train (fwd+bwd+adam), batch {args.train_batch} x seq {args.train_seq} "
          f"| {train:,.0f} | {dash} |")


if __name__ == "__main__":
    main()
