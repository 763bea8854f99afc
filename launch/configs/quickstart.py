"""Quickstart: a tiny policy learns to route on the embedded synthetic suite, one-shot.

Protocol `single_call` (spec section 2): the policy thinks, names one model in
`<search> MODEL </search>`, and that model's reply is the final answer, scored by the log.
So what the policy learns is routing under an answer/cost trade-off (ReCal's `recal`
preset: gated route and balance rewards), with no answer-copy step to learn first.
Sized for about 10 minutes on 2 CPU cores. The multi-turn Router-R1 protocol has its own
config: launch/configs/synthetic_multi_turn.py.
"""

from launch.configs import base


def get_config():
    c = base.get_config()
    c.suite = "synthetic"
    c.protocol = "single_call"
    c.reward.answer_metric = "score"
    c.calibration.preset = "recal"
    # SFT teaches the protocol and to name the question's task in <think>, and routes each task
    # to a model drawn at random (half the time; else uniformly): the policy learns that the
    # choice depends on the task, not which model is good. That is left to GRPO (300 steps).
    c.sft.steps = 150
    c.sft.routing = "dataset_random"
    c.sft.think = "dataset"
    c.grpo.steps = 300
    c.grpo.max_turns = 1
    c.grpo.max_new_tokens_per_turn = 24
    c.grpo.max_total_tokens = 24
    return c
