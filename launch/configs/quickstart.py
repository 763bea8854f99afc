"""Quickstart: a tiny policy on the embedded synthetic suite; SFT, GRPO with ReCal, evaluation.
Sized for about 10 minutes on 2 CPU cores."""

from launch.configs import base


def get_config():
    c = base.get_config()
    c.suite = "synthetic"
    c.calibration.preset = "recal"
    return c
