"""Build a run's parts from its config: suite, tokenizer, policy, pools, prompts."""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from recal_jax.data import Suite, load_dcrouter, load_jsonl_dir, load_nq_pool6, load_qa7, make_synthetic
from recal_jax.data.schema import PROTOCOLS, DataError, RoutingLog, RoutingRecord
from recal_jax.models import ModelConfig, Qwen2, Tokenizer, from_pretrained, train_bpe
from recal_jax.models.tokenizer import protocol_special_tokens
from recal_jax.routing.pools import Endpoint, OpenAIPool, Pool, ReplayPool, SimulatedPool
from recal_jax.routing.prompts import build_prompt
from recal_jax.training.config_checks import SUITES, ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
log = logging.getLogger(__name__)


def load_suite(config) -> Suite:
    """The configured suite; real suites read `config.data_dir` (a clear error when it is missing).

    Data problems raise DataError naming the file (and line). reward.answer_metric is checked
    against the loaded suite's protocol here (`resolve_answer_metric`, which components call
    to turn "auto" into the metric the scorer uses); the config is not modified."""
    name = config.suite
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; expected one of {SUITES} (--config.suite)")
    protocol = config.get("protocol", "")
    if name == "synthetic":
        syn = config.synthetic
        suite = make_synthetic(seed=config.seed, n_train_per_family=syn.n_train_per_family,
                               n_test_per_family=syn.n_test_per_family)
    else:
        if not config.data_dir:
            raise ConfigError(f"suite {name!r} reads logged data: set --config.data_dir "
                              "(e.g. ../shared/data/llmrouter, or ../shared/data/qa7 for qa7)")
        if name == "dcrouter":
            suite = load_dcrouter(config.data_dir)
        elif name == "nq_pool6":
            suite = load_nq_pool6(config.data_dir, seed=config.seed)
        elif name == "jsonl":
            suite = load_jsonl_dir(config.data_dir, protocol=protocol or None)
        else:
            suite = load_qa7(config.data_dir)
    suite = _capped(_with_protocol(suite, protocol), config.max_train_instances, config.max_test_instances)
    resolve_answer_metric(config.reward.answer_metric, suite.train)  # fails early on a mismatch
    _check_costs(config, suite.train)
    return suite


def resolve_answer_metric(metric: str, log_: RoutingLog) -> str:
    """reward.answer_metric for `log_`: "auto" is the logged score under single_call (or F1 when
    the log has no scores; spec section 2) and EM under multi_turn. An explicit metric must
    suit the protocol ("score" exists under single_call only)."""
    if metric == "auto":
        if log_.protocol == "multi_turn":
            return "em"
        return "score" if any(r.scores for r in log_.records) else "f1"
    if metric == "score" and log_.protocol != "single_call":
        raise ConfigError(f"--config.reward.answer_metric='score' needs the single_call protocol, but {log_.name!r} "
                          f"uses {log_.protocol!r} (use em or f1, or set --config.protocol=single_call)")
    return metric


def _check_costs(config, log_: RoutingLog) -> None:
    """The linear route reward divides by cost_ref: a log where every call is free needs one given."""
    if config.reward.cost_ref or config.reward.route_rule != "linear" or not log_.records:
        return
    if not any(log_.call_cost(r, m) > 0 for r in log_.records for m in log_.models):
        raise DataError(f"{log_.name}: every call of the log costs 0 (no prices in the pool, no logged costs); "
                        "give prices, or set --config.reward.cost_ref")


def _with_protocol(suite: Suite, protocol: str) -> Suite:
    """The suite under `protocol` ("" keeps the log's own). single_call on a log with scores is
    classic one-shot routing (the routed model's reply is final, its logged score the answer).
    multi_turn needs the gold answers of every record."""
    if not protocol:
        return suite
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--config.protocol must be one of {PROTOCOLS} (or empty for the suite's own), "
                          f"got {protocol!r}")
    if protocol == "multi_turn":
        for log_ in (suite.train, suite.test):
            bare = next((r for r in log_.records if not r.golden_answers), None)
            if bare is not None:
                raise DataError(f"{log_.name}: record {bare.id!r} has no golden_answers, which "
                                "--config.protocol=multi_turn needs (score-only logs use single_call)")
    return dataclasses.replace(suite, train=dataclasses.replace(suite.train, protocol=protocol),
                               test=dataclasses.replace(suite.test, protocol=protocol))


def _capped(suite: Suite, max_train: int, max_test: int) -> Suite:
    """Keep the first max_* records of each split (0 = all); record order is the loader's."""
    for flag, value in (("max_train_instances", max_train), ("max_test_instances", max_test)):
        if value < 0:
            raise ConfigError(f"--config.{flag}={value}: must be >= 0 (0 = every record)")
    train, test = suite.train, suite.test
    if max_train:
        train = train.subset(train.records[:max_train])
    if max_test:
        test = test.subset(test.records[:max_test])
    return dataclasses.replace(suite, train=train, test=test)


def tokenizer_corpus(suite: Suite) -> list[str]:
    """Text a tiny tokenizer is trained on: questions, gold answers, logged replies, protocol words."""
    texts = ["<think> pick a model </think> <think> use the reply </think> models: question: "]
    for log_ in (suite.train, suite.test):
        for r in log_.records:
            texts.append(r.question)
            texts.extend(r.golden_answers)
            if r.responses:
                texts.extend(r.responses.values())
    texts.extend(m.description for m in suite.train.models.values())
    return texts


def build_tokenizer(config, suite: Suite) -> Tokenizer:
    if config.tokenizer.path:
        return Tokenizer.load(config.tokenizer.path)
    if config.model.pretrained_path:
        return Tokenizer.load(config.model.pretrained_path)
    specials = protocol_special_tokens(suite.train.model_names)
    return train_bpe(tokenizer_corpus(suite), vocab_size=config.tokenizer.vocab_size, special_tokens=specials)


def build_policy(config, tokenizer: Tokenizer, rng_seed: int) -> tuple[nnx.Module, ModelConfig]:
    """A pretrained policy from `model.pretrained_path`, else a random one of `model.preset`."""
    if config.model.dtype not in DTYPES:
        raise ValueError(f"unknown model dtype {config.model.dtype!r}; expected one of {list(DTYPES)}")
    dtype = DTYPES[config.model.dtype]
    # execution choices (not architecture): apply to a pretrained policy too
    execution = {key: config.model[key] for key in ("remat", "attention_impl") if config.model.get(key) is not None}
    if config.model.pretrained_path:
        model, model_config = from_pretrained(config.model.pretrained_path, dtype=dtype, **execution)
        if model_config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the policy only "
                             f"{model_config.vocab_size}")
        return model, model_config
    overrides = {"vocab_size": tokenizer.vocab_size, "dtype": dtype, "param_dtype": dtype, **execution}
    for key in ("num_layers", "hidden_size"):
        if config.model.get(key):
            overrides[key] = int(config.model[key])
    model_config = ModelConfig.preset(config.model.preset, **overrides)
    return Qwen2(model_config, rngs=nnx.Rngs(rng_seed)), model_config


def read_endpoints(path: str) -> dict[str, Endpoint]:
    """endpoints.json: {model: {base_url, model, price_in, price_out, api_key_env?, description?}}."""
    try:
        raw = json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"pool.endpoints file {path!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"pool.endpoints file {path!r} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"pool.endpoints file {path!r} must be a non-empty JSON object of models")
    endpoints = {}
    for name, spec in raw.items():
        missing = [k for k in ("base_url", "model") if k not in spec]
        if missing:
            raise ValueError(f"pool.endpoints {path!r}: model {name!r} lacks {missing}")
        endpoints[name] = Endpoint(
            base_url=spec["base_url"], model_id=spec["model"], price_in=float(spec.get("price_in", 0.0)),
            price_out=float(spec.get("price_out", 0.0)), api_key_env=spec.get("api_key_env"),
            description=spec.get("description", ""))
    return endpoints


def price_ranked_skill(log_: RoutingLog, low: float = 0.3, high: float = 0.8) -> dict[tuple[str, str], float]:
    """Simulated skill for reply-less logs: from `low` for the cheapest model to `high` for the
    dearest, the same on every dataset (a dry-run stand-in for live endpoints)."""
    names = sorted(log_.model_names, key=lambda m: log_.models[m].price_in + log_.models[m].price_out)
    step = (high - low) / max(len(names) - 1, 1)
    return {(m, d): low + i * step for i, m in enumerate(names) for d in log_.datasets}


def build_pool(config, log_: RoutingLog) -> Pool:
    """Live endpoints when `pool.endpoints` names a file; else a replay pool over a log with
    scores, or a simulated pool (price-ranked skill) for a reply-less log such as qa7."""
    if config.pool.endpoints:
        endpoints = read_endpoints(config.pool.endpoints)
        unknown = sorted(set(log_.model_names) - set(endpoints))
        if unknown:
            raise ValueError(f"pool.endpoints lacks the suite's model(s) {unknown}")
        return OpenAIPool({m: endpoints[m] for m in log_.model_names},
                          cache_path=config.pool.cache_dir or None, max_concurrency=config.pool.concurrency)
    if any(r.scores for r in log_.records):
        return ReplayPool(log_)
    return SimulatedPool(log_.models, price_ranked_skill(log_), seed=config.seed)


# A token covers at most this many characters in practice: a question is cut to its last
# max_question_tokens * this many characters before it is tokenised (a 5 MB question is
# not tokenised whole); the cut part lies far before the tokens that are kept.
_CHARS_PER_TOKEN_BOUND = 64


class PromptBuilder:
    """record -> prompt token ids (the chat template applied when the tokenizer has one).

    Questions longer than `max_question_tokens` tokens (> 0) keep their last that many
    tokens (long questions, as dcrouter's, keep their end, where the ask is); `truncated`
    holds the ids of the records whose question was cut. Prompts are cached by (id,
    question), so two records that share an id never share a prompt."""

    def __init__(self, config, log_: RoutingLog, tokenizer: Tokenizer):
        self.log, self.tokenizer = log_, tokenizer
        self.style, self.max_turns = config.prompt_style, config.grpo.max_turns
        self.max_question_tokens = int(config.tokenizer.max_question_tokens)
        self.truncated: set[str] = set()
        self._cache: dict[tuple[str, str], list[int]] = {}

    def question(self, record: RoutingRecord) -> str:
        cap, question = self.max_question_tokens, record.question
        if cap <= 0:
            return question
        if len(question) > cap * _CHARS_PER_TOKEN_BOUND:
            question = question[-cap * _CHARS_PER_TOKEN_BOUND:]
        ids = self.tokenizer.encode(question)
        if len(ids) > cap:
            self.truncated.add(record.id)
            return self.tokenizer.decode(ids[-cap:])
        if question is not record.question:  # cut by characters (the rest fits in `cap` tokens)
            self.truncated.add(record.id)
        return question

    def __call__(self, record: RoutingRecord) -> list[int]:
        key = (record.id, record.question)
        if key not in self._cache:
            text = build_prompt(self.question(record), self.log.models, self.log.protocol, self.tokenizer,
                                style=self.style, max_turns=self.max_turns)
            self._cache[key] = self.tokenizer.encode(text)
        return self._cache[key]


def prompt_builder(config, log_: RoutingLog, tokenizer: Tokenizer) -> PromptBuilder:
    """The prompts of `log_`, every record's built now: questions over tokenizer.max_question_tokens
    are truncated (see PromptBuilder), and how many were is logged as a warning (visible at the
    launcher's default verbosity) and kept in `.truncated` (the run summary's truncated_questions)."""
    builder = PromptBuilder(config, log_, tokenizer)
    for record in log_.records:
        builder(record)
    if builder.truncated:
        log.warning("%s: %d of %d questions were longer than tokenizer.max_question_tokens=%d tokens and were "
                    "truncated to their last %d tokens", log_.name, len(builder.truncated), len(log_.records),
                    builder.max_question_tokens, builder.max_question_tokens)
    return builder
