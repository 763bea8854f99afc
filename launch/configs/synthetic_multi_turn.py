"""The embedded synthetic suite under the Router-R1 multi-turn protocol: the policy routes
with `<search> MODEL : QUERY </search>`, reads the reply in `<information>`, and writes
`<answer>` itself (exact match against the gold answer). A tiny policy must learn to copy
the answer out of the reply before routing pays off.
"""

from launch.configs import base


def get_config():
    c = base.get_config()
    c.suite = "synthetic"
    c.protocol = "multi_turn"
    c.reward.answer_metric = "em"
    c.calibration.preset = "recal"
    return c
