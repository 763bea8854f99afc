"""Grid: the group-best gate (extension preset `recal_group_gate`) on dcrouter, 3 seeds.

    python experiments/run_grid.py --grid=experiments/grid_configs/dcrouter_gate.py

The spec gate opens the auxiliary rewards (info, route, balance) only for answer >= tau = 1.
dcrouter's commongen scores are fractional (98% strictly between 0 and 1, none equal to 1),
so there the spec gate never opens and `recal` gets no cost signal on that task.
`recal_group_gate` (gate_mode='group_best') opens it for a group's best answers, clipped to
[tau_min, tau] = [0.5, 1]; on the 13 binary tasks it is the spec gate. Everything else is
the dcrouter grid's (sizes, seeds, the shared SFT starts `_sft-s<seed>`, which are reused);
runs land next to its runs as `recal_group_gate-s<seed>`.
"""

import pathlib
import runpy

_DCROUTER = runpy.run_path(str(pathlib.Path(__file__).with_name("dcrouter.py")))


def get_config():
    g = _DCROUTER["get_config"]()
    g.presets = ("recal_group_gate",)
    return g
