"""Grid: the cost sweep on dcrouter: grpo, gdpo and recal x route weights x 3 seeds.

    python experiments/run_grid.py --grid=experiments/grid_configs/dcrouter_cost.py

Each route weight w sets the `route` entry of the 5 component weights (format, answer, info,
route, balance) through config.calibration.overrides (`weights=[0.5,1.0,0.25,w,0.1]`); runs
land next to the dcrouter grid's as `<preset>-rw<w>-s<seed>`, except the point at a preset's
own route weight (0.25 for all three), which is the dcrouter grid's plain `<preset>-s<seed>`
run. Size block as in dcrouter.py (300 SFT steps, 40 GRPO steps of 16 x 8 rollouts, the whole
test split).
With share_sft (default True) the SFT warm start runs once per seed (job `_sft-s<seed>`:
SFT + 1 evaluation) and every preset run starts from its export, so a preset run costs its
GRPO steps + 2 evaluations (the shared start's and the final policy's).
The SFT jobs `_sft-s<seed>` are the dcrouter grid's: with the same size block they are
reused, not rerun (run_grid refuses an SFT job whose recorded config differs).
"""

import pathlib
import runpy

# The sweep shares dcrouter's SFT warm starts, which are only reused under the same sizes:
# take dcrouter's grid and change only what the sweep varies.
_DCROUTER = runpy.run_path(str(pathlib.Path(__file__).with_name("dcrouter.py")))


def get_config():
    g = _DCROUTER["get_config"]()
    g.presets = ("grpo", "gdpo", "recal")
    g.route_weights = (0.0, 0.25, 0.5, 1.0)
    return g
