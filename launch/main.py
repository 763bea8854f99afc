"""Train and evaluate a router: `python -m launch.main [--config=launch/configs/X.py] [--config.a.b=v]`.

With no flags it runs the quickstart on the embedded synthetic suite (no data, no network).
A config that cannot work (launch's config checks) or bad input data is reported as one
line on stderr, `error: ...` naming the flag or the file and line, with exit status 2.
"""

import os
import pathlib
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = str(pathlib.Path(__file__).parent / "configs" / "quickstart.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Run directory (default: runs/<config>-<preset>-<time>).")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "Hide the progress bars.")

USAGE_ERROR = 2  # exit status of a config or data error


def _print_summary(summary: dict, workdir: str) -> None:
    print(f"\nRun directory: {workdir}")
    if "stopped_at_step" in summary:
        print(f"Stopped after GRPO step {summary['stopped_at_step']} (grpo.stop_at_step); "
              "run the same command again to resume.")
        return
    t = summary["timings"]
    if "table_sft" in summary:
        print("\nTest split, after the SFT warm start (before GRPO):\n" + summary["table_sft"])
    print(f"\nTest split, after {summary['grpo_steps']} GRPO steps ({summary['preset']}):\n" + summary["table"])
    print("\nRouting of the trained policy per dataset:\n" + summary["routes"])
    print(f"\nWall time: {t['total_seconds']:.0f} s "
          f"(SFT {t.get('sft_seconds', 0):.0f} s, final evaluation {t['eval_seconds']:.0f} s)")


def main(argv):
    del argv
    from recal_jax.data.schema import DataError
    from recal_jax.training.config_checks import ConfigError, validate_config

    config = _CONFIG.value
    try:
        validate_config(config)
        from recal_jax.training.distributed import maybe_initialize_distributed
        from recal_jax.training.pipeline import train_and_evaluate

        maybe_initialize_distributed()
        workdir = _WORKDIR.value or os.path.join(
            "runs", f"{config.suite}-{config.calibration.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        summary = train_and_evaluate(config, workdir, progress=not _NO_PROGRESS.value)
    except (ConfigError, DataError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    _print_summary(summary, workdir)


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main)
