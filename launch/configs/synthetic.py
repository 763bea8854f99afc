"""The synthetic suite at experiment size (the ablation grid's setting)."""

from launch.configs import base


def get_config():
    c = base.get_config()
    c.suite = "synthetic"
    c.grpo.steps = 150
    c.eval.every = 50
    return c
