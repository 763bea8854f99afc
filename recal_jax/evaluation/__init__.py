"""Evaluation and reporting: greedy evaluation of a policy, reference routers from a log,
results tables, plots, run outputs (run directory, metrics) and stability figures."""

from recal_jax.evaluation.evaluate import evaluate_policy, results_table, route_summary
from recal_jax.evaluation.reference_routers import RouterResult, reference_routers
from recal_jax.evaluation.run_dir import RunDir
from recal_jax.evaluation.stability import stability

__all__ = ["RouterResult", "RunDir", "evaluate_policy", "reference_routers", "results_table",
           "route_summary", "stability"]
