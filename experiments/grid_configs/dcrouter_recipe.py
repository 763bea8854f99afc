"""Grid: dcrouter under its score-log recipe (launch/configs/dcrouter.py, base.score_log_recipe:
task-random SFT routing with the task named in <think>, 2,000 GRPO steps, KL 0.1, route weight
0.1), grpo, gdpo, router_r1 and recal x 3 seeds, greedy evaluation of the whole test split.

    python -m experiments.run_grid --grid=experiments/grid_configs/dcrouter_recipe.py \
        --results_dir=experiments/results_greedy --only=recal-
    python -m experiments.run_grid --grid=experiments/grid_configs/dcrouter_recipe.py \
        --results_dir=experiments/results_greedy --only=grpo-

The route-weight sweep is 0.05, the recipe's 0.1 and 0.2 (route_weights), so every preset gets
its own component weights with `route` = w (at 0.1, for recal and grpo exactly the recipe's
(0.5, 1, 0.25, 0.1, 0.1)) and router_r1 its alpha = w / (1 + w) (grid_layout.router_r1_alpha),
and the report labels each run by the weight it trained with. A run costs about 9-10 minutes on
2 CPU cores (2,000 GRPO steps of 8 x 8 rollouts), so the 36 runs are about 6 hours; `--only`
runs a part (`--only=recal-rw0.2-`). `tag = "recipe"` keeps the runs and their SFT starts in
`<results_dir>/dcrouter-recipe/`, apart from the 100-step grid of the earlier recipe
(dcrouter.py, dcrouter_cost.py), which RESULTS.md keeps as its own section.
"""

import ml_collections


def get_config():
    g = ml_collections.ConfigDict()
    g.base_config = "launch/configs/dcrouter.py"
    g.suites = ("dcrouter",)
    g.presets = ("grpo", "gdpo", "router_r1", "recal")
    g.seeds = (0, 1, 2)
    g.route_weights = (0.05, 0.1, 0.2)
    g.share_sft = True
    g.tag = "recipe"
    g.overrides = ml_collections.ConfigDict(dict(
        max_test_instances=0,
        eval=dict(every=0, greedy=True),
    ))
    return g
