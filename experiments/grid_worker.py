"""One grid run in its own process: `python -m experiments.grid_worker --run_config=F --workdir=D`.

F is the resolved run config as JSON (run_grid.py writes it). Exit code 0 when the run
returned (with or without a summary: grpo.stop_at_step ends a run early on purpose). A shared
SFT job is the same call with grpo.steps=0; its product is the policy exported to D/export/.

The worker holds D's RunLock for its whole life: a second worker on D (a restarted grid
while an earlier grid's worker still runs) prints one `error:` line and exits with status 2
without touching D, as does a config the launcher's parser refuses or bad input data.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

USAGE_ERROR = 2


def _fail(message: str) -> None:
    print(f"error: {' '.join(str(message).split())}", flush=True)
    sys.exit(USAGE_ERROR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run_config", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()

    from recal_jax.evaluation.run_dir import RunDirLocked, RunLock

    try:
        lock = RunLock(args.workdir).acquire()
    except RunDirLocked as e:
        _fail(f"{e}; this worker exits without running")
    except OSError as e:  # a workdir that is a file, or read-only
        _fail(f"--workdir={args.workdir}: cannot lock it ({e.strerror or e})")

    import ml_collections

    from recal_jax.data.schema import DataError
    from recal_jax.training.pipeline import train_and_evaluate
    from recal_jax.training.run_config import ConfigError, parse_config

    try:
        cfg = parse_config(ml_collections.ConfigDict(json.loads(pathlib.Path(args.run_config).read_text())))
        result = train_and_evaluate(cfg, args.workdir, progress=False)
    except (ConfigError, DataError) as e:
        _fail(str(e))
    finally:
        lock.release()
    if result.finished:
        print(f"test accuracy {result.policy['accuracy']:.4f}, "
              f"{result.timings.get('total_seconds', 0.0):.0f} s", flush=True)
    else:
        print(f"stopped at GRPO step {result.stopped_at_step}", flush=True)
    if result.finished and cfg.grpo.steps == 0:
        print(f"exported to {pathlib.Path(args.workdir) / 'export'}", flush=True)


if __name__ == "__main__":
    main()
