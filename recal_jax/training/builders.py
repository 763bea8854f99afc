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

from recal_jax.data import Suite, load_dcrouter, load_nq_pool6, load_qa7, make_synthetic
from recal_jax.data.schema import PROTOCOLS, RoutingLog, RoutingRecord
from recal_jax.models import ModelConfig, Qwen2, Tokenizer, from_pretrained, train_bpe
from recal_jax.models.tokenizer import protocol_special_tokens
from recal_jax.routing.pools import Endpoint, OpenAIPool, Pool, ReplayPool, SimulatedPool
from recal_jax.routing.prompts import build_prompt

SUITES = ("synthetic", "dcrouter", "nq_pool6", "qa7")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
log = logging.getLogger(__name__)


def load_suite(config) -> Suite:
    """The configured suite; real suites read `config.data_dir` (a clear error when it is missing)."""
    name = config.suite
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; expected one of {SUITES}")
    if name == "synthetic":
        syn = config.synthetic
        suite = make_synthetic(seed=config.seed, n_train_per_family=syn.n_train_per_family,
                               n_test_per_family=syn.n_test_per_family)
    else:
        if not config.data_dir:
            raise ValueError(f"suite {name!r} reads logged data: set --config.data_dir "
                             "(e.g. ../shared/data/llmrouter, or ../shared/data/qa7 for qa7)")
        if name == "dcrouter":
            suite = load_dcrouter(config.data_dir)
        elif name == "nq_pool6":
            suite = load_nq_pool6(config.data_dir, seed=config.seed)
        else:
            suite = load_qa7(config.data_dir)
    suite = _with_protocol(suite, config.get("protocol", ""))
    return _capped(suite, config.max_train_instances, config.max_test_instances)


def _with_protocol(suite: Suite, protocol: str) -> Suite:
    """The suite under `protocol` ("" keeps the log's own). single_call on a log with scores is
    classic one-shot routing (the routed model's reply is final, its logged score the answer)."""
    if not protocol:
        return suite
    if protocol not in PROTOCOLS:
        raise ValueError(f"config.protocol must be one of {PROTOCOLS} (or empty for the suite's own), got {protocol!r}")
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
    if config.model.pretrained_path:
        model, model_config = from_pretrained(config.model.pretrained_path, dtype=dtype)
        if model_config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the policy only "
                             f"{model_config.vocab_size}")
        return model, model_config
    overrides = {"vocab_size": tokenizer.vocab_size, "dtype": dtype, "param_dtype": dtype}
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


def prompt_builder(config, log_: RoutingLog, tokenizer: Tokenizer) -> Callable[[RoutingRecord], list[int]]:
    """record -> prompt token ids (the chat template applied when the tokenizer has one)."""
    style = config.prompt_style
    max_q = int(config.tokenizer.max_question_tokens)
    cache: dict[str, list[int]] = {}

    def prompt_ids(record: RoutingRecord) -> list[int]:
        if record.id in cache:
            return cache[record.id]
        question = record.question
        if max_q:
            ids = tokenizer.encode(question)
            if len(ids) > max_q:  # long questions (dcrouter) keep their end, where the ask is
                question = tokenizer.decode(ids[-max_q:])
        text = build_prompt(question, log_.models, log_.protocol, tokenizer, style=style,
                            max_turns=config.grpo.max_turns)
        cache[record.id] = tokenizer.encode(text)
        return cache[record.id]

    return prompt_ids
