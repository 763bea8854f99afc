"""Grid: all 9 presets x 3 seeds on dcrouter (14 tasks, 9 models, single_call routing).

    python experiments/run_grid.py --grid=experiments/grid_configs/dcrouter.py

`overrides` is the size block; the test split is capped (max_test_instances) to keep the
evaluation short: the cap keeps the loader's first records, the same for every run.
"""

import ml_collections

PRESETS = ("grpo", "dr_grpo", "router_r1", "gdpo", "recal", "recal_no_decomp",
           "recal_no_dataset_norm", "recal_no_reweight", "recal_no_gate")


def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/dcrouter.py"
    g.suites = ("dcrouter",)
    g.presets = PRESETS
    g.seeds = (0, 1, 2)
    g.route_weights = ()
    g.overrides = ml_collections.ConfigDict(dict(
        max_test_instances=0,
        sft=dict(steps=150),
        grpo=dict(steps=80, instances_per_step=16, group_size=8),
        eval=dict(every=0),
    ))
    return g
