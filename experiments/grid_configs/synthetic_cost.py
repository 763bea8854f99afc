"""Grid: the cost sweep on the synthetic suite: grpo, gdpo, router_r1 and recal x route weights
0, 0.25, 1 x 3 seeds, with the synthetic grid's sizes (quickstart protocol, 300 GRPO steps,
greedy evaluation).

    python -m experiments.run_grid --grid=experiments/grid_configs/synthetic_cost.py \
        --results_dir=experiments/results_greedy

Route weights, cost weights for router_r1 and run names work as in dcrouter_cost.py: the point
at a preset's own route weight (0.25 for grpo, gdpo and recal, 0 for router_r1) is the synthetic
grid's plain `<preset>-s<seed>` run, so the sweep adds 24 runs. The matched-cost levels are 50%,
70% and 100% of the best single model's cost, above every plain preset's cost except router_r1's:
route weight 0 (the answer alone) gives each front its expensive end, 1 its cheap anchor.
0.5, swept on dcrouter, is left out here to fit the sweep on a 2-core machine.
The SFT jobs `_sft-s<seed>` are the synthetic grid's, reused under the same size block.
"""

import pathlib
import runpy

_SYNTHETIC = runpy.run_path(str(pathlib.Path(__file__).with_name("synthetic.py")))


def get_config():
    g = _SYNTHETIC["get_config"]()
    g.presets = ("grpo", "gdpo", "router_r1", "recal")
    g.route_weights = (0.0, 0.25, 1.0)
    return g
