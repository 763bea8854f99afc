"""The kitchen rebuild changed no behaviour: the quickstart at tiny sizes gives, bit for bit, the
final metrics, GRPO rows and parameters recorded on main before it (tests/fixtures/pipeline_pin.json,
written by `python -m tests.fixtures.make_pipeline_pin` on that commit)."""
import json

from tests.fixtures.make_pipeline_pin import PIN, run_pinned


def test_quickstart_is_bit_identical_to_the_pinned_run(tmp_path):
    pinned = json.loads(PIN.read_text())
    now = json.loads(json.dumps(run_pinned(tmp_path)))  # the same JSON round trip as the fixture's
    assert now["params_sha256"] == pinned["params_sha256"]
    assert now["train_rows"] == pinned["train_rows"]
    for key in ("policy", "sft_policy"):  # every pinned number; keys added since are reporting only
        assert {k: now[key][k] for k in pinned[key]} == pinned[key]
