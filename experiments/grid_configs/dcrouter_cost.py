"""Grid: the cost sweep on dcrouter: grpo, gdpo and recal x route weights x 3 seeds.

    python experiments/run_grid.py --grid=experiments/grid_configs/dcrouter_cost.py

Each route weight w sets the `route` entry of the 5 component weights (format, answer, info,
route, balance) through config.calibration.overrides (`weights=[0.5,1.0,0.25,w,0.1]`); runs
land next to the dcrouter grid's as `<preset>-rw<w>-s<seed>`. Size block as in dcrouter.py.
"""

import ml_collections


def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/dcrouter.py"
    g.suites = ("dcrouter",)
    g.presets = ("grpo", "gdpo", "recal")
    g.seeds = (0, 1, 2)
    g.route_weights = (0.0, 0.25, 0.5, 1.0)
    g.overrides = ml_collections.ConfigDict(dict(
        max_test_instances=0,
        sft=dict(steps=150),
        grpo=dict(steps=80, instances_per_step=16, group_size=8),
        eval=dict(every=0),
    ))
    return g
