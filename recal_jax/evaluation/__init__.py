"""Evaluation and reporting: greedy evaluation of a policy, reference routers from a log (and the
trained classical routers: kNN, linear, softmax), results tables, plots, run outputs (run
directory, metrics) and stability figures."""

# The classical routers' function is recal_jax.evaluation.classical_routers.classical_routers (not
# re-exported here: the name would shadow its module).
from recal_jax.evaluation.classical_routers import CLASSICAL_NAMES, ClassicalConfig
from recal_jax.evaluation.evaluate import evaluate_policy, results_table, route_summary
from recal_jax.evaluation.reference_routers import reference_routers
from recal_jax.evaluation.router_result import RouterResult
from recal_jax.evaluation.run_dir import RunDir
from recal_jax.evaluation.stability import stability

__all__ = ["CLASSICAL_NAMES", "ClassicalConfig", "RouterResult", "RunDir", "evaluate_policy", "reference_routers",
           "results_table", "route_summary", "stability"]
