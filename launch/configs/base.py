"""Defaults shared by every config; each experiment config starts from `get_config()` here."""

import pathlib

import dataclasses

import ml_collections
from ml_collections import config_dict

from recal_jax.calibration import CalibrationConfig

# Set elsewhere: num_datasets by the suite, route_rule and cost_ref by `reward`.
_NOT_CALIBRATION_FLAGS = ("num_datasets", "route_rule", "cost_ref", "tau")

# ../shared/data beside the checkout: the default place of the real routing logs.
SHARED_DATA = (pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.suite = "synthetic"  # synthetic | dcrouter | nq_pool6 | qa7 | jsonl (your own log: launch/configs/jsonl.py)
    c.data_dir = ""  # for real suites: the directory holding the suite's files
    c.protocol = ""  # "" = the suite's own; single_call | multi_turn overrides it
    c.synthetic = ml_collections.ConfigDict(dict(n_train_per_family=300, n_test_per_family=40))
    c.max_test_instances = 0  # 0 = the whole test split
    c.max_train_instances = 0

    c.model = ml_collections.ConfigDict(
        dict(preset="tiny", pretrained_path="", dtype="float32", num_layers=2, hidden_size=0,
             remat="none", attention_impl="auto")  # remat: none | full | save_dots | save_attn
    )
    # max_question_tokens: longer questions keep their last that many tokens (0 = no cap); the
    # run warns how many were cut and summary.json counts them (truncated_questions)
    c.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=1024, max_question_tokens=256))
    c.prompt_style = "compact"  # compact (tiny policies) | full (instruction-tuned policies)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.sft = ml_collections.ConfigDict(
        dict(steps=800, batch_size=32, learning_rate=5e-3, warmup_steps=20, routing="mixed",
             best_prob=0.5, query_style="fixed", reply_swap=0.5,
             answer_weight=1.0, think="fixed",  # think: fixed | dataset (sft_data.THINK_STYLES)
             # > 0: stop SFT once the held-out answer-copy accuracy reaches this (sft.steps = the cap)
             until_copy_accuracy=0.0, heldout_questions=40, check_every=50, min_steps=0)
    )
    c.grpo = ml_collections.ConfigDict(
        dict(
            steps=100, instances_per_step=8, group_size=8, updates_per_batch=1, microbatches=1,
            learning_rate=3e-4, warmup_steps=5, weight_decay=0.0, grad_clip=1.0,
            clip_low=0.2, clip_high=0.2, dual_clip=0.0, kl_coef=0.001, kl_kind="k3",
            loss_agg="token-mean", temperature=1.0, top_p=1.0, max_turns=2,
            max_new_tokens_per_turn=48, max_total_tokens=160, max_info_tokens=24,
            recompute_old_logprobs=True,
            stop_at_step=0,  # > 0: checkpoint and return after this GRPO step (split a run over jobs)
        )
    )
    c.calibration = calibration_section()
    c.reward = ml_collections.ConfigDict(dict(answer_metric="em", cost_ref=0.0, route_rule="linear"))
    # export_rollouts: the final evaluation's rollouts as a datasets.Dataset in <workdir>/eval_rollouts
    # reference_cache_dir: a directory caching the fitted classical routers ("" = fit them in every
    # run; experiments.run_grid points all runs of a grid at one, since they fit the same routers)
    c.eval = ml_collections.ConfigDict(dict(every=0, greedy=True, batch_size=128, after_sft=True,
                                            export_rollouts=True, reference_cache_dir=""))
    c.pool = ml_collections.ConfigDict(dict(endpoints="", cache_dir="", concurrency=32))
    c.checkpoint = ml_collections.ConfigDict(dict(every=0, keep=2))
    c.log_every = 1
    return c


def calibration_section() -> ml_collections.ConfigDict:
    """`calibration.preset` plus one typed field per CalibrationConfig field (None = the
    preset's value), so that `--config.calibration.tau=0.5` or
    `--config.calibration.weights='(0.5,1,0.25,0.25,0.1)'` override the preset directly."""
    fields = {"preset": "recal", "tau": 1.0}
    for field in dataclasses.fields(CalibrationConfig):
        if field.name not in _NOT_CALIBRATION_FLAGS:
            fields[field.name] = config_dict.placeholder(type(field.default))
    return ml_collections.ConfigDict(fields)
