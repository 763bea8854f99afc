"""Build a run's data and model parts from its typed config: suite, tokenizer, policy, pools,
prompts. (recal_jax.training.components builds the training side.)"""

from __future__ import annotations

import dataclasses
import logging

import jax.numpy as jnp
from flax import nnx

from recal_jax.data.registry import SUITES, SuiteRequest
from recal_jax.data.schema import DataError, RoutingLog, RoutingRecord
from recal_jax.data.suite import Suite
from recal_jax.models import ModelConfig, Qwen2, Tokenizer, from_pretrained, train_bpe
from recal_jax.models.tokenizer import protocol_special_tokens
from recal_jax.routing.pools import Pool
from recal_jax.routing.pools.registry import PoolRequest, resolve_pool_kind
from recal_jax.routing.pools.registry import build_pool as registry_build_pool
from recal_jax.routing.prompts import build_prompt
from recal_jax.routing.question_cut import cut_question
from recal_jax.routing.rewards import default_cost_ref
from recal_jax.training.run_config import (
    ConfigError, ModelSection, PoolSection, RewardSection, RunConfig, TokenizerSection,
)

MIN_BYTE_ALPHABET = 256  # the byte-level BPE's base symbols
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
log = logging.getLogger(__name__)


def load_suite(cfg: RunConfig) -> Suite:
    """The configured suite (its registry entry's loader), under --config.protocol when set,
    capped at max_*_instances. Data problems raise DataError naming the file (and line)."""
    suite = _with_protocol(SUITES[cfg.run.suite].load(suite_request(cfg)), cfg.run.protocol)
    return _capped(suite, cfg.run.max_train_instances, cfg.run.max_test_instances)


def suite_request(cfg: RunConfig) -> SuiteRequest:
    """What the suite's loader (and planner) of the registry get from the config."""
    return SuiteRequest(data_dir=cfg.run.data_dir, seed=cfg.run.seed, protocol=cfg.run.protocol,
                        options=cfg.suite_options)


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


def cost_ref(reward: RewardSection, log_: RoutingLog) -> float:
    """reward.cost_ref when set (> 0), else the train log's default (spec section 3). The
    linear route reward divides by it: a log where every call is free needs one given."""
    if reward.cost_ref:
        return float(reward.cost_ref)
    try:
        return default_cost_ref(log_)
    except ValueError:
        if reward.route_rule != "linear":
            return 1.0  # Router-R1's rule does not read cost_ref
        raise DataError(f"{log_.name}: every call of the log costs 0 (no prices in the pool, no logged costs); "
                        "give prices, or set --config.reward.cost_ref") from None


def _with_protocol(suite: Suite, protocol: str) -> Suite:
    """The suite under `protocol` ("" keeps the log's own). single_call on a log with scores is
    classic one-shot routing (the routed model's reply is final, its logged score the answer).
    multi_turn needs the gold answers of every record."""
    if not protocol:
        return suite
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


def build_tokenizer(tokenizer: TokenizerSection, model: ModelSection, suite: Suite,
                    atomic_words: tuple[str, ...] = ()) -> Tokenizer:
    """tokenizer.path, else the pretrained policy's, else a byte-level BPE trained on the suite
    (with `atomic_words` as single tokens when tokenizer.suite_words, and no token across a
    match of tokenizer.split_pattern)."""
    if tokenizer.path:
        return Tokenizer.load(tokenizer.path)
    if model.pretrained_path:
        return Tokenizer.load(model.pretrained_path)
    specials = protocol_special_tokens(suite.train.model_names)
    if tokenizer.suite_words:
        specials += [w for w in atomic_words if w not in specials]
    minimum = MIN_BYTE_ALPHABET + len(specials)
    if tokenizer.vocab_size < minimum:
        raise ConfigError(f"--config.tokenizer.vocab_size={tokenizer.vocab_size}: must be >= {minimum} (256 byte "
                          f"symbols + {len(specials)} protocol tags, model names and atomic words of this suite)")
    return train_bpe(tokenizer_corpus(suite), vocab_size=tokenizer.vocab_size, special_tokens=specials,
                     split_pattern=tokenizer.split_pattern)


def build_policy(section: ModelSection, tokenizer: Tokenizer, rng_seed: int) -> tuple[nnx.Module, ModelConfig]:
    """A pretrained policy from `model.pretrained_path`, else a random one of `model.preset`."""
    dtype = DTYPES[section.dtype]
    # execution choices (not architecture): apply to a pretrained policy too
    execution = {"remat": section.remat, "attention_impl": section.attention_impl}
    if section.pretrained_path:
        model, model_config = from_pretrained(section.pretrained_path, dtype=dtype, **execution)
        if model_config.vocab_size < tokenizer.vocab_size:
            raise ConfigError(f"--config.model.pretrained_path={section.pretrained_path!r}: the tokenizer has "
                              f"{tokenizer.vocab_size} tokens but the policy only {model_config.vocab_size}")
        return model, model_config
    overrides = {"vocab_size": tokenizer.vocab_size, "dtype": dtype, "param_dtype": dtype, **execution}
    if section.num_layers:
        overrides["num_layers"] = section.num_layers
    if section.hidden_size:
        overrides["hidden_size"] = section.hidden_size
    model_config = ModelConfig.preset(section.preset, **overrides)
    return Qwen2(model_config, rngs=nnx.Rngs(rng_seed)), model_config


def build_pool(pool: PoolSection, cfg: RunConfig, log_: RoutingLog) -> Pool:
    """The split's pool: pool.kind from the pool registry ('auto' resolved as it documents)."""
    kind = resolve_pool_kind(pool.kind, endpoints=pool.endpoints, suite_pool=SUITES[cfg.run.suite].pool, log=log_)
    request = PoolRequest(log=log_, seed=cfg.run.seed, suite_options=cfg.suite_options, endpoints=pool.endpoints,
                          cache_dir=pool.cache_dir, concurrency=pool.concurrency)
    return registry_build_pool(kind, request)


class PromptBuilder:
    """record -> prompt token ids (the chat template applied when the tokenizer has one).

    Questions longer than `max_question_tokens` tokens (> 0) are cut to that many tokens, as
    `cut` says (routing.question_cut.cut_question); `truncated` holds the ids of the records
    whose question was cut. Prompts are cached by (id, question), so two records that share an
    id never share a prompt."""

    def __init__(self, log_: RoutingLog, tokenizer: Tokenizer, *, style: str, max_turns: int,
                 max_question_tokens: int, cut: str = "tail"):
        self.log, self.tokenizer = log_, tokenizer
        self.style, self.max_turns = style, max_turns
        self.max_question_tokens = int(max_question_tokens)
        self.cut = cut
        self.truncated: set[str] = set()
        self._cache: dict[tuple[str, str], list[int]] = {}

    def question(self, record: RoutingRecord) -> str:
        question, was_cut = cut_question(record.question, self.tokenizer, self.max_question_tokens, self.cut)
        if was_cut:
            self.truncated.add(record.id)
        return question

    def __call__(self, record: RoutingRecord) -> list[int]:
        key = (record.id, record.question)
        if key not in self._cache:
            text = build_prompt(self.question(record), self.log.models, self.log.protocol, self.tokenizer,
                                style=self.style, max_turns=self.max_turns)
            self._cache[key] = self.tokenizer.encode(text)
        return self._cache[key]


def prompt_builder(cfg: RunConfig, log_: RoutingLog, tokenizer: Tokenizer) -> PromptBuilder:
    """The prompts of `log_`, every record's built now: questions over tokenizer.max_question_tokens
    are truncated (see PromptBuilder), and how many were is logged as a warning (visible at the
    launcher's default verbosity) and kept in `.truncated` (the run summary's truncated_questions)."""
    builder = PromptBuilder(log_, tokenizer, style=cfg.run.prompt_style, max_turns=cfg.grpo.max_turns,
                            max_question_tokens=cfg.tokenizer.max_question_tokens, cut=cfg.tokenizer.question_cut)
    for record in log_.records:
        builder(record)
    if builder.truncated:
        log.warning("%s: %d of %d questions were longer than tokenizer.max_question_tokens=%d tokens and were "
                    "cut to %d tokens (tokenizer.question_cut=%s)", log_.name, len(builder.truncated),
                    len(log_.records), builder.max_question_tokens, builder.max_question_tokens, builder.cut)
    return builder
