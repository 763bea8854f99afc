"""Experiment tooling: the run grid (run_grid, grid_worker, grid_layout, grid_configs/), the
report (report, report_diagnostics, report_plots, grid_stats, matched_cost, tables) and benchmarks.
Run the scripts as modules from the repository root, e.g. `python -m experiments.run_grid ...`
and `python -m experiments.report ...`."""
