"""The synthetic suite at experiment size (the ablation grid's base): the quickstart's
one-shot routing (single_call, SFT with task thoughts and task-random routing, GRPO),
with an evaluation every 100 GRPO steps."""

from launch.configs import quickstart


def get_config():
    c = quickstart.get_config()
    c.eval.every = 100
    return c
