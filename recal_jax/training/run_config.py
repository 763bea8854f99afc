"""A run's config, parsed once: the ml_collections ConfigDict of launch/configs becomes a
frozen `RunConfig` of typed sections, and every value that cannot work is a `ConfigError`
whose message starts with the flag that sets it (`--config.grpo.group_size=1: ...`).

The launcher, `experiments.run_grid` and `experiments.grid_worker` call `parse_config`;
nothing below them reads a ConfigDict. The sections' defaults are the defaults of every
config (launch/configs/base.py builds its ConfigDict from them), and `RunConfig.to_dict()`
is what config.json holds: `parse_config(RunConfig.to_dict())` gives the same RunConfig.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from recal_jax.calibration import ALL_PRESET_NAMES, CalibrationConfig
from recal_jax.data.registry import SUITES, OptionError, options_from_mapping
from recal_jax.data.schema import PROTOCOLS
from recal_jax.losses import AGG_MODES, KL_KINDS, KL_SCHEDULES
from recal_jax.models.config import PRESETS as MODEL_PRESETS
from recal_jax.models.config import REMAT_POLICIES
from recal_jax.models.tokenizer import PROTOCOL_TAGS, split_pieces
from recal_jax.routing.pools.registry import AUTO, POOLS
from recal_jax.routing.prompts import STYLES
from recal_jax.routing.question_cut import QUESTION_CUTS
from recal_jax.training.sft_data import COPY_CHECKS, QUERY_STYLES, ROUTING_RULES, THINK_STYLES


class ConfigError(ValueError):
    """A config value that cannot work; the message names the flag (`--config.a.b=value: ...`)."""


ANSWER_METRICS = ("auto", "em", "f1", "score")
ROUTE_RULES = ("linear", "router_r1")
DTYPE_NAMES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("auto", "xla", "cudnn")
# Upfront size limits: past these a run would exhaust a single host long before it did any
# useful work (a group of 100,000 rollouts ran out of 35.8 GB only after SFT).
MAX_ROLLOUTS_PER_STEP = 65_536
MAX_GROUP_SIZE = 4_096
MAX_TOTAL_TOKENS = 32_768
_DEFAULT_CONTEXT = 32_768  # ModelConfig's max_position_embeddings
# the BPE tokenizer's byte alphabet plus the protocol's tags (setup checks the pool's model names too)
MIN_VOCAB = 256 + len(PROTOCOL_TAGS)


@dataclasses.dataclass(frozen=True)
class RunSection:
    seed: int = 0
    suite: str = "synthetic"  # a name of recal_jax.data.registry.SUITES
    data_dir: str = ""  # for suites that read logged data
    protocol: str = ""  # "" = the suite's own; single_call | multi_turn overrides it
    max_train_instances: int = 0  # 0 = every record
    max_test_instances: int = 0
    prompt_style: str = "compact"  # compact (tiny policies) | full (instruction-tuned policies)
    log_every: int = 1


@dataclasses.dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"
    pretrained_path: str = ""
    dtype: str = "float32"
    num_layers: int = 2  # 0 = the preset's
    hidden_size: int = 0  # 0 = the preset's
    remat: str = "none"  # none | full | save_dots | save_attn
    attention_impl: str = "auto"


@dataclasses.dataclass(frozen=True)
class TokenizerSection:
    path: str = ""
    vocab_size: int = 1024
    # longer questions are cut to that many tokens (0 = no cap); summary.json counts them
    max_question_tokens: int = 256
    # how: "tail" keeps the last tokens, "head_tail" the first half and the last half joined by
    # " ... " (routing.question_cut)
    question_cut: str = "tail"
    # a trained tokenizer keeps the suite's atomic words (its registry entry's, e.g. the compose
    # world's entity names) as one token each. Off by default: on compose, names as single
    # (untrained for unseen entities) tokens held the held-out copy at 0.85 on seeds 0 and 1,
    # where byte-pair syllables reach 0.95
    suite_words: bool = False
    # a regex: each match stays its own piece, no BPE token crosses it (models.tokenizer.train_bpe)
    split_pattern: str = ""


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = -1  # -1 = every device not used by fsdp x tensor
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class SftSection:
    steps: int = 800
    batch_size: int = 32
    learning_rate: float = 5e-3
    warmup_steps: int = 20
    routing: str = "mixed"  # sft_data.ROUTING_RULES
    best_prob: float = 0.5
    query_style: str = "fixed"
    reply_swap: float = 0.5
    answer_weight: float = 1.0
    think: str = "fixed"  # sft_data.THINK_STYLES
    # > 0: stop SFT once the held-out answer-copy accuracy reaches this (steps = the cap)
    until_copy_accuracy: float = 0.0
    # routing="decompose_random": the share of multi-hop questions demonstrated as one direct call
    direct_share: float = 0.25
    heldout_questions: int = 40
    # what the held-out criterion reads: "answer" (the final answer's copy) or "all" (also every
    # query the policy copies: a decomposition's sub-questions; sft.routing=decompose_random)
    copy_check: str = "answer"
    check_every: int = 50
    min_steps: int = 0
    # > 0: also demonstrate on this many re-drawn worlds of the suite (SuiteSpec.resample), whose
    # names never occur in the run's own questions, so that the copy cannot be learnt name by name;
    # the held-out criterion then reads questions of one more such world, never trained on.
    fresh_worlds: int = 0
    # > 0: this share of the demonstrations shows fresh random entity names instead of the world's
    # (every name of the demonstration replaced consistently, SuiteSpec.renamer): a name then occurs
    # in one demonstration only, so the copy cannot be learnt name by name and has to generalise.
    rename_share: float = 0.0
    # > 0: the renamed share enters only once the held-out copy accuracy reaches this value (the
    # world's own names until then): the copy forms on repeated names, then learns to generalise
    rename_after_copy: float = 0.0
    # loss weight factor of the copied segments (every query and the answer: Demonstration.query_spans,
    # answer_span); the rest of a demonstration is template or a random routing choice
    copy_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class GrpoSection:
    steps: int = 100
    instances_per_step: int = 8
    group_size: int = 8
    updates_per_batch: int = 1
    microbatches: int = 1
    learning_rate: float = 3e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 0.0
    kl_coef: float = 0.001
    # the KL coefficient over the GRPO steps (losses.KL_SCHEDULES): constant kl_coef, or from
    # kl_coef at step 0 to kl_coef_final at the last step, linearly or along a half cosine
    kl_schedule: str = "constant"
    kl_coef_final: float = 0.0
    kl_kind: str = "k3"
    loss_agg: str = "token-mean"
    temperature: float = 1.0
    top_p: float = 1.0
    max_turns: int = 2
    max_new_tokens_per_turn: int = 48
    max_total_tokens: int = 160
    max_info_tokens: int = 24
    recompute_old_logprobs: bool = True
    # train on each group's prompt once (train_step's shared-prompt layout; one process only):
    # the same loss and gradient as the full rows, with less work when prompts are long
    shared_prompt: bool = True
    stop_at_step: int = 0  # > 0: checkpoint and return after this GRPO step (split a run over jobs)


# Set by the run, not by calibration flags: num_datasets by the suite, route_rule and cost_ref by `reward`.
_NOT_CALIBRATION_FLAGS = ("num_datasets", "route_rule", "cost_ref")
CALIBRATION_FIELDS = tuple(f.name for f in dataclasses.fields(CalibrationConfig)
                           if f.name not in _NOT_CALIBRATION_FLAGS)


@dataclasses.dataclass(frozen=True)
class CalibrationSection:
    """The preset and the CalibrationConfig fields set over it (`overrides`, in field order)."""

    preset: str = "recal"
    overrides: tuple[tuple[str, Any], ...] = (("tau", 1.0),)

    def build(self, num_datasets: int, cost_ref: float, route_rule: str) -> CalibrationConfig:
        return CalibrationConfig.preset(self.preset, num_datasets=num_datasets, cost_ref=float(cost_ref),
                                        route_rule=route_rule, **dict(self.overrides))


@dataclasses.dataclass(frozen=True)
class RewardSection:
    answer_metric: str = "em"  # auto | em | f1 | score
    cost_ref: float = 0.0  # 0 = the train log's default (spec section 3)
    route_rule: str = "linear"


@dataclasses.dataclass(frozen=True)
class EvalSection:
    every: int = 0  # > 0: evaluate every that many GRPO steps
    greedy: bool = True
    batch_size: int = 128
    after_sft: bool = True
    export_rollouts: bool = True  # the final evaluation's rollouts as a datasets.Dataset
    reference_cache_dir: str = ""  # caches the fitted classical routers ("" = fit them in every run)


@dataclasses.dataclass(frozen=True)
class PoolSection:
    kind: str = AUTO  # a name of recal_jax.routing.pools.registry.POOLS, or auto
    endpoints: str = ""
    cache_dir: str = ""
    concurrency: int = 32


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int = 0  # 0 = only at the end
    keep: int = 2


SECTIONS: dict[str, type] = {
    "model": ModelSection, "tokenizer": TokenizerSection, "mesh": MeshSection, "sft": SftSection,
    "grpo": GrpoSection, "calibration": CalibrationSection, "reward": RewardSection, "eval": EvalSection,
    "pool": PoolSection, "checkpoint": CheckpointSection,
}
# Suite option sections (config.synthetic, ...): one per registered suite that has options.
SUITE_SECTIONS = tuple(name for name, spec in SUITES.items() if spec.options is not None)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    run: RunSection = RunSection()
    model: ModelSection = ModelSection()
    tokenizer: TokenizerSection = TokenizerSection()
    mesh: MeshSection = MeshSection()
    sft: SftSection = SftSection()
    grpo: GrpoSection = GrpoSection()
    calibration: CalibrationSection = CalibrationSection()
    reward: RewardSection = RewardSection()
    eval: EvalSection = EvalSection()
    pool: PoolSection = PoolSection()
    checkpoint: CheckpointSection = CheckpointSection()
    # the suite's own options (an instance of its registry entry's options type), None without
    suite_options: Any = None

    @property
    def suite_protocol(self) -> str | None:
        """The protocol the run uses when known before loading (None: a jsonl log's own)."""
        return self.run.protocol or SUITES[self.run.suite].protocol

    def to_dict(self) -> dict[str, Any]:
        """The ConfigDict-shaped dict (config.json): run fields at the top level, one dict per
        section, calibration overrides flattened into its section, the suite's options under its name."""
        out: dict[str, Any] = dataclasses.asdict(self.run)
        for name in SECTIONS:
            if name == "calibration":
                out[name] = {"preset": self.calibration.preset, **dict(self.calibration.overrides)}
            else:
                out[name] = dataclasses.asdict(getattr(self, name))
        if self.suite_options is not None:
            out[self.run.suite] = dataclasses.asdict(self.suite_options)
        return out


def default_dict() -> dict[str, Any]:
    """Every config's defaults, with each suite's option section at its defaults."""
    out = RunConfig().to_dict()
    for name in SUITE_SECTIONS:
        out[name] = dataclasses.asdict(SUITES[name].options())
    return out


# --------------------------------------------------------------------------- parsing

def _flag(path: str, value: Any, requirement: str) -> ConfigError:
    return ConfigError(f"--config.{path}={_short(value)}: {requirement}")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _typed(path: str, value: Any, kind: Any) -> Any:
    """`value` as the section field's type (an int is accepted for a float field)."""
    if kind in (int, "int"):
        if not _is_int(value):
            raise _flag(path, value, "must be an integer")
        return value
    if kind in (float, "float"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _flag(path, value, "must be a number")
        return float(value)  # finiteness: the field's rule, or _check_finite
    if kind in (bool, "bool"):
        if not isinstance(value, bool):
            raise _flag(path, value, "must be True or False")
        return value
    if kind in (str, "str"):
        if not isinstance(value, str):
            raise _flag(path, value, "must be a string")
        if "\x00" in value:
            raise _flag(path, value, "must not contain a NUL character")
        return value
    return value


def _section(name: str, cls: type, values: Any) -> Any:
    """A section dataclass from its mapping: unknown keys and wrongly typed values are errors."""
    if not isinstance(values, Mapping):
        raise _flag(name, values, "must be a section (a mapping of fields)")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise _flag(f"{name}.{unknown[0]}", values[unknown[0]],
                    f"unknown field of section {name!r}; expected one of {sorted(fields)}")
    kwargs = {key: _typed(f"{name}.{key}", values[key], fields[key].type) for key in values}
    return cls(**kwargs)


def _calibration(values: Any) -> CalibrationSection:
    if not isinstance(values, Mapping):
        raise _flag("calibration", values, "must be a section (a mapping of fields)")
    known = ("preset",) + CALIBRATION_FIELDS
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise _flag(f"calibration.{unknown[0]}", values[unknown[0]],
                    f"unknown calibration field; expected one of {sorted(known)}")
    preset = values.get("preset", CalibrationSection.preset)
    if preset not in ALL_PRESET_NAMES:
        raise _flag("calibration.preset", preset, f"unknown preset; expected one of {ALL_PRESET_NAMES}")
    overrides = tuple((k, tuple(v) if isinstance(v, list) else v) for k in CALIBRATION_FIELDS
                      if (v := values.get(k)) is not None)
    return CalibrationSection(preset=preset, overrides=overrides)


def _suite_options(name: str, values: Any):
    spec = SUITES[name]
    try:
        return options_from_mapping(spec, values)
    except OptionError as e:
        raise _flag(f"{name}.{e.field}", (values or {}).get(e.field), e.requirement) from None
    except TypeError as e:
        raise _flag(name, values, str(e)) from None


def _as_dict(config: Any) -> dict:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(config).__name__}")
    return dict(config)


def parse_config(config: Any, *, check_paths: bool = True, check_devices: bool = True) -> RunConfig:
    """The typed, validated RunConfig of a ConfigDict (or its dict, e.g. config.json).

    Raises ConfigError naming the flag of the first value that cannot work. Fields missing
    from `config` take the defaults; unknown fields are errors. `check_paths`: data_dir,
    tokenizer.path, model.pretrained_path and pool.endpoints must exist (off for a config
    read back for comparison only). `check_devices`: the mesh must fit this process's devices
    (off in a process that only plans runs, such as the grid's, which must not claim an accelerator)."""
    raw = _as_dict(config)
    run_fields = {f.name for f in dataclasses.fields(RunSection)}
    known = run_fields | set(SECTIONS) | set(SUITE_SECTIONS)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _flag(unknown[0], raw[unknown[0]], f"unknown config field; expected one of {sorted(known)}")
    run = _section("run", RunSection, {k: v for k, v in raw.items() if k in run_fields})
    if run.suite not in SUITES:
        raise _flag("suite", run.suite, f"unknown suite; expected one of {tuple(SUITES)}")
    sections = {name: (_calibration(raw.get(name, {})) if name == "calibration"
                       else _section(name, cls, raw.get(name, {}))) for name, cls in SECTIONS.items()}
    for name in SUITE_SECTIONS:  # every suite section is checked, the run's suite's is kept
        if name in raw:
            _suite_options(name, raw[name])
    options = _suite_options(run.suite, raw.get(run.suite)) if run.suite in SUITE_SECTIONS else None
    parsed = RunConfig(run=run, suite_options=options, **sections)
    for check in _CHECKS:
        check(parsed, check_paths)
    if check_devices:
        _check_mesh(parsed)
    return parsed


# --------------------------------------------------------------------------- checks

def _at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: v >= lo


def _real(lo: float, hi: float = math.inf, *, open_low: bool = False) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and (v > lo if open_low else v >= lo) and v <= hi


def _one_of(choices) -> Callable[[Any], bool]:
    return lambda v: v in choices


_N0, _N1, _POS = _at_least(0), _at_least(1), _real(0.0, open_low=True)


def _split_pattern_ok(pattern: str) -> bool:
    if not pattern:
        return True
    try:
        split_pieces(pattern)
    except ValueError:
        return False
    return True


# long: a declarative table, one line per flag; splitting it would only scatter the rules
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("seed", _real(0, 2**31 - 1), "must lie in [0, 2**31 - 1]"),
    ("protocol", _one_of(("",) + PROTOCOLS), f"unknown protocol; expected one of {PROTOCOLS} or '' (the log's own)"),
    ("prompt_style", _one_of(STYLES), f"expected one of {STYLES}"),
    ("max_train_instances", _N0, "must be >= 0 (0 = every record)"),
    ("max_test_instances", _N0, "must be >= 0 (0 = every record)"),
    ("log_every", _N1, "must be >= 1"),
    ("reward.answer_metric", _one_of(ANSWER_METRICS), f"unknown answer metric; expected one of {ANSWER_METRICS}"),
    ("reward.route_rule", _one_of(ROUTE_RULES), f"unknown route rule; expected one of {ROUTE_RULES}"),
    ("reward.cost_ref", _real(0.0), "must be a finite number >= 0 (0 = the log's default)"),
    ("model.dtype", _one_of(DTYPE_NAMES), f"expected one of {DTYPE_NAMES}"),
    ("model.num_layers", _N0, "must be >= 0 (0 = the preset's)"),
    ("model.hidden_size", _N0, "must be >= 0 (0 = the preset's)"),
    ("model.remat", _one_of(tuple(REMAT_POLICIES)), f"expected one of {sorted(REMAT_POLICIES)}"),
    ("model.attention_impl", _one_of(ATTENTION_IMPLS), f"expected one of {ATTENTION_IMPLS}"),
    ("tokenizer.max_question_tokens", _N0, "must be >= 0 (0 = no cap)"),
    ("tokenizer.question_cut", _one_of(QUESTION_CUTS), f"expected one of {QUESTION_CUTS}"),
    ("tokenizer.split_pattern", _split_pattern_ok, "must be a regex the tokenizers library accepts (Oniguruma)"),
    ("tokenizer.vocab_size", _at_least(MIN_VOCAB),
     f"must be >= {MIN_VOCAB} (the tokenizer's 256-byte alphabet plus the protocol's special tokens)"),
    ("mesh.data", lambda v: v == -1 or v >= 1, "must be -1 (every remaining device) or >= 1"),
    ("mesh.fsdp", _N1, "must be >= 1"),
    ("mesh.tensor", _N1, "must be >= 1"),
    ("sft.steps", _N0, "must be >= 0 (0 = no SFT warm start)"),
    ("sft.batch_size", _N1, "must be >= 1"),
    ("sft.learning_rate", _POS, "must be a finite number > 0"),
    ("sft.warmup_steps", _N0, "must be >= 0"),
    ("sft.best_prob", _real(0.0, 1.0), "must lie in [0, 1]"),
    ("sft.reply_swap", _real(0.0, 1.0), "must lie in [0, 1]"),
    ("sft.answer_weight", _real(0.0), "must be a finite number >= 0"),
    ("sft.routing", _one_of(ROUTING_RULES), f"expected one of {ROUTING_RULES}"),
    ("sft.query_style", _one_of(QUERY_STYLES), f"expected one of {QUERY_STYLES}"),
    ("sft.think", _one_of(THINK_STYLES), f"expected one of {THINK_STYLES}"),
    ("sft.until_copy_accuracy", _real(0.0, 1.0), "must lie in [0, 1] (0 = a fixed number of SFT steps)"),
    ("sft.direct_share", _real(0.0, 1.0), "must lie in [0, 1]"),
    ("sft.heldout_questions", _N1, "must be >= 1"),
    ("sft.copy_check", _one_of(COPY_CHECKS), f"expected one of {COPY_CHECKS}"),
    ("sft.check_every", _N1, "must be >= 1"),
    ("sft.min_steps", _N0, "must be >= 0"),
    ("sft.fresh_worlds", _N0, "must be >= 0 (0 = demonstrations of the suite's own questions only)"),
    ("sft.rename_share", _real(0.0, 1.0), "must lie in [0, 1] (0 = the world's own names only)"),
    ("sft.copy_weight", _real(0.0, 1e3), "must lie in [0, 1000] (1 = the copied segments weigh as much as the rest)"),
    ("sft.rename_after_copy", _real(0.0, 1.0), "must lie in [0, 1] (0 = renamed demonstrations from the start)"),
    ("grpo.steps", _N0, "must be >= 0 (0 = no GRPO)"),
    ("grpo.instances_per_step", _N1, "must be >= 1 (questions per GRPO step)"),
    ("grpo.group_size", _at_least(2), "GRPO needs two or more rollouts per group (group_size >= 2); "
                                      "with one, every advantage is 0 and nothing is trained"),
    ("grpo.group_size", _real(0, MAX_GROUP_SIZE), f"must be <= {MAX_GROUP_SIZE}"),
    ("grpo.updates_per_batch", _N1, "must be >= 1"),
    ("grpo.microbatches", _N1, "must be >= 1"),
    ("grpo.learning_rate", _POS, "must be a finite number > 0"),
    ("grpo.warmup_steps", _N0, "must be >= 0"),
    ("grpo.weight_decay", _real(0.0), "must be a finite number >= 0"),
    ("grpo.grad_clip", _real(0.0), "must be a finite number >= 0 (0 = no clipping)"),
    ("grpo.temperature", _POS, "must be a finite number > 0 (greedy evaluation is eval.greedy)"),
    ("grpo.top_p", _real(0.0, 1.0, open_low=True), "must lie in (0, 1]"),
    ("grpo.kl_coef", _real(0.0), "must be a finite number >= 0"),
    ("grpo.kl_schedule", _one_of(KL_SCHEDULES), f"expected one of {KL_SCHEDULES}"),
    ("grpo.kl_coef_final", _real(0.0), "must be a finite number >= 0"),
    ("grpo.kl_kind", _one_of(KL_KINDS), f"expected one of {KL_KINDS}"),
    ("grpo.loss_agg", _one_of(AGG_MODES), f"expected one of {AGG_MODES}"),
    ("grpo.clip_low", _real(0.0), "must be a finite number >= 0"),
    ("grpo.clip_high", _real(0.0), "must be a finite number >= 0"),
    ("grpo.dual_clip", lambda v: v == 0 or 1 < v < math.inf, "must be 0 (off) or a finite number > 1"),
    ("grpo.max_turns", _N1, "must be >= 1"),
    ("grpo.max_new_tokens_per_turn", _N1, "must be >= 1"),
    ("grpo.max_total_tokens", _real(1, MAX_TOTAL_TOKENS), f"must lie in [1, {MAX_TOTAL_TOKENS}]"),
    ("grpo.max_info_tokens", _N0, "must be >= 0"),
    ("grpo.stop_at_step", _N0, "must be >= 0 (0 = run every step)"),
    ("eval.batch_size", _N1, "must be >= 1"),
    ("eval.every", _N0, "must be >= 0 (0 = no evaluation during GRPO)"),
    ("pool.kind", _one_of((AUTO,) + tuple(POOLS)), f"unknown pool; expected one of {(AUTO,) + tuple(POOLS)}"),
    ("pool.concurrency", _N1, "must be >= 1"),
    ("checkpoint.every", _N0, "must be >= 0 (0 = only at the end)"),
    ("checkpoint.keep", _N1, "must be >= 1"),
)


def _value(cfg: RunConfig, flag: str) -> Any:
    section, _, field = flag.rpartition(".")
    return getattr(getattr(cfg, section or "run"), field)


def _check_rules(cfg: RunConfig, check_paths: bool) -> None:
    for flag, ok, requirement in _RULES:
        value = _value(cfg, flag)
        if not ok(value):
            raise _flag(flag, value, requirement)


def _check_finite(cfg: RunConfig, check_paths: bool) -> None:
    """Every float field is finite (most rules say more; this covers the rest)."""
    for name in ("run",) + tuple(SECTIONS):
        section = getattr(cfg, name)
        if not dataclasses.is_dataclass(section):
            continue
        for field in dataclasses.fields(section):
            value = getattr(section, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise _flag(f"{name}.{field.name}" if name != "run" else field.name, value, "must be a finite number")


def _check_data(cfg: RunConfig, check_paths: bool) -> None:
    """data_dir for logged suites; an answer metric and SFT criterion that suit the protocol."""
    spec = SUITES[cfg.run.suite]
    if spec.needs_data_dir and not cfg.run.data_dir:
        raise _flag("data_dir", cfg.run.data_dir, f"suite {spec.name!r} reads logged data: set --config.data_dir")
    if spec.needs_data_dir and check_paths and not Path(cfg.run.data_dir).is_dir():
        raise _flag("data_dir", cfg.run.data_dir, "no such directory")
    for flag, path in (("tokenizer.path", cfg.tokenizer.path), ("model.pretrained_path", cfg.model.pretrained_path)):
        if path and check_paths and not Path(path).is_dir():
            raise _flag(flag, path, "no such directory")
    if cfg.pool.endpoints and check_paths and not Path(cfg.pool.endpoints).is_file():
        raise _flag("pool.endpoints", cfg.pool.endpoints, "no such file")
    protocol = cfg.suite_protocol
    if cfg.sft.until_copy_accuracy and protocol is not None and protocol != "multi_turn":
        raise _flag("sft.until_copy_accuracy", cfg.sft.until_copy_accuracy,
                    f"the held-out criterion measures the answer copy, which only multi_turn has "
                    f"(this run is {protocol}); use 0 and a fixed sft.steps")
    if cfg.sft.routing == "decompose_random" and cfg.sft.steps and (spec.planner is None or protocol != "multi_turn"):
        raise _flag("sft.routing", cfg.sft.routing, f"demonstrates decompositions, which need a suite that has a "
                    f"planner and the multi_turn protocol (suite {spec.name!r} runs {protocol})")
    if cfg.sft.fresh_worlds and cfg.sft.steps and spec.resample is None:
        raise _flag("sft.fresh_worlds", cfg.sft.fresh_worlds, f"suite {spec.name!r} cannot re-draw its world "
                    f"(its registry entry has no resample); use 0")
    if cfg.sft.rename_share and cfg.sft.steps and spec.renamer is None:
        raise _flag("sft.rename_share", cfg.sft.rename_share, f"suite {spec.name!r} cannot rename its entities "
                    f"(its registry entry has no renamer); use 0")
    if cfg.sft.rename_after_copy and not (cfg.sft.rename_share and cfg.sft.until_copy_accuracy):
        raise _flag("sft.rename_after_copy", cfg.sft.rename_after_copy, "waits for the held-out copy accuracy "
                    "before renaming: it needs sft.rename_share > 0 and sft.until_copy_accuracy > 0")
    if cfg.reward.answer_metric == "score" and protocol == "multi_turn":
        raise _flag("reward.answer_metric", "score", f"'score' needs the single_call protocol; suite "
                    f"{spec.name!r} runs multi_turn here (use em or f1, or --config.protocol=single_call)")


def _check_shapes(cfg: RunConfig, check_paths: bool) -> None:
    g = cfg.grpo
    if g.kl_schedule != "constant" and not g.kl_coef > 0:
        raise _flag("grpo.kl_schedule", g.kl_schedule, f"starts at grpo.kl_coef, which is {g.kl_coef:g}: a "
                    f"schedule needs grpo.kl_coef > 0 (the reference model is only kept when it is)")
    rows = g.instances_per_step * g.group_size
    if rows > MAX_ROLLOUTS_PER_STEP:
        raise _flag("grpo.instances_per_step", g.instances_per_step,
                    f"x grpo.group_size={g.group_size} = {rows} rollouts per step, over the limit of "
                    f"{MAX_ROLLOUTS_PER_STEP}")
    if rows % g.microbatches:
        raise _flag("grpo.microbatches", g.microbatches, f"must divide the {rows} rollouts of a step "
                                                         "(grpo.instances_per_step x grpo.group_size)")
    if not cfg.model.pretrained_path:
        if cfg.model.preset not in MODEL_PRESETS:
            raise _flag("model.preset", cfg.model.preset, f"unknown model preset; expected one of {sorted(MODEL_PRESETS)}")
        context = MODEL_PRESETS[cfg.model.preset].get("max_position_embeddings", _DEFAULT_CONTEXT)
        if g.max_total_tokens > context:
            raise _flag("grpo.max_total_tokens", g.max_total_tokens,
                        f"exceeds the context of model preset {cfg.model.preset!r} ({context} positions)")
    if g.max_new_tokens_per_turn > g.max_total_tokens:
        raise _flag("grpo.max_new_tokens_per_turn", g.max_new_tokens_per_turn,
                    f"exceeds grpo.max_total_tokens={g.max_total_tokens}")


def _check_mesh(cfg: RunConfig) -> None:
    """The mesh must fit the devices of this process (checked here, before any work)."""
    m = cfg.mesh
    import jax

    devices = jax.device_count()
    fixed = m.fsdp * m.tensor * (m.data if m.data > 0 else 1)
    if fixed > devices or devices % (m.fsdp * m.tensor):
        raise _flag("mesh.fsdp" if m.fsdp > 1 else "mesh.tensor" if m.tensor > 1 else "mesh.data",
                    m.fsdp if m.fsdp > 1 else m.tensor if m.tensor > 1 else m.data,
                    f"a mesh of data={m.data} x fsdp={m.fsdp} x tensor={m.tensor} does not fit the "
                    f"{devices} device(s) here")


def _check_calibration(cfg: RunConfig, check_paths: bool) -> None:
    """Builds the CalibrationConfig once (as the run will) and names the flag that breaks it."""
    fields = dict(cfg.calibration.overrides)
    try:
        cfg.calibration.build(num_datasets=1, cost_ref=1.0, route_rule=cfg.reward.route_rule)
    except (TypeError, ValueError) as e:
        named = re.findall(r"CalibrationConfig\.(\w+)", str(e))
        culprits = [n for n in named if n in fields] or [n for n in fields if re.search(rf"\b{n}\b", str(e))]
        if not culprits:
            raise _flag("calibration.preset", cfg.calibration.preset, str(e)) from None
        raise ConfigError(", ".join(f"--config.calibration.{n}={fields[n]!r}" for n in culprits)
                          + f": {e}") from None


_CHECKS: tuple[Callable[[RunConfig, bool], None], ...] = (
    _check_rules, _check_finite, _check_data, _check_shapes, _check_calibration,
)
