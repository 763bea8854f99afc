"""Train and evaluate a router: `python -m launch.main [--config=launch/configs/X.py] [--config.a.b=v]`.

With no flags it runs the quickstart on the embedded synthetic suite (no data, no network).
A config that cannot work, a bad flag, or bad input data is reported as one line on stderr,
`error: ...` naming the flag or the file and line, with exit status 2.
"""

import os
import pathlib
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

USAGE_ERROR = 2  # exit status of a config or data error


def fail(message) -> None:
    """One line on stderr, exit status 2 (an embedded traceback is cut to its last line)."""
    text = str(message)
    if "Traceback (most recent call last):" in text:
        head, _, trace = text.partition("Traceback (most recent call last):")
        text = head + trace.strip().splitlines()[-1]
    print(f"error: {' '.join(text.split())}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def _define_config_flag():
    """--config; ml_collections loads the default config and applies its --config.* overrides
    while the flag is defined, so a flag naming an unknown field fails here: one line."""
    default = str(pathlib.Path(__file__).parent / "configs" / "quickstart.py")
    try:
        return config_flags.DEFINE_config_file("config", default, "Experiment config file.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        key = str(e).strip("\"'")
        culprit = next((a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.") and key in a), "--config.*")
        fail(f"{culprit}: the config has no such field ({key}); see launch/configs/base.py for the fields")


_CONFIG = _define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", "", "Run directory (default: runs/<suite>-<preset>-<time>).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete an earlier run's outputs in --workdir and start afresh.")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "Hide the progress bars.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", str(pathlib.Path.home() / ".cache" / "recal_jax" / "jax_compilation_cache"),
    "JAX's persistent compilation cache directory ('' turns it off): a second run of the same "
    "shapes skips XLA compiles.")

def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag (an unknown config key, a missing or broken config
    file, a value of the wrong type) reported as one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(e)
    except Exception as e:  # a config file that does not import or a get_config() that raises
        fail(f"--config: {type(e).__name__}: {e}")


def enable_compile_cache(path: str) -> None:
    """JAX's persistent compilation cache in `path` (every compile cached, however short)."""
    if not path:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def print_result(result) -> None:
    from recal_jax.evaluation.evaluate import results_table, route_summary
    from recal_jax.training.timings import format_breakdown

    print(f"\nRun directory: {result.workdir}")
    if not result.finished:
        print(f"Stopped after GRPO step {result.stopped_at_step} (grpo.stop_at_step); "
              "run the same command again to resume.")
        return
    if result.sft_policy is not None:
        print("\nTest split, after the SFT warm start (before GRPO):\n"
              + results_table(result.sft_policy, result.references, result.datasets, "policy after SFT"))
    print(f"\nTest split, after {result.grpo_steps} GRPO steps ({result.preset}):\n"
          + results_table(result.policy, result.references, result.datasets, f"policy ({result.preset})"))
    print("\nRouting of the trained policy per dataset:\n" + route_summary(result.policy))
    turns = result.summary.get("multi_turn")
    if turns:
        print("\nMulti-turn behaviour of the trained policy (test split):")
        for group, g in turns.items():
            if g["accuracy"] is None:
                continue
            refs = ", ".join(f"{name} {acc:.3f}" for name, acc in g["references"].items()
                             if acc is not None and name in ("cheapest_correct", "linear", "best_single",
                                                             "decomposer_best_per_hop", "decomposer_random_per_hop"))
            print(f"  {group.replace('_', '-')} questions: accuracy {g['accuracy']:.3f}, {g['calls_per_question']:.2f} "
                  f"calls per question, {g['multi_call_share']:.0%} in two or more calls ({refs})")
    print("\n" + format_breakdown(result.timings))


def main(argv):
    del argv
    from recal_jax.data.schema import DataError
    from recal_jax.evaluation.run_dir import RunDirLocked
    from recal_jax.training.run_config import ConfigError, parse_config

    try:
        config = _CONFIG.value
        config.to_dict()  # a config file that could not be loaded raises here (ml_collections defers it)
    except Exception as e:  # noqa: BLE001 - any failure of the user's config file is one line
        fail(f"--config: {' '.join(str(e).split())}")
    try:
        from recal_jax.training.distributed import maybe_initialize_distributed

        maybe_initialize_distributed()
        cfg = parse_config(config)
        enable_compile_cache(_COMPILE_CACHE.value)
        from recal_jax.training.pipeline import train_and_evaluate

        workdir = _WORKDIR.value or os.path.join(
            "runs", f"{cfg.run.suite}-{cfg.calibration.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        result = train_and_evaluate(cfg, workdir, progress=not _NO_PROGRESS.value, overwrite=_OVERWRITE.value)
    except (ConfigError, DataError, RunDirLocked) as e:
        fail(e)
    except MemoryError:
        fail("out of memory: lower grpo.instances_per_step x grpo.group_size, eval.batch_size or the model size")
    print_result(result)


if __name__ == "__main__":
    logging.set_verbosity(logging.WARNING)
    app.run(main, flags_parser=parse_flags)
