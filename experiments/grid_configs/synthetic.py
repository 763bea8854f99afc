"""Grid: all 9 presets x 3 seeds on the synthetic suite (the ablation grid).

    python -m experiments.run_grid --grid=experiments/grid_configs/synthetic.py

`overrides` is the size block (dotted config keys, nested): tune it from the command line,
e.g. --grid.overrides.grpo.steps=100. It is sized for the whole grid on 2 CPU cores: 300 train
and 40 test instances per family (lookup has only 100 distinct questions and commonsense 60, so
the test share per family stays below 60); 500 SFT steps (the tiny policy needs ~400-500 steps
at batch 32 to learn to copy answers out of <information>); 40 GRPO steps of 8 x 8 rollouts.
With share_sft (default True) the SFT warm start runs once per seed (job `_sft-s<seed>`:
SFT + 1 evaluation) and every preset run starts from its export, so a preset run costs its
GRPO steps + 2 evaluations (the shared start's and the final policy's).
"""

import ml_collections

from recal_jax.calibration import PRESET_NAMES as PRESETS


def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/synthetic.py"
    g.suites = ("synthetic",)
    g.presets = PRESETS
    g.seeds = (0, 1, 2)
    g.route_weights = ()  # empty: each preset's own weights
    g.share_sft = True
    g.overrides = ml_collections.ConfigDict(dict(
        synthetic=dict(n_train_per_family=300, n_test_per_family=40),
        sft=dict(steps=500),
        grpo=dict(steps=40, instances_per_step=8, group_size=8),
        eval=dict(every=0),
    ))
    return g
