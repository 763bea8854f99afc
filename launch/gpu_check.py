"""Accelerator check: sharded GRPO train steps and one jit-sampler rollout batch of a
RANDOMLY initialised Qwen2 model, reporting tokens/s and model FLOPs utilisation (MFU).

    bash launch/gpu_check.sh                     # qwen2.5-0.5b, bf16, fsdp over all devices
    bash launch/gpu_check.sh --preset=qwen2.5-1.5b --microbatches=4

Run it on the accelerator and paste the table it prints at the end (it names the device
kind and count) into the README's performance section; numbers without the device name
are meaningless. The weights are random and the data synthetic (random tokens, random
advantages, loss mask 1 on the second half of each row), so only speed is measured.

Training: one warm-up (compile) step, then `--steps` timed steps;
tokens/s = batch * seq_len * steps / time.
MFU = (training FLOPs per token * tokens/s) / (peak bf16 dense FLOP/s per device * devices),
with the usual model-FLOPs estimate (PaLM, appendix B):

    FLOPs/token = 6 * N + 12 * L * H * Dh * T

  N: every parameter except the input embedding table, plus D * V for the output
     projection (with tied embeddings it reuses the embedding matrix, yet still costs
     2 * D * V FLOPs per token in the forward pass, so it is counted);
  12 * L * H * Dh * T: attention scores Q K^T and the weighted sum A V (2 * 2 * T * H * Dh
     FLOPs per token per layer forward, x3 for forward + backward), causal masking
     counted as full attention (no saving for the masked half);
  x 4/3 when `--kl_coef > 0`: the frozen reference forward (2N + 4 L H Dh T) then runs
     inside the step. With the default kl_coef=0 the step is exactly one forward + one
     backward.
Rematerialisation (`--remat`, a named policy of ModelConfig: none | full | save_dots |
save_attn; default save_dots, which keeps the weight matmuls and recomputes the rest, so the
defaults fit one 80 GB GPU) recomputes part of the forward in the backward pass; that extra
work is NOT counted (model FLOPs, not hardware FLOPs). `--attention_impl` picks the
jax.nn.dot_product_attention backend (auto = cuDNN flash attention on GPU with bf16).
The peak is the bf16 dense figure of the device kind even for `--dtype=float32`; on an
unknown kind (CPU) MFU is printed as n/a.

Rollout: `Sampler.sample` of `--rollout_batch` rows (prompts x `--samples_per_prompt`),
no EOS so every row generates `--new_tokens`; one warm-up call compiles, the second is
timed; generated tokens/s = generated tokens / time.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
import traceback

import jax
import numpy as np
from flax import nnx

from recal_jax.models.config import ATTENTION_IMPLS, REMAT_POLICIES, ModelConfig
from recal_jax.models.qwen2 import Qwen2
from recal_jax.rollout.sampler import Sampler
from recal_jax.training.mesh import make_mesh, shard_batch, tree_shardings
from recal_jax.training.optim import OptimConfig, make_optimizer
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import LossConfig, make_train_step

# Peak dense bf16 FLOP/s per device; (substring of device_kind, lower case) -> peak.
# Order matters: the first substring found in the device kind wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h200", 989e12),
    ("a100", 312e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),  # v5e reports "TPU v5 lite"
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports "TPU v5"
)


def peak_flops_per_device(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device of `device_kind`, or None when unknown."""
    kind = device_kind.lower()
    for key, peak in PEAK_BF16_FLOPS:
        if key in kind:
            return peak
    return None


# Peak memory (HBM) bandwidth per device in bytes/s, from the vendors' data sheets;
# (substring of device_kind, lower case) -> bandwidth. The first substring found wins, so
# the specific kinds come first ("gh200" before "h200", "h100 pcie" before "h100").
# The decode loop of a rollout is bound by it (experiments/bench_loop.py: every decode step
# reads the parameters and the live KV cache once).
HBM_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("gh200", 4.0e12),  # GH200 with 96 GB HBM3 (the 144 GB HBM3e part has 4.9e12)
    ("h200", 4.8e12),
    ("h100 pcie", 2.0e12),
    ("h100 nvl", 3.9e12),
    ("h100", 3.35e12),  # SXM5
    ("a100-sxm4-80gb", 2.039e12),
    ("a100 80gb pcie", 1.935e12),
    ("a100", 1.555e12),  # 40 GB
    ("tpu v4", 1.2e12),
    ("tpu v5 lite", 8.19e11),
    ("tpu v5e", 8.19e11),
    ("tpu v5p", 2.765e12),
    ("tpu v5", 2.765e12),
)


def memory_bandwidth_per_device(device_kind: str) -> float | None:
    """Peak memory bandwidth (bytes/s) of one device of `device_kind`, or None when unknown."""
    kind = device_kind.lower()
    for key, bandwidth in HBM_BANDWIDTH:
        if key in kind:
            return bandwidth
    return None


def flops_params(config: ModelConfig) -> int:
    """N of the FLOPs formula: all parameters but the input embedding table, plus the
    D x V output projection (counted even when tied to the embeddings)."""
    c = config
    q_out, kv_out = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    attn = c.hidden_size * (q_out + 2 * kv_out) + (q_out + 2 * kv_out) + q_out * c.hidden_size
    mlp = 3 * c.hidden_size * c.intermediate_size
    norms = 2 * c.hidden_size
    return c.num_layers * (attn + mlp + norms) + c.hidden_size + c.hidden_size * c.vocab_size


def train_flops_per_token(config: ModelConfig, seq_len: int, reference_forward: bool) -> float:
    """Model FLOPs of one trained token: 6 N + 12 L H Dh T, x 4/3 with the reference
    forward of the KL term inside the step (see module doc)."""
    c = config
    flops = 6 * flops_params(c) + 12 * c.num_layers * c.num_heads * c.head_dim * seq_len
    return flops * 4 / 3 if reference_forward else float(flops)


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """Everything the check needs (the absl flags, validated)."""

    preset: str = "qwen2.5-0.5b"
    dtype: str = "bfloat16"
    batch: int = 32
    seq_len: int = 1024
    steps: int = 5
    microbatches: int = 1
    mesh_data: int = 1
    mesh_fsdp: int = -1
    mesh_tensor: int = 1
    kl_coef: float = 0.0
    remat: str = "save_dots"
    attention_impl: str = "auto"
    rollout_batch: int = 64
    samples_per_prompt: int = 8
    prompt_len: int = 256
    new_tokens: int = 256
    vocab_size: int | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"--dtype must be bfloat16 or float32, got {self.dtype!r}")
        for name in ("batch", "seq_len", "steps", "microbatches", "rollout_batch",
                     "samples_per_prompt", "prompt_len", "new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"--seq_len must be >= 2, got {self.seq_len}")
        for name in ("vocab_size", "num_layers", "hidden_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1 when given, got {value}")
        if self.rollout_batch % self.samples_per_prompt:
            raise ValueError(f"--rollout_batch={self.rollout_batch} must be divisible by "
                             f"--samples_per_prompt={self.samples_per_prompt}")
        if self.kl_coef < 0:
            raise ValueError(f"--kl_coef must be >= 0, got {self.kl_coef}")

    def model_config(self) -> ModelConfig:
        overrides = dict(param_dtype=self.dtype, dtype=self.dtype, remat=self.remat,
                         attention_impl=self.attention_impl)
        for name in ("vocab_size", "num_layers", "hidden_size"):
            if getattr(self, name) is not None:
                overrides[name] = getattr(self, name)
        return ModelConfig.preset(self.preset, **overrides)


def init_model(config: ModelConfig, mesh, seed: int) -> Qwen2:
    """Random Qwen2 whose parameters are created directly in their mesh shardings."""
    abstract = nnx.eval_shape(lambda: Qwen2(config, rngs=nnx.Rngs(seed)))
    graphdef, abstract_state = nnx.split(abstract)

    @functools.partial(jax.jit, out_shardings=tree_shardings(abstract_state, mesh))
    def create():
        return nnx.state(Qwen2(config, rngs=nnx.Rngs(seed)))

    return nnx.merge(graphdef, create())


def synthetic_grpo_batch(rng: np.random.Generator, batch: int, seq_len: int,
                         vocab_size: int) -> dict[str, np.ndarray]:
    """Random GRPO batch: tokens, all-real attention mask, loss mask on the second half,
    logp_old near the uniform log-prob (so ratios stay near 1), random advantages."""
    loss_mask_bt = np.zeros((batch, seq_len), np.float32)
    loss_mask_bt[:, seq_len // 2:] = 1.0
    logp_old_bt = (-math.log(vocab_size)
                   + 0.01 * rng.standard_normal((batch, seq_len))).astype(np.float32)
    return {
        "tokens_bt": rng.integers(0, vocab_size, (batch, seq_len), dtype=np.int32),
        "attention_mask_bt": np.ones((batch, seq_len), bool),
        "loss_mask_bt": loss_mask_bt,
        "logp_old_bt": logp_old_bt,
        "advantages_b": rng.standard_normal((batch,)).astype(np.float32),
    }


def run_train(cfg: CheckConfig, model_config: ModelConfig, mesh) -> tuple[TrainState, dict]:
    """Warm-up + timed GRPO steps; (final state, timing results)."""
    model = init_model(model_config, mesh, cfg.seed)
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-6))
    with_reference = cfg.kl_coef > 0
    state = TrainState.create(model, optimizer, rng=jax.random.key(cfg.seed),
                              with_reference=with_reference)
    step = make_train_step(state.graphdef, optimizer, LossConfig(kl_coef=cfg.kl_coef), mesh,
                           num_microbatches=cfg.microbatches)
    batch = synthetic_grpo_batch(np.random.default_rng(cfg.seed), cfg.batch, cfg.seq_len,
                                 model_config.vocab_size)
    batch = shard_batch(batch, mesh)

    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - t0
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        raise FloatingPointError(f"train step produced a non-finite loss ({loss})")
    tokens = cfg.batch * cfg.seq_len * cfg.steps
    return state, dict(compile_s=compile_s, seconds=seconds, tokens_per_s=tokens / seconds,
                       loss=loss)


def run_rollout(cfg: CheckConfig, model: nnx.Module, vocab_size: int) -> dict:
    """One warm-up and one timed `Sampler.sample` of cfg.rollout_batch rows."""
    prompts = cfg.rollout_batch // cfg.samples_per_prompt
    rng = np.random.default_rng(cfg.seed + 1)
    tokens_up = rng.integers(1, vocab_size, (prompts, cfg.prompt_len), dtype=np.int32)
    mask_up = np.ones((prompts, cfg.prompt_len), bool)
    sampler = Sampler(model, pad_id=0, eos_id=None, max_prompt_len=cfg.prompt_len)

    def sample(seed):
        out = sampler.sample(tokens_up, mask_up, jax.random.key(seed),
                             max_new_tokens=cfg.new_tokens, num_samples=cfg.samples_per_prompt)
        return jax.block_until_ready(out)

    t0 = time.perf_counter()
    sample(cfg.seed)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sample(cfg.seed + 1)
    seconds = time.perf_counter() - t0
    generated = int(np.sum(np.asarray(out.lengths_b)))
    return dict(compile_s=compile_s, seconds=seconds, prompts=prompts, generated=generated,
                tokens_per_s=generated / seconds)


def _param_count(state: TrainState) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))


def results_table(cfg: CheckConfig, model_config: ModelConfig, mesh, train: dict,
                  rollout: dict, num_params: int) -> str:
    """The final markdown table (device, model, training and rollout throughput, MFU)."""
    devices = jax.devices()
    kind = devices[0].device_kind
    n_dev = len(devices)
    reference_forward = cfg.kl_coef > 0
    flops_tok = train_flops_per_token(model_config, cfg.seq_len, reference_forward)
    achieved = flops_tok * train["tokens_per_s"]
    peak = peak_flops_per_device(kind)
    if peak is None:
        mfu = f"n/a (no peak FLOP/s known for device kind {kind!r})"
    else:
        mfu = (f"{100 * achieved / (peak * n_dev):.1f}% "
               f"(peak {peak / 1e12:.0f} TFLOP/s bf16 dense per device)")
    c = model_config
    step_note = ("one forward + backward + reference forward (kl_coef="
                 f"{cfg.kl_coef:g}, FLOPs x 4/3)" if reference_forward else
                 "exactly one forward + backward (kl_coef=0, no reference forward)")
    rows = [
        ("device", f"{kind} x {n_dev} ({devices[0].platform})"),
        ("model", f"{cfg.preset} random init: L={c.num_layers} D={c.hidden_size} "
                  f"F={c.intermediate_size} H={c.num_heads} KV={c.num_kv_heads} "
                  f"Dh={c.head_dim} V={c.vocab_size}, {num_params / 1e6:.1f}M params"),
        ("dtype", f"{cfg.dtype} params and compute; remat={c.remat}, attention "
                  f"{c.resolved_attention_impl()}, layers scanned={c.scan_layers}"),
        ("mesh", " ".join(f"{k}={v}" for k, v in mesh.shape.items())),
        ("train step", f"batch={cfg.batch} seq_len={cfg.seq_len} "
                       f"microbatches={cfg.microbatches}; {step_note}"),
        ("train timing", f"{cfg.steps} steps in {train['seconds']:.3f} s "
                         f"({1e3 * train['seconds'] / cfg.steps:.1f} ms/step; "
                         f"warm-up/compile {train['compile_s']:.1f} s), loss {train['loss']:.4f}"),
        ("train tokens/s", f"{train['tokens_per_s']:,.0f} "
                           f"({train['tokens_per_s'] / n_dev:,.0f} per device)"),
        ("train FLOPs/token", f"{flops_tok / 1e9:.4g} GFLOP (6N + 12 L H Dh T, "
                              f"N={flops_params(c) / 1e6:.4g}M)"),
        ("train TFLOP/s", f"{achieved / 1e12:.2f} ({achieved / n_dev / 1e12:.2f} per device)"),
        ("MFU", mfu),
        ("rollout", f"{rollout['prompts']} prompts x {cfg.samples_per_prompt} samples, "
                    f"prompt_len={cfg.prompt_len}, new_tokens={cfg.new_tokens}"),
        ("rollout timing", f"{rollout['generated']} tokens in {rollout['seconds']:.3f} s "
                           f"(warm-up/compile {rollout['compile_s']:.1f} s)"),
        ("rollout tokens/s", f"{rollout['tokens_per_s']:,.0f} generated"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _is_oom(exc: BaseException) -> bool:
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run_check(cfg: CheckConfig) -> int:
    """Runs the whole check, prints progress and the table; returns the exit code."""
    model_config = cfg.model_config()
    mesh = make_mesh(data=cfg.mesh_data, fsdp=cfg.mesh_fsdp, tensor=cfg.mesh_tensor)
    devices = jax.devices()
    print(f"gpu_check: {devices[0].device_kind} x {len(devices)}, mesh "
          f"{dict(mesh.shape)}, preset {cfg.preset} ({cfg.dtype})", flush=True)
    phase = "training"
    try:
        print("gpu_check: compiling and timing the GRPO train step ...", flush=True)
        state, train = run_train(cfg, model_config, mesh)
        print(f"gpu_check: train tokens/s {train['tokens_per_s']:,.0f}", flush=True)
        phase = "rollout"
        print("gpu_check: compiling and timing the rollout sampler ...", flush=True)
        rollout = run_rollout(cfg, state.model(), model_config.vocab_size)
        print(f"gpu_check: rollout tokens/s {rollout['tokens_per_s']:,.0f}", flush=True)
    except Exception as exc:  # noqa: BLE001  (report any failure clearly, then exit non-zero)
        if _is_oom(exc):
            print(f"\ngpu_check: OUT OF DEVICE MEMORY during {phase}.\n  Try a smaller "
                  f"--batch / --seq_len (training) or --rollout_batch / --new_tokens (rollout), "
                  f"more --microbatches, --remat=full, or more devices on --mesh_fsdp.\n  "
                  f"XLA said: {str(exc).splitlines()[0][:500]}", file=sys.stderr)
            return 2
        if not isinstance(exc, ValueError):  # a ValueError names the problem itself
            traceback.print_exc()
        print(f"\ngpu_check: FAILED during {phase}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    print("\n" + results_table(cfg, model_config, mesh, train, rollout, _param_count(state)))
    return 0


def _define_flags():
    """The absl flags (defined only when run as a script, so importing is side-effect free)."""
    from absl import flags

    d = CheckConfig()
    flags.DEFINE_string("preset", d.preset, "ModelConfig preset.")
    flags.DEFINE_enum("dtype", d.dtype, ["bfloat16", "float32"], "Param and compute dtype.")
    flags.DEFINE_integer("batch", d.batch, "Rows per train step.")
    flags.DEFINE_integer("seq_len", d.seq_len, "Tokens per training row.")
    flags.DEFINE_integer("steps", d.steps, "Timed train steps (after 1 warm-up step).")
    flags.DEFINE_integer("microbatches", d.microbatches, "Gradient-accumulation micro-batches.")
    flags.DEFINE_integer("mesh_data", d.mesh_data, "Mesh 'data' size (-1 = the rest).")
    flags.DEFINE_integer("mesh_fsdp", d.mesh_fsdp, "Mesh 'fsdp' size (-1 = the rest).")
    flags.DEFINE_integer("mesh_tensor", d.mesh_tensor, "Mesh 'tensor' size (-1 = the rest).")
    flags.DEFINE_float("kl_coef", d.kl_coef,
                       "KL coefficient; > 0 runs the reference forward inside the step.")
    flags.DEFINE_enum("remat", d.remat, sorted(REMAT_POLICIES),
                      "Per-layer rematerialisation policy (ModelConfig.remat).")
    flags.DEFINE_enum("attention_impl", d.attention_impl, list(ATTENTION_IMPLS),
                      "dot_product_attention backend (auto: cudnn on GPU with bf16).")
    flags.DEFINE_integer("rollout_batch", d.rollout_batch, "Rollout rows (prompts x samples).")
    flags.DEFINE_integer("samples_per_prompt", d.samples_per_prompt, "Samples per prompt.")
    flags.DEFINE_integer("prompt_len", d.prompt_len, "Rollout prompt tokens.")
    flags.DEFINE_integer("new_tokens", d.new_tokens, "Rollout generated tokens per row.")
    flags.DEFINE_integer("vocab_size", None, "Override the preset's vocabulary size.")
    flags.DEFINE_integer("num_layers", None, "Override the preset's number of layers.")
    flags.DEFINE_integer("hidden_size", None, "Override the preset's hidden size.")
    flags.DEFINE_integer("seed", d.seed, "Seed of the random weights and data.")
    return flags.FLAGS


def config_from_flags(cls, argv, prog: str):
    """An instance of the dataclass `cls` from the absl flags of the same names (its
    model_config() must build); bad flags print one line and exit with code 1."""
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from absl import flags

    try:
        cfg = cls(**{field.name: getattr(flags.FLAGS, field.name) for field in dataclasses.fields(cls)})
        cfg.model_config()
    except ValueError as exc:
        print(f"{prog}: bad flags: {exc}", file=sys.stderr)
        sys.exit(1)
    return cfg


def main(argv):
    sys.exit(run_check(config_from_flags(CheckConfig, argv, "gpu_check")))


if __name__ == "__main__":
    from absl import app, logging

    logging.set_verbosity(logging.WARNING)
    _define_flags()
    app.run(main)
