"""Grid: all 9 presets x 3 seeds on the synthetic suite, with the quickstart's protocol
(one-shot routing, launch/configs/synthetic.py).

    python -m experiments.run_grid --grid=experiments/grid_configs/synthetic.py --results_dir=experiments/results_greedy

`overrides` is the size block (dotted config keys, nested): tune it from the command line,
e.g. --grid.overrides.grpo.steps=100. The sizes are the quickstart's (150 SFT steps, 300 GRPO
steps of 8 x 8 rollouts); with share_sft (default True) the SFT warm start runs once per seed
(job `_sft-s<seed>`) and every preset run starts from its export.
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
        sft=dict(steps=150),
        grpo=dict(steps=300, instances_per_step=8, group_size=8),
        eval=dict(every=0),
    ))
    return g
