"""Grid: longer training on dcrouter: grpo, router_r1 and recal, 100 GRPO steps, 3 seeds.

    python -m experiments.run_grid --grid=experiments/grid_configs/dcrouter_long.py

The dcrouter grid trained 40 steps when this grid was made (it now trains 100 itself). This
grid asked whether the 40-step ranking (router_r1 > recal > grpo) holds with 2.5x the steps;
everything else is the dcrouter grid's (300 SFT steps, 16 x 8 rollouts per step, the whole
test split). `tag = "long"` puts the runs and their own SFT starts in
`<results_dir>/dcrouter-long/`, a section of its own in RESULTS.md.
"""

import pathlib
import runpy

_DCROUTER = runpy.run_path(str(pathlib.Path(__file__).with_name("dcrouter.py")))


def get_config():
    g = _DCROUTER["get_config"]()
    g.presets = ("grpo", "router_r1", "recal")
    g.tag = "long"
    g.overrides.grpo.steps = 100
    return g
