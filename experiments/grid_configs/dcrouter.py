"""Grid: all 9 presets x 3 seeds on dcrouter (14 tasks, 9 models, single_call routing).

    python experiments/run_grid.py --grid=experiments/grid_configs/dcrouter.py

`overrides` is the size block: 300 SFT steps, 40 GRPO steps of 16 x 8 rollouts, the whole
test split (max_test_instances=0; a cap > 0 keeps the loader's first records, the same for
every run).
With share_sft (default True) the SFT warm start runs once per seed (job `_sft-s<seed>`:
SFT + 1 evaluation) and every preset run starts from its export, so a preset run costs its
GRPO steps + 2 evaluations (the shared start's and the final policy's).
"""

import ml_collections

from recal_jax.calibration import PRESET_NAMES as PRESETS


def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/dcrouter.py"
    g.suites = ("dcrouter",)
    g.presets = PRESETS
    g.seeds = (0, 1, 2)
    g.route_weights = ()
    g.share_sft = True
    g.overrides = ml_collections.ConfigDict(dict(
        max_test_instances=0,
        sft=dict(steps=300),
        grpo=dict(steps=40, instances_per_step=16, group_size=8),
        eval=dict(every=0),
    ))
    return g
