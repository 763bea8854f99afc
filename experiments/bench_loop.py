"""The whole GRPO loop, timed: N iterations of a config (roll out, call the pool, score,
calibrate, reference log-probs, train step) with a randomly initialised policy, reported
as one JSON object.

On one GPU (H100 / H200), the multi-turn replay workload of nq_pool6 (data in
../shared/data/llmrouter, the config's default data_dir; elsewhere add
--config.data_dir=/path/to/llmrouter), 512 rows = 64 questions x 8, bf16:

    # Qwen2.5-0.5B
    python -m experiments.bench_loop --config=launch/configs/nq_pool6.py \\
        --model_preset=qwen2.5-0.5b --config.model.dtype=bfloat16 \\
        --config.model.remat=save_dots --config.grpo.microbatches=2 \\
        --rows=512 --iterations=6 --warmup=2 --out=bench_loop_0.5b.json

    # Qwen2.5-3B
    python -m experiments.bench_loop --config=launch/configs/nq_pool6.py \\
        --model_preset=qwen2.5-3b --config.model.dtype=bfloat16 \\
        --config.model.remat=save_dots --config.grpo.microbatches=4 \\
        --rows=512 --iterations=6 --warmup=2 --out=bench_loop_3b.json

nq_pool6's compact prompts make train batches of about 512 x 128 tokens; the micro-batches
above keep 32k (0.5B) and 16k (3B) tokens per micro-batch. If the 3B step runs out of
memory use --config.model.remat=full; with --config.prompt_style=full (the long prompts
of an instruction-tuned policy) use --config.grpo.microbatches=8. Two warm-up iterations:
the first compiles every function, and the second compiles the sampler, the log-prob
forward and the RNG split again because the state then comes out of the train step with
its mesh shardings. Without the logged data, the same runs on the embedded synthetic
suite's multi-turn protocol (simulated pool): `--config=launch/configs/synthetic_multi_turn.py`
with the same flags. The rollout at GPU sizes: `--rows=256`, `512` or `1024`, each with
`--xla_command_buffers=keep`, `loops` and `off` (see below), and read
rollout_generated_tokens_per_s and decode_bound. The CPU tiny run (CI; its steady
iteration takes well under a second once compiled):

    python -m experiments.bench_loop --config=launch/configs/synthetic_multi_turn.py \\
        --config.model.num_layers=1 --config.tokenizer.vocab_size=512 \\
        --config.synthetic.n_train_per_family=10 --config.synthetic.n_test_per_family=2 \\
        --config.grpo.max_total_tokens=64 --config.grpo.max_new_tokens_per_turn=24 \\
        --config.grpo.max_info_tokens=8 --rows=4 --iterations=3 --warmup=1

What runs. The run is built as training builds it: `parse_config` of the config (with the
flags below applied to it), `set_up` (suite, tokenizer, pools, rollout runners), the GRPO
optimiser, TrainState, train step and GRPOIteration of recal_jax.training (components). No
SFT: the weights are random. `--model_preset` picks the policy's architecture at its full
depth (`--num_layers` overrides it), and its vocabulary is the preset's (151,936 for
Qwen2.5; `--vocab_size`): the run's tokenizer (a small BPE) only uses the first ids, the
rest of the embedding and LM head exist as in the real model. `--rows` sets
instances_per_step x group_size (group_size kept from the config). The first `--warmup`
iterations compile; they are reported apart ("warmup") and the rest is the steady state.

Scripted rollouts (`--scripted`, the default). A random policy never writes the protocol,
so its rollouts would be one turn of noise with no pool call. Here the sampler runs in full
(the real prefill and decode, on the real shapes) and its tokens are then replaced by a
protocol segment: round r < `--searches` writes `<think> ... </think> <search> MODEL : the
question </search>` (MODEL drawn at random from the pool), the next round `<answer> ...
</answer>` (single_call: one search, the routed model's reply is final). The engine, pool,
scorer, calibration and train step then see the turns, pool calls and information blocks of
a policy that follows the protocol. A random policy does not stop, so every generation
round decodes its whole turn budget (grpo.max_new_tokens_per_turn): an upper bound on a
trained policy's decode work. `--segment_tokens=K` decodes K tokens per round instead and
pads the scripted segments to about K tokens (a policy whose longest segment per round is
K tokens). `--noscripted`: the random policy's own rollouts.

Reference log-probs (`--reference`): `separate` (default) computes them for the whole batch
with compute_logprobs under the frozen reference params before the train step (a phase of
its own, passed as logp_ref_bt); `in_step` leaves them to the train step, as grpo.train
does (its forward then runs inside the step, whose MFU counts it, x 4/3).

Reported (all seconds are wall time, device work waited for at the end of each phase):
- `seconds_per_iteration`: steady-state mean (and median, min, max).
- `e2e_tokens_per_s_per_device`: the tokens of the train batch (prompt + completion +
  information blocks, attention mask summed, no padding) per second of the whole iteration,
  divided by the devices of the mesh.
- `rollout_generated_tokens_per_s`: tokens the sampler generated (all rows, before the
  script replaced them) per second of sampler calls (prefill included).
- `train_step`: tokens (rows x width, padding included, x updates_per_batch; with
  grpo.shared_prompt the prompts U x P plus the completions B x C), seconds,
  model FLOPs per token (launch.gpu_check.train_flops_per_token: 6N + 12 L H Dh T, x 4/3
  with the reference forward in the step) and MFU against the device kind's bf16 peak
  (launch.gpu_check.peak_flops_per_device; null on CPU).
- `breakdown`: the steady iterations' time by phase: generation (sampler calls), pool_calls
  (the engine's call_many_sync: all calls of a round at once), scoring, rollout_host (the
  rest of the rollout: stop search, text decoding, assembling the batch), calibration,
  batch_assembly, reference_logprobs, train_step, other (metrics, RNG, ...). The phases sum
  to total_seconds.
- `compiles`: JAX compiles (count and seconds, CompileLog) in set-up, warm-up and steady
  state; `per_iteration` lists each iteration's seconds, phases, compiles and the functions
  compiled, train batch shapes, sampler calls and rollout facts (turns, pool calls, finish
  reasons). `seconds_per_iteration_excluding_compiles` takes the steady iterations' compile
  seconds out (an estimate; `notes` says when the steady state compiled).
- `decode_bound`: the memory-bandwidth bound of the decode loop. A decode step of R rows
  reads every parameter once plus the KV cache at its live length l:
  bytes_per_step = param_bytes + R x l x kv_bytes_per_position, with kv_bytes_per_position =
  2 (K and V) x layers x kv_heads x head_dim x dtype bytes, and param_bytes the parameter
  bytes (an untied input embedding, only gathered, left out). At step i of a sampler call l =
  mean real prompt length + i + 1. tokens/s bound = R x bandwidth / bytes_per_step (its mean
  over the steps); `achieved_fraction` = decoded tokens per second of sampler calls / bound
  (prefill time counts against it). Bandwidth: launch.gpu_check.HBM_BANDWIDTH by device kind
  (H200 4.8e12 B/s, H100 SXM 3.35e12, ...) or `--memory_bandwidth`; null on CPU.

XLA command buffers (CUDA graphs), `--xla_command_buffers`, set in XLA_FLAGS before jax
initialises its backend (this module imports nothing of jax at load time; the flag is read
from the command line first):
- `keep` (default): XLA_FLAGS untouched. XLA's default (jax 0.10-0.11) records runs of at
  least xla_gpu_graph_min_graph_size (5) fusions, cuBLAS(Lt), cuDNN and custom calls as CUDA
  graphs, but not the control flow: each decode step of the sampler's `while_loop` is
  still launched from the host, one graph segment at a time.
- `loops`: `--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL` adds while loops and
  conditionals to the default list (the `+` syntax adds to it), so a whole decode
  `while_loop` becomes one CUDA graph with conditional nodes: no host round trip per
  token. Needs CUDA driver and runtime >= 12.3 (XLA silently drops the two otherwise).
- `off`: `--xla_gpu_enable_command_buffer=` (empty: no command buffers), the baseline.
The JSON's `xla_flags` is the XLA_FLAGS the run saw. On CPU the flags parse and do nothing.

One process (jax.process_count() == 1); the mesh is the config's (mesh.data=-1: every
device). The persistent compilation cache is not enabled here (compiles are measured cold).
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Sequence

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "launch", "configs", "synthetic_multi_turn.py")

# --------------------------------------------------------------------------- XLA flags

COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer"
XLA_COMMAND_BUFFER_MODES: dict[str, str | None] = {
    "keep": None,  # XLA_FLAGS untouched (XLA's default command buffers)
    "loops": f"{COMMAND_BUFFER_FLAG}=+WHILE,+CONDITIONAL",  # whole decode while_loops as CUDA graphs
    "off": f"{COMMAND_BUFFER_FLAG}=",  # no command buffers
}


def xla_flags_for(mode: str, current: str) -> str:
    """XLA_FLAGS for command-buffer `mode` (XLA_COMMAND_BUFFER_MODES), given the current
    XLA_FLAGS: an earlier --xla_gpu_enable_command_buffer is replaced, other flags kept."""
    if mode not in XLA_COMMAND_BUFFER_MODES:
        raise ValueError(f"--xla_command_buffers must be one of {tuple(XLA_COMMAND_BUFFER_MODES)}, got {mode!r}")
    flag = XLA_COMMAND_BUFFER_MODES[mode]
    if flag is None:
        return current
    kept = [f for f in current.split() if f.split("=", 1)[0] != COMMAND_BUFFER_FLAG]
    return " ".join(kept + [flag])


def command_buffer_mode_from_argv(argv: Sequence[str]) -> str:
    """The value of --xla_command_buffers on a command line ("keep" without it), read before
    absl parses the flags: XLA_FLAGS must be set before jax creates its backend."""
    mode = "keep"
    for i, arg in enumerate(argv):
        if arg.startswith("--xla_command_buffers="):
            mode = arg.split("=", 1)[1]
        elif arg == "--xla_command_buffers" and i + 1 < len(argv):
            mode = argv[i + 1]
    return mode


# --------------------------------------------------------------------------- bandwidth bound

def kv_bytes_per_position(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """KV-cache bytes of one row at one position: K and V of every layer."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def decode_step_bytes(param_bytes: float, kv_bytes_per_pos: float, rows: int, live_len: float) -> float:
    """Bytes one decode step of `rows` rows reads: the parameters once, plus each row's KV
    cache at the live length."""
    return float(param_bytes) + float(rows) * float(live_len) * float(kv_bytes_per_pos)


def decode_bound_tokens_per_s(rows: float, bandwidth: float, bytes_per_step: float) -> float:
    """Tokens/s of a decode loop bound by memory bandwidth: `rows` tokens per step, one step
    per bytes_per_step / bandwidth seconds."""
    return float(rows) * float(bandwidth) / float(bytes_per_step)


def decode_call_bytes(param_bytes: float, kv_bytes_per_pos: float, rows: int, prompt_len: float,
                      steps: int) -> float:
    """Bytes read by `steps` decode steps of one sampler call: step i (0-based) has live
    length prompt_len + i + 1 (the sum of decode_step_bytes over the steps, in closed form)."""
    live_sum = steps * float(prompt_len) + steps * (steps + 1) / 2.0
    return steps * float(param_bytes) + float(rows) * float(kv_bytes_per_pos) * live_sum


@dataclasses.dataclass(frozen=True)
class DecodeCall:
    """One sampler call: rows decoded, mean real prompt length, decode steps run (the longest
    row's generated tokens), tokens generated (all rows) and its wall seconds."""

    rows: int
    prompt_len: float
    steps: int
    generated: int
    seconds: float


def decode_bound_summary(calls: Sequence[DecodeCall], *, param_bytes: float, kv_bytes_per_pos: float,
                         bandwidth: float | None) -> dict[str, Any]:
    """The bandwidth bound of a set of sampler calls (see the module doc). decode_tokens =
    sum of rows x steps; bytes_per_step = their mean bytes per step; tokens_per_s_bound =
    rows x bandwidth / bytes_per_step (rows: the step-weighted mean); achieved_fraction =
    (decode_tokens / seconds of the calls) / the bound. Bandwidth None: the bound is None."""
    steps = sum(c.steps for c in calls)
    decode_tokens = sum(c.rows * c.steps for c in calls)
    total_bytes = sum(decode_call_bytes(param_bytes, kv_bytes_per_pos, c.rows, c.prompt_len, c.steps)
                      for c in calls)
    seconds = sum(c.seconds for c in calls)
    out: dict[str, Any] = {
        "bandwidth_bytes_per_s": bandwidth, "param_bytes": param_bytes, "kv_bytes_per_position": kv_bytes_per_pos,
        "decode_steps": steps, "decode_tokens": decode_tokens, "sampler_seconds": seconds,
        "rows": None, "mean_live_len": None, "bytes_per_step": None, "tokens_per_s_bound": None,
        "decode_tokens_per_s": decode_tokens / seconds if seconds > 0 else None, "achieved_fraction": None,
    }
    if steps == 0 or decode_tokens == 0:
        return out
    rows = decode_tokens / steps
    live = sum(c.rows * (c.steps * c.prompt_len + c.steps * (c.steps + 1) / 2.0) for c in calls) / decode_tokens
    out.update(rows=rows, mean_live_len=live, bytes_per_step=total_bytes / steps)
    if bandwidth:
        bound = decode_bound_tokens_per_s(rows, bandwidth, total_bytes / steps)
        out["tokens_per_s_bound"] = bound
        if out["decode_tokens_per_s"] is not None:
            out["achieved_fraction"] = out["decode_tokens_per_s"] / bound
    return out


# --------------------------------------------------------------------------- options

REFERENCE_MODES = ("separate", "in_step")


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """The benchmark's own flags (the config's are --config.*)."""

    iterations: int = 5  # in all, warm-up included
    warmup: int = 1
    model_preset: str | None = None  # None: the config's model section as it is
    num_layers: int | None = None  # None: the preset's (with model_preset), else the config's
    vocab_size: int = -1  # -1: the preset's with model_preset, else the tokenizer's; 0: the tokenizer's
    rows: int = 0  # 0: the config's instances_per_step x group_size
    reference: str = "separate"
    scripted: bool = True
    searches: int = 1
    segment_tokens: int = 0  # 0: each round decodes its whole turn budget
    memory_bandwidth: float = 0.0  # bytes/s; 0: the device kind's (launch.gpu_check.HBM_BANDWIDTH)
    xla_command_buffers: str = "keep"

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {self.iterations}")
        if not 0 <= self.warmup < self.iterations:
            raise ValueError(f"--warmup must lie in [0, --iterations) = [0, {self.iterations}), got {self.warmup}")
        if self.rows and not 2 <= self.rows <= 65_536:
            raise ValueError(f"--rows must be 0 (the config's) or in [2, 65536], got {self.rows}")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"--num_layers must be >= 1 when given, got {self.num_layers}")
        if self.vocab_size < -1:
            raise ValueError(f"--vocab_size must be -1, 0 or a vocabulary size, got {self.vocab_size}")
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"--reference must be one of {REFERENCE_MODES}, got {self.reference!r}")
        if self.searches < 1:
            raise ValueError(f"--searches must be >= 1, got {self.searches}")
        if self.segment_tokens < 0:
            raise ValueError(f"--segment_tokens must be >= 0, got {self.segment_tokens}")
        if not (self.memory_bandwidth >= 0 and math.isfinite(self.memory_bandwidth)):
            raise ValueError(f"--memory_bandwidth must be a finite number >= 0, got {self.memory_bandwidth}")
        if self.xla_command_buffers not in XLA_COMMAND_BUFFER_MODES:
            raise ValueError(f"--xla_command_buffers must be one of {tuple(XLA_COMMAND_BUFFER_MODES)}, "
                             f"got {self.xla_command_buffers!r}")


def apply_options(config: Any, opts: BenchOptions) -> dict:
    """The config (ConfigDict or dict) as a dict with the benchmark's flags applied: model
    preset and depth, rows (= instances_per_step x group_size), grpo.steps = iterations."""
    raw = copy.deepcopy(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    model, grpo = raw.setdefault("model", {}), raw.setdefault("grpo", {})
    if opts.model_preset:
        model.update(preset=opts.model_preset, num_layers=opts.num_layers or 0, hidden_size=0)
    elif opts.num_layers:
        model["num_layers"] = opts.num_layers
    if opts.rows:
        group = min(int(grpo.get("group_size", 8)), opts.rows)
        if opts.rows % group:
            raise ValueError(f"--rows={opts.rows} must be a multiple of grpo.group_size={group} "
                             "(set --config.grpo.group_size)")
        grpo.update(instances_per_step=opts.rows // group, group_size=group)
    grpo["steps"] = opts.iterations
    grpo["stop_at_step"] = 0
    return raw


# --------------------------------------------------------------------------- instruments

class Clock:
    """Seconds per phase of the current iteration."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def take(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), collections.defaultdict(float)
        return out


class RolloutScript:
    """Protocol segments (token ids) that replace a random policy's samples (module doc)."""

    def __init__(self, tokenizer, model_names: Sequence[str], protocol: str, *, searches: int,
                 segment_tokens: int, seed: int):
        import numpy as np

        from recal_jax.training.sft_data import FIXED_QUERY

        self.protocol, self.searches, self.segment_tokens = protocol, searches, segment_tokens
        self.pad_id = int(tokenizer.pad_id)
        self.rng = np.random.default_rng(seed)
        self.round = 0
        enc = lambda text: [int(i) for i in tokenizer.encode(text)]  # noqa: E731
        self._head = enc("<think>")
        self._filler = enc(" x") or enc("x")
        call = (lambda m: f"<search> {m} </search>") if protocol == "single_call" else \
            (lambda m: f"<search> {m} : {FIXED_QUERY} </search>")
        self.search_ids = [self._padded(enc(f" pick a model </think>\n{call(m)}")) for m in model_names]
        self.answer_ids = self._padded(enc(" done </think>\n<answer> unknown </answer>"))

    def _padded(self, tail: list[int]) -> list[int]:
        """<think>, filler up to about segment_tokens tokens in all, then `tail`."""
        room = self.segment_tokens - len(self._head) - len(tail)
        return self._head + self._filler * max(room // len(self._filler), 0) + tail

    def segment(self) -> list[int]:
        if self.protocol == "single_call" or self.round < self.searches:
            return self.search_ids[int(self.rng.integers(len(self.search_ids)))]
        return self.answer_ids

    def replace(self, out, *, first_round: bool, budget: int):
        """`out` (a SampleOutput) with its tokens replaced by this round's segments (each cut
        to the round's budget) and the sampler's log-probs kept where the segments are."""
        import numpy as np

        from recal_jax.rollout.sampler import SampleOutput

        self.round = 0 if first_round else self.round + 1
        raw_logp = np.asarray(out.logprobs_bn)
        rows = raw_logp.shape[0]
        segs = [self.segment()[:budget] for _ in range(rows)]
        width = max(raw_logp.shape[1], max(len(s) for s in segs))
        tokens = np.full((rows, width), self.pad_id, np.int32)
        logp = np.zeros((rows, width), np.float32)
        for i, seg in enumerate(segs):
            tokens[i, :len(seg)] = seg
            n = min(len(seg), raw_logp.shape[1])
            logp[i, :n] = raw_logp[i, :n]
        return SampleOutput(tokens, logp, np.array([len(s) for s in segs], np.int32))


class GenerationProbe:
    """The engine's generate_fn: runs the sampler (waiting for it), records the call
    (DecodeCall) and its seconds, then lets the script replace the tokens."""

    def __init__(self, sample_fn, clock: Clock, script: RolloutScript | None, segment_tokens: int):
        self.sample_fn, self.clock, self.script, self.segment_tokens = sample_fn, clock, script, segment_tokens
        self.calls: list[DecodeCall] = []

    def __call__(self, tokens_up, mask_up, key, *, max_new_tokens: int, num_samples: int = 1, **kwargs):
        import jax
        import numpy as np

        budget = int(max_new_tokens)
        decode = min(self.segment_tokens, budget) if self.segment_tokens else budget
        t0 = time.perf_counter()
        out = jax.block_until_ready(self.sample_fn(tokens_up, mask_up, key, max_new_tokens=decode,
                                                   num_samples=num_samples, **kwargs))
        seconds = time.perf_counter() - t0
        lengths = np.asarray(out.lengths_b)
        prompt_len = float(np.asarray(mask_up).sum(axis=1).mean())  # each prompt has num_samples rows
        self.calls.append(DecodeCall(rows=int(lengths.shape[0]), prompt_len=prompt_len, steps=int(lengths.max()),
                                     generated=int(lengths.sum()), seconds=seconds))
        self.clock.add("generation", seconds)
        if self.script is None:
            return out
        return self.script.replace(out, first_round=num_samples > 1, budget=budget)


@contextlib.contextmanager
def timed_pool_calls(clock: Clock):
    """Times the engine's pool calls (recal_jax.rollout.engine.call_many_sync: all calls of a
    generation round at once) as the phase pool_calls, for the duration of the block."""
    from recal_jax.rollout import engine as engine_module

    original = engine_module.call_many_sync

    def timed(pool, requests):
        t0 = time.perf_counter()
        try:
            return original(pool, requests)
        finally:
            clock.add("pool_calls", time.perf_counter() - t0)

    engine_module.call_many_sync = timed
    try:
        yield
    finally:
        engine_module.call_many_sync = original


# long: three small subclasses, defined together because their imports need jax
def _instrumented_classes():
    """Subclasses of the runner, scorer and GRPOIteration that time their phases (built on
    demand: the imports need jax)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from recal_jax.rollout.runner import RolloutRunner, Scorer
    from recal_jax.training.iteration import GRPOIteration

    @dataclasses.dataclass(frozen=True)
    class TimedScorer(Scorer):
        clock: Any = dataclasses.field(default=None, compare=False)

        def score(self, rollout, records):
            t0 = time.perf_counter()
            try:
                return super().score(rollout, records)
            finally:
                self.clock.add("scoring", time.perf_counter() - t0)

    @dataclasses.dataclass(frozen=True)
    class RecordingRunner(RolloutRunner):
        seen: Any = dataclasses.field(default=None, compare=False)  # list of per-run facts

        def run(self, params, records, num_samples, key, *, sampling):
            rollout, rewards = super().run(params, records, num_samples, key, sampling=sampling)
            self.seen.append({"finish_reasons": collections.Counter(rollout.finish_reasons),
                              "calls": sum(len(c) for c in rollout.calls),
                              "turns": int(np.asarray(rollout.num_turns_b).sum()),
                              "completion_tokens": int(np.asarray(rollout.completion_len_b).sum()),
                              "policy_tokens": int(np.asarray(rollout.loss_mask_bt).sum())})
            return rollout, rewards

    @dataclasses.dataclass(kw_only=True)
    class TimedIteration(GRPOIteration):
        clock: Any = None
        reference: str = "separate"
        # per train batch: (its pieces as (rows, width, attended length), real rollout tokens)
        batches: list = dataclasses.field(default_factory=list)

        def _calibrate(self, rewards, ids_u, calib_state):
            t0 = time.perf_counter()
            out = jax.block_until_ready(super()._calibrate(rewards, ids_u, calib_state))
            self.clock.add("calibration", time.perf_counter() - t0)
            return out

        def train_batch(self, state, rollout, advantages_b, *, width=None, params=None):
            t0 = time.perf_counter()
            batch = super().train_batch(state, rollout, advantages_b, width=width, params=params)
            self.clock.add("batch_assembly", time.perf_counter() - t0)
            if self.reference == "separate" and state.ref_params is not None:
                t0 = time.perf_counter()
                logp, _ = self.logprobs_fn(state.ref_params, batch)
                batch["logp_ref_bt"] = np.asarray(jax.block_until_ready(logp))
                self.clock.add("reference_logprobs", time.perf_counter() - t0)
            self.batches.append(batch_pieces(batch))
            return batch

        def _update(self, state, batch, calib_state):
            t0 = time.perf_counter()
            state, metrics = super()._update(state, batch, calib_state)
            jax.block_until_ready((state.params, state.opt_state, metrics))
            self.clock.add("train_step", time.perf_counter() - t0)
            return state, metrics

    return TimedScorer, RecordingRunner, TimedIteration


def batch_pieces(batch: dict) -> tuple[list[tuple[int, int, int]], int]:
    """What a train batch makes the model run: its pieces (rows, width, attended length), and
    the real tokens of its rollouts (prompt + completion + information blocks, no padding).
    Full layout: one piece B x T attending T. Shared-prompt layout: the prompts U x P
    attending P, and the completions B x C attending P + C; each row counts its prompt."""
    import numpy as np

    from recal_jax.training.train_step import is_prompt_shared

    rows, width = np.shape(batch["tokens_bt"])
    real = int(np.asarray(batch["attention_mask_bt"]).sum())
    if not is_prompt_shared(batch):
        return [(int(rows), int(width), int(width))], real
    prompts, prompt_width = np.shape(batch["prompt_tokens_up"])
    real += int(np.asarray(batch["prompt_len_u"]).sum()) * (rows // prompts)
    return [(int(prompts), int(prompt_width), int(prompt_width)),
            (int(rows), int(width), int(prompt_width + width))], real


# --------------------------------------------------------------------------- the benchmark

PHASES = ("generation", "pool_calls", "scoring", "rollout_host", "calibration", "batch_assembly",
          "reference_logprobs", "train_step", "other")


def _policy(run, opts: BenchOptions, cfg):
    """(model, model_config, rebuilt): the policy set_up built, or (with another vocabulary
    than the tokenizer's) a random one of the same architecture with `vocab_size` rows,
    created directly in its mesh shardings (launch.gpu_check.init_model)."""
    from recal_jax.models.config import PRESETS

    current = run.model_config.vocab_size
    if opts.vocab_size == -1:
        target = PRESETS[opts.model_preset]["vocab_size"] if opts.model_preset else current
    else:
        target = opts.vocab_size or current
    if cfg.model.pretrained_path or target == current:
        return run.model, run.model_config, False
    if target < run.tokenizer.vocab_size:
        raise ValueError(f"--vocab_size={target} is smaller than the tokenizer's {run.tokenizer.vocab_size} tokens")
    from launch.gpu_check import init_model

    model_config = dataclasses.replace(run.model_config, vocab_size=int(target))
    return init_model(model_config, run.mesh, cfg.run.seed), model_config, True


def _param_facts(params, model_config) -> dict:
    import jax
    import numpy as np

    leaves = jax.tree.leaves(params)
    count = sum(int(np.prod(x.shape)) for x in leaves)
    nbytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)
    decode_bytes = nbytes
    if not model_config.tie_word_embeddings:  # the input table is only gathered by a decode step
        decode_bytes -= model_config.vocab_size * model_config.hidden_size * np.dtype(model_config.param_dtype).itemsize
    return {"params": count, "param_bytes": nbytes, "decode_param_bytes": decode_bytes}


def _summary(values: Sequence[float]) -> dict:
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}


@dataclasses.dataclass
class Harness:
    """The run's GRPO iteration with its instruments."""

    state: Any
    iteration: Any  # TimedIteration
    probe: GenerationProbe
    clock: Clock
    seen: list  # per rollout batch: finish reasons, pool calls, turns, tokens (RecordingRunner)
    model_config: Any
    facts: dict  # parameter count and bytes
    rebuilt: bool  # the policy was rebuilt with another vocabulary than set_up's


def _build(cfg, run, opts: BenchOptions) -> Harness:
    """The GRPO iteration as grpo.train builds it (optimiser, TrainState, train step,
    components.grpo_iteration), over a runner, scorer and generate_fn that time their phases."""
    import jax

    from recal_jax.calibration import init_state
    from recal_jax.rollout.sampler import Sampler
    from recal_jax.shapes import PROMPT_BUCKET
    from recal_jax.training import components
    from recal_jax.training.optim import make_optimizer
    from recal_jax.training.train_state import TrainState
    from recal_jax.training.train_step import make_train_step

    clock, seen = Clock(), []
    model, model_config, rebuilt = _policy(run, opts, cfg)
    engine = run.train_runner.engine
    sample_fn = engine.generate_fn
    if rebuilt:  # the sampler set_up built (for both splits) holds the old policy: drop it
        sample_fn = Sampler(model, pad_id=run.tokenizer.pad_id, eos_id=run.tokenizer.eos_id,
                            max_prompt_len=run.seq_len, prompt_bucket=PROMPT_BUCKET).sample
        run.model, run.model_config = model, model_config
        run.test_runner.engine.generate_fn = sample_fn
    script = (RolloutScript(run.tokenizer, engine.model_names, engine.protocol, searches=opts.searches,
                            segment_tokens=opts.segment_tokens, seed=cfg.run.seed) if opts.scripted else None)
    probe = GenerationProbe(sample_fn, clock, script, opts.segment_tokens)
    engine.generate_fn = probe
    timed_scorer, recording_runner, timed_iteration = _instrumented_classes()
    base = run.train_runner
    scorer = timed_scorer(log=base.scorer.log, answer_metric=base.scorer.answer_metric, clock=clock)
    runner = recording_runner(engine=engine, scorer=scorer, prompt_ids=base.prompt_ids, seq_len=base.seq_len,
                              seen=seen)
    grpo = cfg.grpo
    optimizer = make_optimizer(components.grpo_optim_config(grpo))
    state = TrainState.create(model, optimizer, rng=jax.random.key(cfg.run.seed),
                              calib_state=init_state(run.calibration, len(run.suite.train.model_names)),
                              with_reference=grpo.kl_coef > 0)
    train_step = make_train_step(state.graphdef, optimizer, loss_config=components.loss_config(grpo),
                                 mesh=run.mesh, num_microbatches=grpo.microbatches)
    plain = components.grpo_iteration(grpo, runner=runner, calibration=run.calibration, train_step=train_step,
                                      logprobs=components.logprobs_fn(state.graphdef), mesh=run.mesh)
    iteration = timed_iteration(**{f.name: getattr(plain, f.name) for f in dataclasses.fields(plain)},
                                clock=clock, reference=opts.reference)
    return Harness(state=state, iteration=iteration, probe=probe, clock=clock, seen=seen,
                   model_config=model_config, facts=_param_facts(state.params, model_config), rebuilt=rebuilt)


def _iterate(h: Harness, records, compiles) -> dict:
    """One timed GRPO iteration on `records` (h.state advanced): its row of per_iteration."""
    import jax

    c0, s0, f0 = compiles.count, compiles.seconds, collections.Counter(compiles.functions)
    n_calls, n_batches, n_seen = len(h.probe.calls), len(h.iteration.batches), len(h.seen)
    h.clock.take()
    t0 = time.perf_counter()
    with timed_pool_calls(h.clock):
        h.state, metrics = h.iteration(h.state, records)
    jax.block_until_ready(h.state.params)
    total = time.perf_counter() - t0
    phases = h.clock.take()
    inside = sum(phases.get(k, 0.0) for k in ("generation", "pool_calls", "scoring"))
    phases["rollout_host"] = max(float(metrics["perf"]["rollout_seconds"]) - inside, 0.0)
    phases["other"] = max(total - sum(phases.values()), 0.0)
    batches = h.iteration.batches[n_batches:]
    rollout = h.seen[n_seen]
    return {
        "seconds": total, "compiles": compiles.count - c0, "compile_seconds": compiles.seconds - s0,
        "compiled_functions": dict(collections.Counter(compiles.functions) - f0),
        "phases": {k: phases.get(k, 0.0) for k in PHASES},
        "train_pieces": [piece for pieces, _ in batches for piece in pieces],
        "train_tokens": sum(real for _, real in batches),
        "decode_calls": [dataclasses.asdict(c) for c in h.probe.calls[n_calls:]],
        "rollout": {**{k: v for k, v in rollout.items() if k != "finish_reasons"},
                    "finish_reasons": dict(rollout["finish_reasons"])},
        "reward_answer": float(metrics["reward"]["answer"]),
    }


def run_bench(config: Any, opts: BenchOptions, *, config_path: str = "") -> dict:
    """Builds the run of `config` (a ConfigDict or dict) with `opts` applied and runs
    opts.iterations GRPO iterations; the report (module doc) as a dict of JSON values."""
    import jax
    import numpy as np

    from recal_jax.data import stratified_batches
    from recal_jax.training.run_config import parse_config
    from recal_jax.training.setup import set_up
    from recal_jax.training.timings import PhaseTimer

    if jax.process_count() > 1:
        raise ValueError("bench_loop runs in one process")
    timer = PhaseTimer()
    try:
        with timer.phase("parse"):
            cfg = parse_config(apply_options(config, opts))
        run = set_up(cfg, timer)
        with timer.phase("bench_build"):
            h = _build(cfg, run, opts)
        compiles = timer.compiles
        setup_compiles = (compiles.count, compiles.seconds)
        batches = stratified_batches(run.suite.train, cfg.grpo.instances_per_step, np.random.default_rng(cfg.run.seed))
        per_iteration = []
        for i in range(opts.iterations):
            records = next(batches)
            with timer.phase("warmup_iterations" if i < opts.warmup else "steady_iterations"):
                per_iteration.append({"iteration": i, "warmup": i < opts.warmup, **_iterate(h, records, compiles)})
        wall = timer.breakdown()
    finally:
        timer.close()
    return _report(cfg, opts, run, h, per_iteration, wall, setup_compiles, compiles, config_path=config_path)


# long: one JSON object, key by key, with the arithmetic of each figure beside it
def _report(cfg, opts, run, h: Harness, per_iteration, wall, setup_compiles, compiles, *, config_path) -> dict:
    import jax
    import numpy as np

    from launch.gpu_check import memory_bandwidth_per_device, peak_flops_per_device, train_flops_per_token

    model_config, facts, rebuilt = h.model_config, h.facts, h.rebuilt

    devices = list(run.mesh.devices.flat)
    n_dev = len(devices)
    kind = devices[0].device_kind
    steady = [it for it in per_iteration if not it["warmup"]]
    warm = [it for it in per_iteration if it["warmup"]]
    seconds = [it["seconds"] for it in steady]
    total = sum(seconds)
    phase_sums = {k: sum(it["phases"][k] for it in steady) for k in PHASES}

    calls = [DecodeCall(**c) for it in steady for c in it["decode_calls"]]
    generated = sum(c.generated for c in calls)
    gen_seconds = sum(c.seconds for c in calls)
    bandwidth = opts.memory_bandwidth or memory_bandwidth_per_device(kind)
    itemsize = np.dtype(model_config.dtype).itemsize
    kv_pp = kv_bytes_per_position(model_config.num_layers, model_config.num_kv_heads, model_config.head_dim, itemsize)
    bound = decode_bound_summary(calls, param_bytes=facts["decode_param_bytes"], kv_bytes_per_pos=kv_pp,
                                 bandwidth=bandwidth)
    bound["bandwidth_source"] = ("--memory_bandwidth" if opts.memory_bandwidth else "launch.gpu_check.HBM_BANDWIDTH"
                                 if bandwidth else f"n/a: unknown device kind {kind!r}")

    grpo = cfg.grpo
    in_step_reference = grpo.kl_coef > 0 and opts.reference == "in_step"
    pieces = [tuple(piece) for it in steady for piece in it["train_pieces"]]
    train_tokens = sum(r * w for r, w, _ in pieces) * grpo.updates_per_batch
    train_flops = sum(r * w * train_flops_per_token(model_config, attended, in_step_reference)
                      for r, w, attended in pieces) * grpo.updates_per_batch
    train_seconds = phase_sums["train_step"]
    peak_flops = peak_flops_per_device(kind)
    mfu = train_flops / train_seconds / (peak_flops * n_dev) if peak_flops and train_seconds > 0 else None
    e2e_tokens = sum(it["train_tokens"] for it in steady)

    rollouts = [it["rollout"] for it in steady]
    rows = grpo.instances_per_step * grpo.group_size
    n_rollouts = rows * len(steady)
    finish = collections.Counter()
    for r in rollouts:
        finish.update(r["finish_reasons"])
    c = model_config
    return {
        "benchmark": "bench_loop",
        "config": config_path, "suite": cfg.run.suite, "protocol": run.suite.train.protocol,
        "pool": type(run.train_runner.engine.pool).__name__,
        "device_kind": kind, "device_count": n_dev, "platform": devices[0].platform,
        "jax_version": jax.__version__,
        "xla_command_buffers": opts.xla_command_buffers, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "model": {"preset": cfg.model.preset, "num_layers": c.num_layers, "hidden_size": c.hidden_size,
                  "num_heads": c.num_heads, "num_kv_heads": c.num_kv_heads, "head_dim": c.head_dim,
                  "vocab_size": c.vocab_size, "tokenizer_vocab_size": run.tokenizer.vocab_size,
                  "vocab_rebuilt": rebuilt, "dtype": cfg.model.dtype, "remat": c.remat,
                  "attention_impl": c.resolved_attention_impl(), **facts},
        "rows": rows, "instances_per_step": grpo.instances_per_step, "group_size": grpo.group_size,
        "microbatches": grpo.microbatches, "updates_per_batch": grpo.updates_per_batch,
        "shared_prompt": h.iteration.shared_prompt, "seq_len": run.seq_len,
        "max_turns": grpo.max_turns, "max_new_tokens_per_turn": grpo.max_new_tokens_per_turn,
        "max_total_tokens": grpo.max_total_tokens, "kl_coef": grpo.kl_coef, "reference": opts.reference,
        "iterations": opts.iterations, "warmup_iterations": opts.warmup, "steady_iterations": len(steady),
        "seconds_per_iteration": statistics.fmean(seconds),
        "seconds_per_iteration_stats": _summary(seconds),
        # compiles of new shapes in the steady state (CompileLog seconds) taken out: an estimate
        "seconds_per_iteration_excluding_compiles": statistics.fmean(
            max(it["seconds"] - it["compile_seconds"], 0.0) for it in steady),
        "e2e_tokens_per_s_per_device": e2e_tokens / total / n_dev,
        "e2e_tokens_per_iteration": e2e_tokens / len(steady),
        "rollout_generated_tokens_per_s": generated / gen_seconds if gen_seconds > 0 else None,
        "rollout_generated_tokens_per_iteration": generated / len(steady),
        "train_step": {
            "tokens": train_tokens, "seconds": train_seconds,
            "tokens_per_s": train_tokens / train_seconds if train_seconds > 0 else None,
            "flops_per_token": train_flops / train_tokens if train_tokens else None,
            "reference_forward_in_step": in_step_reference,
            "tflops_per_s_per_device": train_flops / train_seconds / n_dev / 1e12 if train_seconds > 0 else None,
            "peak_flops_per_device": peak_flops,
            "mfu": mfu, "mfu_note": None if mfu is not None else f"n/a: no peak FLOP/s known for device kind {kind!r}",
        },
        "mfu": mfu,
        "breakdown": {"iterations": len(steady), "total_seconds": total, "phases": phase_sums,
                      "shares": {k: v / total for k, v in phase_sums.items()} if total > 0 else None},
        "warmup": {"iterations": len(warm), "seconds": [it["seconds"] for it in warm],
                   "compiles": sum(it["compiles"] for it in warm),
                   "compile_seconds": sum(it["compile_seconds"] for it in warm)},
        "compiles": {"setup": setup_compiles[0], "setup_seconds": setup_compiles[1],
                     "warmup": sum(it["compiles"] for it in warm),
                     "warmup_seconds": sum(it["compile_seconds"] for it in warm),
                     "steady": sum(it["compiles"] for it in steady),
                     "steady_seconds": sum(it["compile_seconds"] for it in steady),
                     "total": compiles.count, "total_seconds": compiles.seconds,
                     "functions": dict(compiles.functions.most_common(20))},
        "decode_bound": bound,
        "workload": {"scripted": opts.scripted, "searches": opts.searches, "segment_tokens": opts.segment_tokens,
                     "pool_calls_per_rollout": sum(r["calls"] for r in rollouts) / n_rollouts,
                     "turns_per_rollout": sum(r["turns"] for r in rollouts) / n_rollouts,
                     "policy_tokens_per_rollout": sum(r["policy_tokens"] for r in rollouts) / n_rollouts,
                     "completion_tokens_per_rollout": sum(r["completion_tokens"] for r in rollouts) / n_rollouts,
                     "sampler_calls_per_iteration": len(calls) / len(steady),
                     "finish_reasons": dict(finish)},
        "wall": wall,
        "notes": _notes(steady, rebuilt, model_config, run),
        "per_iteration": per_iteration,
    }


def _notes(steady, rebuilt, model_config, run) -> list[str]:
    notes = []
    steady_compiles = sum(it["compiles"] for it in steady)
    if steady_compiles:
        notes.append(f"{steady_compiles} compiles of new shapes in the steady iterations "
                     f"({sum(it['compile_seconds'] for it in steady):.1f} s, inside their phases): raise --warmup, "
                     "or see seconds_per_iteration_excluding_compiles")
    if rebuilt:
        notes.append(f"policy vocabulary {model_config.vocab_size} (the preset's); the tokenizer uses the first "
                     f"{run.tokenizer.vocab_size} ids")
    return notes


# --------------------------------------------------------------------------- command line

def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    d = BenchOptions()
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file (launch/configs/*.py).")
    flags.DEFINE_integer("iterations", d.iterations, "GRPO iterations in all, warm-up included.")
    flags.DEFINE_integer("warmup", d.warmup, "First iterations reported apart (compiles), not steady state.")
    flags.DEFINE_string("model_preset", None, "ModelConfig preset at its full depth (default: the config's model).")
    flags.DEFINE_integer("num_layers", None, "Override the policy's number of layers.")
    flags.DEFINE_integer("vocab_size", d.vocab_size,
                         "Policy vocabulary: -1 the preset's with --model_preset, 0 the tokenizer's.")
    flags.DEFINE_integer("rows", d.rows, "Rollouts per iteration, instances_per_step x group_size (0: the config's).")
    flags.DEFINE_enum("reference", d.reference, list(REFERENCE_MODES),
                      "Reference log-probs: a phase of their own, or inside the train step (as training).")
    flags.DEFINE_bool("scripted", d.scripted, "Replace the random policy's tokens by protocol segments.")
    flags.DEFINE_integer("searches", d.searches, "Scripted searches per rollout (multi_turn).")
    flags.DEFINE_integer("segment_tokens", d.segment_tokens,
                         "Decode this many tokens per round (0: the whole turn budget).")
    flags.DEFINE_float("memory_bandwidth", d.memory_bandwidth,
                       "Device memory bandwidth in bytes/s (0: by device kind).")
    flags.DEFINE_enum("xla_command_buffers", d.xla_command_buffers, list(XLA_COMMAND_BUFFER_MODES),
                      "XLA command buffers (CUDA graphs): keep XLA_FLAGS, loops (+WHILE,+CONDITIONAL), off.")
    flags.DEFINE_string("out", "", "Also write the JSON here.")
    return flags.FLAGS


def main(argv):
    from absl import flags
    from ml_collections import config_flags

    if len(argv) > 1:
        print(f"bench_loop: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(2)
    f = flags.FLAGS
    try:
        opts = BenchOptions(iterations=f.iterations, warmup=f.warmup, model_preset=f.model_preset,
                            num_layers=f.num_layers, vocab_size=f.vocab_size, rows=f.rows, reference=f.reference,
                            scripted=f.scripted, searches=f.searches, segment_tokens=f.segment_tokens,
                            memory_bandwidth=f.memory_bandwidth, xla_command_buffers=f.xla_command_buffers)
        result = run_bench(f.config, opts, config_path=config_flags.get_config_filename(f["config"]))
    except ValueError as e:  # ConfigError and DataError are ValueErrors: one line naming the flag
        print(f"bench_loop: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    text = json.dumps(result, default=float)
    if f.out:
        with open(f.out, "w") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    # XLA_FLAGS first: nothing of jax is imported yet (config files import it when absl parses them)
    try:
        os.environ["XLA_FLAGS"] = xla_flags_for(command_buffer_mode_from_argv(sys.argv),
                                                os.environ.get("XLA_FLAGS", ""))
    except ValueError:
        pass  # absl's enum flag reports the bad value
    from absl import app, logging

    logging.set_verbosity(logging.WARNING)
    _define_flags()
    app.run(main)
