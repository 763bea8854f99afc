"""Grid: all 9 presets x 3 seeds on the synthetic suite (the ablation grid).

    python experiments/run_grid.py --grid=experiments/grid_configs/synthetic.py

`overrides` is the size block (dotted config keys, nested): tune it from the command line,
e.g. --grid.overrides.grpo.steps=100. It is sized for the whole grid on 2 CPU cores.
"""

import ml_collections

PRESETS = ("grpo", "dr_grpo", "router_r1", "gdpo", "recal", "recal_no_decomp",
           "recal_no_dataset_norm", "recal_no_reweight", "recal_no_gate")


def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/synthetic.py"
    g.suites = ("synthetic",)
    g.presets = PRESETS
    g.seeds = (0, 1, 2)
    g.route_weights = ()  # empty: each preset's own weights
    g.overrides = ml_collections.ConfigDict(dict(
        synthetic=dict(n_train_per_family=200, n_test_per_family=50),
        sft=dict(steps=200),
        grpo=dict(steps=60, instances_per_step=16, group_size=8),
        eval=dict(every=0),
    ))
    return g
