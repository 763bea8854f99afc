"""Grid: the route-weight sweep on the compositional world: grpo and recal x route weights 0,
0.25 and 1 x 3 seeds (matched-cost fronts), sharing compose.py's SFT starts; the points at the
presets' own route weight (0.25) are compose.py's plain runs, so the sweep adds 12 runs.

    python -m experiments.run_grid --grid=experiments/grid_configs/compose_cost.py --results_dir=experiments/results_greedy
"""

import pathlib
import runpy

_COMPOSE = runpy.run_path(str(pathlib.Path(__file__).with_name("compose.py")))


def get_config():
    g = _COMPOSE["get_config"]()
    g.presets = ("grpo", "recal")
    g.route_weights = (0.0, 0.25, 1.0)
    return g
