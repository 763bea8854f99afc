"""Grid: the cost sweep on dcrouter: grpo, gdpo, router_r1 and recal x route weights
0, 0.25, 0.5, 1 x 3 seeds, with the dcrouter grid's sizes (100 GRPO steps, greedy evaluation).

    python -m experiments.run_grid --grid=experiments/grid_configs/dcrouter_cost.py \
        --results_dir=experiments/results_greedy

A route weight w sets the `route` entry of the 5 component weights (format, answer, info,
route, balance): config.calibration.weights = (0.5, 1, 0.25, w, 0.1). router_r1's scalar
reward (1 - alpha) * answer + alpha * route ignores those weights; its cost weight is
config.calibration.router_r1_alpha, which the sweep sets to alpha = w / (1 + w) (0, 0.2, 1/3,
0.5): the same answer : route ratio 1 : w as the weighted presets (experiments/grid_layout.py,
router_r1_alpha). Runs land next to the dcrouter grid's as `<preset>-rw<w>-s<seed>`, except
the point at a preset's own route weight, which is the dcrouter grid's plain
`<preset>-s<seed>` run: 0.25 for grpo, gdpo and recal, 0 for router_r1 (its preset alpha is 0).
So the sweep adds 36 runs to the dcrouter grid's 12 plain runs of these presets.
The SFT jobs `_sft-s<seed>` are the dcrouter grid's: with the same size block they are
reused, not rerun (run_grid refuses an SFT job whose recorded config differs).
RESULTS.md then gets the matched-cost table and the fronts plot of these four presets and the
classical routers (python -m experiments.report).
"""

import pathlib
import runpy

# The sweep shares dcrouter's SFT warm starts, which are only reused under the same sizes:
# take dcrouter's grid and change only what the sweep varies.
_DCROUTER = runpy.run_path(str(pathlib.Path(__file__).with_name("dcrouter.py")))


def get_config():
    g = _DCROUTER["get_config"]()
    g.presets = ("grpo", "gdpo", "router_r1", "recal")
    g.route_weights = (0.0, 0.25, 0.5, 1.0)
    return g
