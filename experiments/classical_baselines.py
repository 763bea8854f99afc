"""The trained classical routers (kNN, linear, softmax) of a routing suite, without any policy:
test accuracy and cost per query along their lambda sweeps, next to the best single model.

    python -m experiments.classical_baselines --suite=dcrouter --data_dir=../shared/data --seeds=0,1,2

Each seed draws its own held-out slice of train (which picks k and the L2 strength); the
numbers are those that every run of that seed stores in summary.json (`references`).
"""

from __future__ import annotations

from recal_jax.data.registry import SUITES, SuiteRequest
from recal_jax.evaluation.classical_routers import CLASSICAL_NAMES
from recal_jax.evaluation.reference_routers import reference_routers


def load(suite: str, data_dir: str, seed: int):
    """The suite of the registry (its default options), as a run of that seed loads it."""
    spec = SUITES[suite]
    options = spec.options() if spec.options is not None else None
    return spec.load(SuiteRequest(data_dir=data_dir if spec.needs_data_dir else "", seed=seed, options=options))


def baseline_lines(suite: str, data_dir: str, seeds: list[int]) -> list[str]:
    """One block per seed: the best single model, then each classical router's lambda sweep."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {sorted(SUITES)}")
    lines = []
    for seed in seeds:
        data = load(suite, data_dir, seed)
        refs = reference_routers(data.test, data.train, seed=seed)
        best = refs["best_single"]
        lines.append(f"seed {seed}: {best.name}: accuracy {best.accuracy:.3f}, "
                     f"cost/query {best.cost_per_query:.3g} USD")
        for key in CLASSICAL_NAMES:
            r = refs[key]
            sweep = ", ".join(f"{lam:g}: {acc:.3f} @ {cost:.3g}" for lam, cost, acc in r.lambda_sweep)
            lines.append(f"  {r.name}: accuracy {r.accuracy:.3f}, cost/query {r.cost_per_query:.3g} USD")
            lines.append(f"    lambda: accuracy @ cost  {sweep}")
    return lines


def main(argv):
    del argv
    seeds = [int(s) for s in _SEEDS.value]
    print("\n".join(baseline_lines(_SUITE.value, _DATA_DIR.value, seeds)))


if __name__ == "__main__":
    from absl import app, flags

    _SUITE = flags.DEFINE_string("suite", "dcrouter", f"One of {sorted(SUITES)}.")
    _DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "Directory holding llmrouter/.")
    _SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (each draws its own held-out slice of train).")
    app.run(main)
