"""A registered suite written as an own-log directory (train.jsonl, test.jsonl, pool.json), so that
the own-log default (`launch/configs/jsonl.py`) can be tried on it exactly as a user would:

    python -m experiments.export_jsonl --suite=dcrouter --data_dir=../shared/data --out=/tmp/dcrouter_jsonl
    python -m launch.main --config=launch/configs/jsonl.py --config.data_dir=/tmp/dcrouter_jsonl

The files are written where --out says (never into this repository: they are the log's data).
--seed picks the split of suites that draw one (dcrouter's split is its own files'); --protocol
sets the protocol the header declares (default: the suite's own; the quickstart reads the
synthetic suite as single_call, `--suite=synthetic --protocol=single_call` writes it so).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from experiments.classical_baselines import load
from recal_jax.data.jsonl import write_log_jsonl, write_pool_json


def export_suite(suite: str, data_dir: str, out: str | Path, seed: int = 0, protocol: str = "") -> Path:
    """Writes `suite` (as a run of `seed` loads it) to out/{train,test}.jsonl and out/pool.json,
    the headers declaring `protocol` ("" = the suite's own)."""
    data = load(suite, data_dir, seed)
    if protocol:
        data = dataclasses.replace(data, train=dataclasses.replace(data.train, protocol=protocol),
                                   test=dataclasses.replace(data.test, protocol=protocol))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_log_jsonl(data.train, out / "train.jsonl")
    write_log_jsonl(data.test, out / "test.jsonl")
    write_pool_json(data.train.models, out / "pool.json")
    return out


def main(argv):
    del argv
    out = export_suite(_SUITE.value, _DATA_DIR.value, _OUT.value, _SEED.value, _PROTOCOL.value)
    print(f"wrote {out}/train.jsonl, test.jsonl, pool.json")


if __name__ == "__main__":
    from absl import app, flags

    from recal_jax.data.registry import SUITES

    _SUITE = flags.DEFINE_string("suite", "dcrouter", f"One of {sorted(SUITES)}.")
    _DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data", "The suite's data (for suites that read logs).")
    _OUT = flags.DEFINE_string("out", None, "The directory to write.", required=True)
    _SEED = flags.DEFINE_integer("seed", 0, "The seed of the split (suites that draw one).")
    _PROTOCOL = flags.DEFINE_enum("protocol", "", ["", "single_call", "multi_turn"],
                                  "The protocol the headers declare ('' = the suite's own).")
    app.run(main)
