"""Checks of a run's config before any work starts (`validate_config`).

Each problem is a ConfigError (a ValueError) whose message starts with the flag that sets
the value, `--config.grpo.group_size=1: ...`, so that the launcher prints one clear line.
Data problems (bad logs) are DataError, raised when the suite is loaded.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

from recal_jax.data.schema import PROTOCOLS

SUITES = ("synthetic", "dcrouter", "nq_pool6", "qa7", "jsonl")
# The protocol of each suite's log when config.protocol is empty (jsonl: the log's own).
SUITE_PROTOCOLS = {"synthetic": "multi_turn", "dcrouter": "single_call", "nq_pool6": "multi_turn",
                   "qa7": "multi_turn", "jsonl": None}
ANSWER_METRICS = ("auto", "em", "f1", "score")
ROUTE_RULES = ("linear", "router_r1")
DTYPE_NAMES = ("float32", "bfloat16")
_MISSING = object()


class ConfigError(ValueError):
    """A config value that cannot work; the message names the flag (`--config.a.b=value: ...`)."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= lo


def _real(lo: float, hi: float = math.inf, *, open_low: bool = False) -> Callable[[Any], bool]:
    return lambda v: _is_real(v) and (v > lo if open_low else v >= lo) and v <= hi


def _one_of(choices) -> Callable[[Any], bool]:
    return lambda v: v in choices


# long: a declarative table, one line per flag; splitting it would only scatter the rules
def _rules() -> list[tuple[str, Callable[[Any], bool], str]]:
    """(flag, predicate, requirement) for every value that can be checked alone."""
    from recal_jax.calibration import ALL_PRESET_NAMES
    from recal_jax.losses import AGG_MODES, KL_KINDS
    from recal_jax.routing.prompts import STYLES
    from recal_jax.models.config import REMAT_POLICIES
    from recal_jax.training.sft_data import QUERY_STYLES, ROUTING_RULES, THINK_STYLES

    n0, n1, pos = _int_at_least(0), _int_at_least(1), _real(0.0, open_low=True)
    return [
        ("suite", _one_of(SUITES), f"unknown suite; expected one of {SUITES}"),
        ("protocol", _one_of(("",) + PROTOCOLS),
         f"unknown protocol; expected one of {PROTOCOLS} or '' (the log's own)"),
        ("calibration.preset", _one_of(ALL_PRESET_NAMES), f"unknown preset; expected one of {ALL_PRESET_NAMES}"),
        ("reward.answer_metric", _one_of(ANSWER_METRICS), f"unknown answer metric; expected one of {ANSWER_METRICS}"),
        ("reward.route_rule", _one_of(ROUTE_RULES), f"unknown route rule; expected one of {ROUTE_RULES}"),
        ("reward.cost_ref", _real(0.0), "must be a finite number >= 0 (0 = the log's default)"),
        ("model.dtype", _one_of(DTYPE_NAMES), f"expected one of {DTYPE_NAMES}"),
        ("prompt_style", _one_of(STYLES), f"expected one of {STYLES}"),
        ("max_train_instances", n0, "must be >= 0 (0 = every record)"),
        ("max_test_instances", n0, "must be >= 0 (0 = every record)"),
        ("tokenizer.max_question_tokens", n0, "must be >= 0 (0 = no cap)"),
        ("tokenizer.vocab_size", n1, "must be >= 1"),
        ("sft.steps", n0, "must be >= 0 (0 = no SFT warm start)"),
        ("sft.batch_size", n1, "must be >= 1"),
        ("sft.learning_rate", pos, "must be a finite number > 0"),
        ("sft.warmup_steps", n0, "must be >= 0"),
        ("sft.best_prob", _real(0.0, 1.0), "must lie in [0, 1]"),
        ("sft.reply_swap", _real(0.0, 1.0), "must lie in [0, 1]"),
        ("sft.routing", _one_of(ROUTING_RULES), f"expected one of {ROUTING_RULES}"),
        ("sft.query_style", _one_of(QUERY_STYLES), f"expected one of {QUERY_STYLES}"),
        ("sft.think", _one_of(THINK_STYLES), f"expected one of {THINK_STYLES}"),
        ("sft.until_copy_accuracy", _real(0.0, 1.0), "must lie in [0, 1] (0 = a fixed number of SFT steps)"),
        ("sft.heldout_questions", n1, "must be >= 1"),
        ("sft.check_every", n1, "must be >= 1"),
        ("sft.min_steps", n0, "must be >= 0"),
        ("model.remat", lambda v: v in REMAT_POLICIES or isinstance(v, bool), f"expected one of {sorted(REMAT_POLICIES)}"),
        ("model.attention_impl", _one_of(("auto", "xla", "cudnn")), "expected one of ('auto', 'xla', 'cudnn')"),
        ("grpo.steps", n0, "must be >= 0 (0 = no GRPO)"),
        ("grpo.instances_per_step", n1, "must be >= 1 (questions per GRPO step)"),
        ("grpo.group_size", _int_at_least(2), "GRPO needs two or more rollouts per group (group_size >= 2); "
                                              "with one, every advantage is 0 and nothing is trained"),
        ("grpo.updates_per_batch", n1, "must be >= 1"),
        ("grpo.microbatches", n1, "must be >= 1"),
        ("grpo.learning_rate", pos, "must be a finite number > 0"),
        ("grpo.warmup_steps", n0, "must be >= 0"),
        ("grpo.temperature", pos, "must be a finite number > 0 (greedy evaluation is eval.greedy)"),
        ("grpo.top_p", _real(0.0, 1.0, open_low=True), "must lie in (0, 1]"),
        ("grpo.kl_coef", _real(0.0), "must be a finite number >= 0"),
        ("grpo.kl_kind", _one_of(KL_KINDS), f"expected one of {KL_KINDS}"),
        ("grpo.loss_agg", _one_of(AGG_MODES), f"expected one of {AGG_MODES}"),
        ("grpo.clip_low", _real(0.0), "must be a finite number >= 0"),
        ("grpo.clip_high", _real(0.0), "must be a finite number >= 0"),
        ("grpo.dual_clip", lambda v: _is_real(v) and (v == 0 or v > 1), "must be 0 (off) or > 1"),
        ("grpo.max_turns", n1, "must be >= 1"),
        ("grpo.max_new_tokens_per_turn", n1, "must be >= 1"),
        ("grpo.max_total_tokens", n1, "must be >= 1"),
        ("grpo.max_info_tokens", n0, "must be >= 0"),
        ("grpo.stop_at_step", n0, "must be >= 0 (0 = run every step)"),
        ("eval.batch_size", n1, "must be >= 1"),
        ("eval.every", n0, "must be >= 0 (0 = no evaluation during GRPO)"),
        ("checkpoint.every", n0, "must be >= 0 (0 = only at the end)"),
        ("checkpoint.keep", n1, "must be >= 1"),
        ("log_every", n1, "must be >= 1"),
    ]


def _get(config, flag: str):
    node = config
    for part in flag.split("."):
        if part not in node:
            return _MISSING
        node = node[part]
    return node


def _fail(flag: str, value, requirement: str) -> ConfigError:
    return ConfigError(f"--config.{flag}={value!r}: {requirement}")


def _check_data(config) -> None:
    """data_dir for logged suites; an answer metric that suits the suite's protocol."""
    suite = config.suite
    if suite != "synthetic":
        data_dir = _get(config, "data_dir")
        if not data_dir:
            raise _fail("data_dir", data_dir, f"suite {suite!r} reads logged data: set --config.data_dir")
        if not Path(data_dir).is_dir():
            raise _fail("data_dir", data_dir, "no such directory")
    protocol = _get(config, "protocol") or SUITE_PROTOCOLS[suite]
    metric = config.reward.answer_metric
    until = _get(config, "sft.until_copy_accuracy")
    if until is not _MISSING and until and protocol in PROTOCOLS and protocol != "multi_turn":
        raise _fail("sft.until_copy_accuracy", until,
                    f"the held-out criterion measures the answer copy, which only multi_turn has "
                    f"(this run is {protocol}); use 0 and a fixed sft.steps")
    if metric == "score" and protocol == "multi_turn":
        raise _fail("reward.answer_metric", metric, f"'score' needs the single_call protocol; suite {suite!r} runs "
                                                    "multi_turn here (use em or f1, or --config.protocol=single_call)")


def _check_shapes(config) -> None:
    g = config.grpo
    rows = g.instances_per_step * g.group_size
    if rows % g.microbatches:
        raise _fail("grpo.microbatches", g.microbatches, f"must divide the {rows} rollouts of a step "
                                                         "(grpo.instances_per_step x grpo.group_size)")
    if not config.model.pretrained_path:
        from recal_jax.models.config import PRESETS

        if config.model.preset not in PRESETS:
            raise _fail("model.preset", config.model.preset, f"unknown model preset; expected one of {sorted(PRESETS)}")


def _calibration_fields(config) -> dict:
    fields = {k: v for k, v in config.calibration.items() if k != "preset" and v is not None}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def _check_calibration(config) -> None:
    """Builds the CalibrationConfig once (as the run will) and names the flag that breaks it."""
    from recal_jax.calibration import CalibrationConfig

    fields = _calibration_fields(config)
    try:
        CalibrationConfig.preset(config.calibration.preset, num_datasets=1, cost_ref=1.0,
                                 route_rule=config.reward.route_rule, **fields)
    except (TypeError, ValueError) as e:
        named = re.findall(r"CalibrationConfig\.(\w+)", str(e))
        culprits = [n for n in named if n in fields] or [n for n in fields if re.search(rf"\b{n}\b", str(e))]
        flags = ", ".join(f"--config.calibration.{n}={fields[n]!r}" for n in culprits)
        raise ConfigError(f"{flags or f'--config.calibration.preset={config.calibration.preset!r}'}: {e}") from None


def validate_config(config) -> None:
    """Raises ConfigError naming the flag of the first value that cannot work (see _rules),
    then checks the data directory, the shapes and the calibration section."""
    for flag, ok, requirement in _rules():
        value = _get(config, flag)
        if value is not _MISSING and not ok(value):
            raise _fail(flag, value, requirement)
    _check_data(config)
    _check_shapes(config)
    _check_calibration(config)
