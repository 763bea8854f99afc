"""Grid: grpo, router_r1 and recal x 3 seeds on the synthetic suite under the Router-R1
multi-turn protocol (launch/configs/synthetic_multi_turn.py: SFT until the held-out
answer-copy accuracy reaches 0.9, at most 1500 steps; 100 GRPO steps).

    python -m experiments.run_grid --grid=experiments/grid_configs/synthetic_multi_turn.py --results_dir=experiments/results_greedy

The runs share names with the one-shot synthetic grid, so `tag` puts them in
`synthetic-multi_turn/`.
"""

import ml_collections


def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/synthetic_multi_turn.py"
    g.suites = ("synthetic",)
    g.presets = ("grpo", "router_r1", "recal")
    g.seeds = (0, 1, 2)
    g.route_weights = ()
    g.share_sft = True
    g.tag = "multi_turn"
    g.overrides = ml_collections.ConfigDict(dict(eval=dict(every=0)))
    return g
