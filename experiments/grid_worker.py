"""One grid run in its own process: `python -m experiments.grid_worker --run_config=F --workdir=D`.

F is the resolved run config as JSON (run_grid.py writes it). Exit code 0 when the run
returned (with or without a summary: grpo.stop_at_step ends a run early on purpose). A shared
SFT job is the same call with grpo.steps=0; its product is the policy exported to D/export/."""

from __future__ import annotations

import argparse
import json
import pathlib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run_config", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()

    import ml_collections

    from recal_jax.training.pipeline import train_and_evaluate

    config = ml_collections.ConfigDict(json.loads(pathlib.Path(args.run_config).read_text()))
    summary = train_and_evaluate(config, args.workdir, progress=False)
    if "policy" in summary:
        print(f"test accuracy {summary['policy']['accuracy']:.4f}, "
              f"{summary['timings'].get('total_seconds', 0.0):.0f} s", flush=True)
    else:
        print(f"stopped at GRPO step {summary.get('stopped_at_step')}", flush=True)
    if "policy" in summary and int(config.grpo.steps) == 0:
        print(f"exported to {pathlib.Path(args.workdir) / 'export'}", flush=True)


if __name__ == "__main__":
    main()
