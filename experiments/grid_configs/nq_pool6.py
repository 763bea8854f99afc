"""Grid: grpo, router_r1 and recal x 3 seeds on nq_pool6 (real replies of Router-R1's pool, F1).

    python -m experiments.run_grid --grid=experiments/grid_configs/nq_pool6.py

router_r1 keeps the configured route rule (reward.route_rule) and its preset's
router_r1_alpha, which defaults to 0 (no cost term in Router-R1's scalar reward); set it with
--grid.overrides.calibration.router_r1_alpha=0.5 (that applies to every preset's
calibration, and only router_r1 reads it; None = the preset's value).

Size block: 500 SFT steps, 40 GRPO steps of 8 x 8 rollouts.
With share_sft (default True) the SFT warm start runs once per seed (job `_sft-s<seed>`:
SFT + 1 evaluation) and every preset run starts from its export, so a preset run costs its
GRPO steps + 2 evaluations (the shared start's and the final policy's).
"""

import ml_collections
from ml_collections import config_dict


def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/nq_pool6.py"
    g.suites = ("nq_pool6",)
    g.presets = ("grpo", "router_r1", "recal")
    g.seeds = (0, 1, 2)
    g.route_weights = ()
    g.share_sft = True
    g.overrides = ml_collections.ConfigDict(dict(
        calibration=dict(router_r1_alpha=config_dict.placeholder(float)),
        sft=dict(steps=500),
        grpo=dict(steps=40, instances_per_step=8, group_size=8),
        eval=dict(every=0),
    ))
    return g
