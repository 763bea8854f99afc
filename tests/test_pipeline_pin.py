"""The kitchen rebuild changed no behaviour: the quickstart at tiny sizes gives the final metrics,
GRPO rows and parameters recorded on main before it (tests/fixtures/pipeline_pin.json, written by
`python -m tests.fixtures.make_pipeline_pin` on that commit).

Bit for bit only on a processor like the one that wrote the pin: XLA's CPU code differs with the
processor's vector instructions, and on this project's machine of 2026-12-07 the landed main itself
gave the same evaluations and routing but GRPO rows that differ in the 5th significant digit (and so
another parameter digest). So the evaluations (accuracy, cost, routing shares, format) are compared
exactly, every GRPO row number to a relative 1e-4, and the parameter digest only where it can hold."""
import json
import math

from tests.fixtures.make_pipeline_pin import PIN, run_pinned

REL_TOL = 1e-4  # float rounding across processors is ~1e-5 relative here; a behaviour change is far larger


def _close(now, pinned) -> bool:
    if isinstance(pinned, float):
        return (isinstance(now, (int, float)) and not isinstance(now, bool)
                and math.isclose(now, pinned, rel_tol=REL_TOL, abs_tol=1e-7))
    return now == pinned


def test_quickstart_matches_the_pinned_run(tmp_path):
    pinned = json.loads(PIN.read_text())
    now = json.loads(json.dumps(run_pinned(tmp_path)))  # the same JSON round trip as the fixture's
    for key in ("policy", "sft_policy"):  # every pinned number; keys added since are reporting only
        assert {k: now[key][k] for k in pinned[key]} == pinned[key]
    assert len(now["train_rows"]) == len(pinned["train_rows"])
    for row_now, row_pinned in zip(now["train_rows"], pinned["train_rows"]):
        off = {k: (row_now.get(k), v) for k, v in row_pinned.items() if not _close(row_now.get(k), v)}
        assert not off, f"GRPO step {row_pinned.get('step')}: {off}"
    if now["train_rows"] == pinned["train_rows"]:  # the pin's own processor: the parameters, bit for bit
        assert now["params_sha256"] == pinned["params_sha256"]


def test_the_comparison_catches_a_behaviour_change():
    assert _close(0.50001, 0.5) and not _close(0.501, 0.5) and not _close(None, 0.5) and not _close(1, 2)
    assert not _close(True, 1.0) and _close("train", "train")
