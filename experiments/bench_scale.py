"""Ahead-of-time compile time and memory of the GRPO train step at Qwen2.5 scale, on CPU.

    python -m experiments.bench_scale --preset=qwen2.5-0.5b --batch=32 --seq_len=1024
    python -m experiments.bench_scale --preset=qwen2.5-3b --batch=256 --seq_len=1024 \\
        --microbatches=8 --remat=full            # the qa7_live step

The step is built exactly as training builds it (recal_jax.training.train_step.
make_train_step, AdamW, reference params for the KL term when --kl_coef > 0, no
logp_old_bt: one update per batch) on a one-device mesh, from ABSTRACT parameters
(jax.eval_shape: no weight is allocated), lowered and compiled with
`jit(...).lower(...).compile()`. `compiled.memory_analysis()` gives the bytes of the
arguments (params, optimizer state, reference params, batch), of the outputs (the new
state aliases the donated one) and of the temporaries (activations, gradients and their
accumulator, logits chunks, ...): what must fit on one accelerator besides the arguments.
The numbers are XLA:CPU's buffer assignment; XLA:GPU's differs in detail (fusion, cuDNN
attention, which needs no score matrix), so treat them as an estimate. On CPU the step is
compiled without XLA:CPU's hoisting of f32 weight copies (CPU_ONLY_PASSES_OFF; the flag
--cpu_weight_hoisting keeps it).

The last line printed is one JSON object: {"preset", "num_layers", "batch", "seq_len",
"microbatches", "remat", "compile_s", "argument_bytes", "output_bytes", "temp_bytes", ...}.
`compile_cpu_s` is the compile's CPU time (all threads of this process): on a shared machine
it varies less with the other jobs than the wall time `compile_s` does.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from recal_jax.models.config import REMAT_POLICIES, ModelConfig
from recal_jax.models.qwen2 import Qwen2
from recal_jax.training.mesh import make_mesh
from recal_jax.training.optim import OptimConfig, make_optimizer
from recal_jax.training.train_state import TrainState
from recal_jax.training.train_step import LOGPROB_CHUNK_TOKENS, LossConfig, make_train_step


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    """One configuration to compile (the absl flags)."""

    preset: str = "qwen2.5-0.5b"
    num_layers: int | None = None  # None: the preset's
    batch: int = 32
    seq_len: int = 1024
    microbatches: int = 1
    remat: str = "full"
    dtype: str = "bfloat16"
    kl_coef: float = 0.001
    attention_impl: str = "auto"
    logprob_chunk_tokens: int = LOGPROB_CHUNK_TOKENS
    cpu_weight_hoisting: bool = False  # keep XLA:CPU's hoisted f32 weight copies (see CPU_ONLY_PASSES_OFF)

    def __post_init__(self):
        for name in ("batch", "seq_len", "microbatches", "logprob_chunk_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(f"--seq_len must be >= 2, got {self.seq_len}")
        if self.batch % self.microbatches:
            raise ValueError(f"--batch={self.batch} must be divisible by "
                             f"--microbatches={self.microbatches}")
        if self.kl_coef < 0:
            raise ValueError(f"--kl_coef must be >= 0, got {self.kl_coef}")

    def model_config(self) -> ModelConfig:
        overrides = dict(param_dtype=self.dtype, dtype=self.dtype, remat=self.remat,
                         attention_impl=self.attention_impl)
        if self.num_layers is not None:
            overrides["num_layers"] = self.num_layers
        return ModelConfig.preset(self.preset, **overrides)


def abstract_batch(batch: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The GRPO batch of one update per batch (no logp_old_bt), as shapes only."""
    bt = (batch, seq_len)
    return {"tokens_bt": jax.ShapeDtypeStruct(bt, jnp.int32),
            "attention_mask_bt": jax.ShapeDtypeStruct(bt, jnp.bool_),
            "loss_mask_bt": jax.ShapeDtypeStruct(bt, jnp.float32),
            "advantages_b": jax.ShapeDtypeStruct((batch,), jnp.float32)}


# XLA:CPU computes bf16 matmuls in f32, and its while-loop-invariant code motion then hoists
# an f32 copy of every bf16 weight (policy and reference) out of the micro-batch loop: about
# 8 bytes per parameter of temporaries (25 GiB at 3B) that an accelerator with native bf16
# matmuls never allocates. On CPU, unless cfg.cpu_weight_hoisting, the step is compiled with
# that pass off so that the temporaries estimate the accelerator's; the row says which.
CPU_ONLY_PASSES_OFF = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def compiler_options(cfg: ScaleConfig, backend: str) -> dict[str, str]:
    """XLA options of the AOT compile: CPU_ONLY_PASSES_OFF on CPU without
    cfg.cpu_weight_hoisting, else none (accelerators compile as training does)."""
    if backend == "cpu" and not cfg.cpu_weight_hoisting:
        return dict(CPU_ONLY_PASSES_OFF)
    return {}


def compile_step(cfg: ScaleConfig) -> dict:
    """Lowers and compiles the train step of `cfg` from abstract inputs; the result row."""
    model_config = cfg.model_config()
    optimizer = make_optimizer(OptimConfig(learning_rate=1e-6))
    state = jax.eval_shape(lambda: TrainState.create(
        Qwen2(model_config, rngs=nnx.Rngs(0)), optimizer, rng=jax.random.key(0),
        with_reference=cfg.kl_coef > 0))
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    step = make_train_step(state.graphdef, optimizer, LossConfig(kl_coef=cfg.kl_coef), mesh,
                           num_microbatches=cfg.microbatches,
                           logprob_chunk_tokens=cfg.logprob_chunk_tokens)
    t0 = time.perf_counter()
    lowered = step.lower(state, abstract_batch(cfg.batch, cfg.seq_len))
    lower_s = time.perf_counter() - t0
    options = compiler_options(cfg, jax.default_backend())
    t0, cpu0 = time.perf_counter(), time.process_time()
    compiled = lowered.compile(compiler_options=options)
    compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    mem = compiled.memory_analysis()
    return {
        "preset": cfg.preset, "num_layers": model_config.num_layers, "batch": cfg.batch,
        "seq_len": cfg.seq_len, "microbatches": cfg.microbatches, "remat": model_config.remat,
        "compile_s": round(compile_s, 2), "compile_cpu_s": round(compile_cpu_s, 2),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes), "temp_bytes": int(mem.temp_size_in_bytes),
        "lower_s": round(lower_s, 2), "dtype": cfg.dtype, "kl_coef": cfg.kl_coef,
        "attention_impl": model_config.resolved_attention_impl(),
        "backend": jax.default_backend(), "compiler_options": options,
    }


def _define_flags():
    from absl import flags

    d = ScaleConfig()
    flags.DEFINE_string("preset", d.preset, "ModelConfig preset.")
    flags.DEFINE_integer("num_layers", None, "Override the preset's number of layers.")
    flags.DEFINE_integer("batch", d.batch, "Rows per train step.")
    flags.DEFINE_integer("seq_len", d.seq_len, "Tokens per row.")
    flags.DEFINE_integer("microbatches", d.microbatches, "Gradient-accumulation micro-batches.")
    flags.DEFINE_enum("remat", d.remat, sorted(REMAT_POLICIES), "Remat policy.")
    flags.DEFINE_enum("dtype", d.dtype, ["bfloat16", "float32"], "Param and compute dtype.")
    flags.DEFINE_float("kl_coef", d.kl_coef, "> 0: reference forward inside the step.")
    flags.DEFINE_enum("attention_impl", d.attention_impl, ["auto", "xla", "cudnn"],
                      "dot_product_attention backend.")
    flags.DEFINE_integer("logprob_chunk_tokens", d.logprob_chunk_tokens,
                         "Tokens per chunk of the log-prob computation.")
    flags.DEFINE_bool("cpu_weight_hoisting", d.cpu_weight_hoisting,
                      "On CPU, keep the loop-invariant code motion that hoists f32 copies of "
                      "the bf16 weights (off by default: CPU-only temporaries).")
    return flags.FLAGS


def main(argv):
    from launch.gpu_check import config_from_flags

    row = compile_step(config_from_flags(ScaleConfig, argv, "bench_scale"))
    gib = 2.0 ** 30
    print(f"bench_scale: {row['preset']} L={row['num_layers']} {row['batch']}x{row['seq_len']} "
          f"micro={row['microbatches']} remat={row['remat']}: compile {row['compile_s']} s, "
          f"arguments {row['argument_bytes'] / gib:.2f} GiB, temp {row['temp_bytes'] / gib:.2f} "
          "GiB", file=sys.stderr)
    print(json.dumps(row))


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
