"""Grid: the compositional multi-turn world (launch/configs/compose.py): grpo, gdpo, router_r1,
recal and recal's four ablations x 3 seeds, sharing one SFT warm start per seed.

    python -m experiments.run_grid --grid=experiments/grid_configs/compose.py --results_dir=experiments/results_greedy
    python -m experiments.report --results_dir=experiments/results_greedy
"""

import ml_collections


def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/compose.py"
    g.suites = ("compose",)
    g.presets = ("grpo", "gdpo", "router_r1", "recal", "recal_no_decomp", "recal_no_dataset_norm",
                 "recal_no_reweight", "recal_no_gate")
    g.seeds = (0, 1, 2)
    g.route_weights = ()
    g.share_sft = True
    g.tag = ""
    g.overrides = ml_collections.ConfigDict(dict(eval=dict(every=0)))
    return g
