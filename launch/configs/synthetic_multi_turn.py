"""The embedded synthetic suite under the Router-R1 multi-turn protocol: the policy routes
with `<search> MODEL : QUERY </search>`, reads the reply in `<information>`, and writes
`<answer>` itself (exact match against the gold answer). A tiny policy must learn to copy
the answer out of the reply before routing pays off, and when it does depends on the seed;
so SFT runs until the answer-copy accuracy on held-out demonstrations (40 questions never
trained on) reaches 0.9, checked every 50 steps, at most `sft.steps` (1500).
"""

from launch.configs import base


def get_config():
    c = base.get_config()
    c.suite = "synthetic"
    c.protocol = "multi_turn"
    c.reward.answer_metric = "em"
    c.calibration.preset = "recal"
    c.sft.steps = 1500
    c.sft.until_copy_accuracy = 0.9
    c.sft.min_steps = 200
    return c
