"""Grid: the spec's 9 presets and the 2 extension presets x 3 seeds on dcrouter (14 tasks,
9 models, single_call routing), 100 GRPO steps, greedy evaluation.

    python -m experiments.run_grid --grid=experiments/grid_configs/dcrouter.py \
        --results_dir=experiments/results_greedy

`overrides` is the size block: 300 SFT steps, 100 GRPO steps of 16 x 8 rollouts, the whole
test split (max_test_instances=0; a cap > 0 keeps the loader's first records, the same for
every run). Evaluation is greedy (the base config's eval.greedy=True; spec section 10).
With share_sft (default True) the SFT warm start runs once per seed (job `_sft-s<seed>`:
SFT + 1 evaluation) and every preset run starts from its export, so a preset run costs its
GRPO steps + 2 evaluations (the shared start's and the final policy's).

Give this rerun a results directory of its own (as above): run_grid skips every run whose
summary.json exists, so in a directory that holds the earlier 40-step runs (same run names)
those would be kept, not rerun. The cost sweep (dcrouter_cost.py) and the extension grid
(dcrouter_ext.py) derive from this grid, so they share its sizes, its SFT starts and its plain
runs.
"""

import ml_collections

from recal_jax.calibration import EXTENSION_PRESET_NAMES, PRESET_NAMES


def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/dcrouter.py"
    g.suites = ("dcrouter",)
    g.presets = PRESET_NAMES + EXTENSION_PRESET_NAMES
    g.seeds = (0, 1, 2)
    g.route_weights = ()
    g.share_sft = True
    # The recipe these runs were made with (2026-12-03..06), pinned here since launch/configs/dcrouter.py
    # moved on to base.score_log_recipe: SFT towards each task's best model half the time, no task
    # named in <think>, KL 0.001, each preset's own component weights. The new recipe's grid
    # (2,000 GRPO steps a run) is not rerun yet.
    g.overrides = ml_collections.ConfigDict(dict(
        max_test_instances=0,
        sft=dict(steps=300, routing="mixed", think="fixed"),
        grpo=dict(steps=100, instances_per_step=16, group_size=8, kl_coef=0.001),
        calibration=dict(weights=None),
        eval=dict(every=0, greedy=True),
    ))
    return g
