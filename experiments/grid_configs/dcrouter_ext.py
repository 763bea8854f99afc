"""Grid: this project's extension presets (beyond the spec's nine) on dcrouter, 3 seeds.

    python -m experiments.run_grid --grid=experiments/grid_configs/dcrouter_ext.py

- `recal_group_gate` (gate_mode='group_best'): the spec gate opens the auxiliary rewards
  (info, route, balance) only for answer >= tau = 1. dcrouter's commongen scores are
  fractional (98% strictly between 0 and 1, none equal to 1), so there the spec gate never
  opens and `recal` gets no cost signal on that task. The group-best gate opens it for a
  group's best answers, clipped to [tau_min, tau] = [0.5, 1]; on the 13 binary tasks it is
  the spec gate.
- `recal_ema` (dataset_stats='ema'): with 16 instances per step over 14 tasks, most datasets
  of a batch have too few rollouts for a per-batch dataset scale; the EMA statistics of spec
  5(b) carry the scale across steps.

Everything else is the dcrouter grid's (sizes, seeds, the shared SFT starts `_sft-s<seed>`,
which are reused); runs land next to its runs as `<preset>-s<seed>`. The dcrouter grid now
runs these two presets itself; this grid runs them alone (the same runs).
"""

import pathlib
import runpy

from recal_jax.calibration import EXTENSION_PRESET_NAMES

_DCROUTER = runpy.run_path(str(pathlib.Path(__file__).with_name("dcrouter.py")))


def get_config():
    g = _DCROUTER["get_config"]()
    g.presets = EXTENSION_PRESET_NAMES
    return g
