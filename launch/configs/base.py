"""Defaults shared by every config; each experiment config starts from `get_config()` here.

The defaults and their meaning live in the typed sections of recal_jax.training.run_config
(one place): this file turns them into the ml_collections ConfigDict that flags override.
"""

import pathlib

import ml_collections
from ml_collections import config_dict

from recal_jax.calibration import CalibrationConfig
from recal_jax.training.run_config import CALIBRATION_FIELDS, default_dict

# ../shared/data beside the checkout: the default place of the real routing logs.
SHARED_DATA = (pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def get_config() -> ml_collections.ConfigDict:
    values = default_dict()
    values["calibration"] = calibration_section(values["calibration"])
    return ml_collections.ConfigDict(values)


def calibration_section(values: dict) -> ml_collections.ConfigDict:
    """`calibration.preset` plus one typed field per CalibrationConfig field (None = the
    preset's value), so that `--config.calibration.tau=0.5` or
    `--config.calibration.weights='(0.5,1,0.25,0.25,0.1)'` override the preset directly."""
    defaults = {f.name: f.default for f in CalibrationConfig.__dataclass_fields__.values()}
    fields = {"preset": values["preset"]}
    for name in CALIBRATION_FIELDS:
        fields[name] = values[name] if name in values else config_dict.placeholder(type(defaults[name]))
    return ml_collections.ConfigDict(fields)


def score_log_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The routing recipe of the logged-data configs (dcrouter.py, and jsonl.py for a user's own
    log), set on `c`:
    - SFT (200 steps) teaches the protocol, names the record's task in the first <think> and routes
      each task to a model drawn at random (sft.routing=dataset_random): the warm start's choice
      depends on the task it names and says nothing about which model is good;
    - 2,000 GRPO steps with a KL coefficient of 0.1 towards that start (the default 0.001 let every
      dcrouter probe collapse onto one model for every task: the one best or cheapest on average)
      and route weight 0.1 (recal's 0.25 sends every dcrouter task to a cheap model);
    - the tiny policy reads the last 48 tokens of a longer question (128 did no better on dcrouter's
      seed 0, 0.529 against 0.565, and costs half as much time again; the first 24 and the last 24,
      tokenizer.question_cut="head_tail", 0.523).
    README, "Running on real routing data", has what it was chosen from and what it reaches."""
    c.tokenizer.max_question_tokens = 48
    c.sft.steps = 200
    c.sft.routing = "dataset_random"
    c.sft.think = "dataset"
    c.grpo.steps = 2000
    c.grpo.kl_coef = 0.1
    c.calibration.weights = (0.5, 1.0, 0.25, 0.1, 0.1)  # (format, answer, info, route, balance)
    return c
