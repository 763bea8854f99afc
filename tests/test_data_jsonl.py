"""JSONL routing logs and pool descriptions: round trip and line-numbered errors."""

import json

import pytest

from recal_jax.data import ModelInfo, RoutingLog, RoutingRecord, read_log_jsonl, read_pool_json, write_log_jsonl, write_pool_json

MODELS = {"a": ModelInfo("a", 0.1, 0.2, "cheap"), "b": ModelInfo("b", 1.0, 2.0, "big, ünïcode")}
RECS = (
    RoutingRecord("1", "x", "q one?", ("A",), {"a": 1.0, "b": 0.0}, responses={"a": "A", "b": "B"}, costs={"a": 0.1, "b": 1.0}),
    RoutingRecord("2", "y", "q two?", ("B", "bee"), {"a": 0.5}),
)
LOG = RoutingLog(RECS, MODELS, ("x", "y"), protocol="single_call", name="toy")


def test_round_trip(tmp_path):
    path = tmp_path / "log.jsonl"
    write_log_jsonl(LOG, path)
    back = read_log_jsonl(path)
    assert back == LOG
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and "routing_log" in json.loads(lines[0])


def test_pool_round_trip(tmp_path):
    write_pool_json(MODELS, tmp_path / "pool.json")
    assert read_pool_json(tmp_path / "pool.json") == MODELS


def test_headerless_needs_models(tmp_path):
    path = tmp_path / "recs.jsonl"
    path.write_text("\n".join(json.dumps(r.to_json()) for r in RECS) + "\n\n")
    with pytest.raises(ValueError, match="no routing_log header"):
        read_log_jsonl(path)
    log = read_log_jsonl(path, models=MODELS)
    assert log.records == RECS and log.datasets == ("x", "y")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": "3", "dataset": "x"}', "missing field"),
        ('{"id": "3", "dataset": "x", "question": "q", "golden_answers": ["a"], "scores": {"a": "high"}}', "must be a number"),
        ('{"id": "3", "dataset": "zzz", "question": "q", "golden_answers": ["a"], "scores": {}}', "zzz"),
    ],
)
def test_malformed_line_is_named(tmp_path, bad, message):
    path = tmp_path / "log.jsonl"
    write_log_jsonl(LOG, path)
    with open(path, "a") as f:
        f.write(bad + "\n")
    with pytest.raises(ValueError, match=message) as err:
        read_log_jsonl(path)
    assert str(path) in str(err.value)
    assert f"{path}:4:" in str(err.value)


def test_missing_file_and_bad_pool(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_log_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "pool.json").write_text('{"a": {"price_in": -1}}')
    with pytest.raises(ValueError, match="price_in"):
        read_pool_json(tmp_path / "pool.json")
    (tmp_path / "pool.json").write_text('{"a": {"cost": 1}}')
    with pytest.raises(ValueError, match="unknown field"):
        read_pool_json(tmp_path / "pool.json")


def _write(path, lines: list[str | bytes]) -> None:
    with open(path, "wb") as f:
        for line in lines:
            f.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")


def _rec(rid="1", dataset="x", golds=("A",), scores=None, **extra) -> str:
    obj = {"id": rid, "dataset": dataset, "question": "what?", "golden_answers": golds if isinstance(golds, str) else list(golds),
           "scores": {"a": 1.0, "b": 0.0} if scores is None else scores, **extra}
    return json.dumps(obj)


@pytest.mark.parametrize(
    "score, message",
    [("1.5", "in \\[0, 1\\], got 1.5"), ("-0.25", "in \\[0, 1\\]"), ('"0.5"', "must be a number, got str"),
     ("true", "must be a number, got bool"), ("null", "must be a number, got NoneType"), ("NaN", "in \\[0, 1\\]")],
)
def test_scores_must_be_numbers_in_unit_interval(tmp_path, score, message):
    path = tmp_path / "log.jsonl"
    _write(path, [_rec("1"), _rec("2").replace('"b": 0.0', f'"b": {score}')])
    with pytest.raises(ValueError, match=message) as err:
        read_log_jsonl(path, models=MODELS)
    assert str(err.value).startswith(f"{path}:2: scores['b']")


def test_duplicate_ids_name_both_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    _write(path, [_rec("1"), _rec("2"), "", _rec("1", golds=("other",))])
    with pytest.raises(ValueError, match="duplicate id '1'") as err:
        read_log_jsonl(path, models=MODELS)
    assert str(err.value).startswith(f"{path}:4:") and f"first at {path}:1" in str(err.value)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "log.jsonl"
    _write(path, [_rec("1"), _rec("2").encode().replace(b"what?", b"wh\xff\xfeat?")])
    with pytest.raises(ValueError, match="invalid UTF-8") as err:
        read_log_jsonl(path, models=MODELS)
    assert str(err.value).startswith(f"{path}:2:")
    _write(path, [b"\xef\xbb\xbf" + _rec("1").encode()])  # a UTF-8 byte-order mark is fine
    assert read_log_jsonl(path, models=MODELS).records[0].id == "1"


@pytest.mark.parametrize(
    "line, message",
    [(_rec(golds=("A", 3)), "golden_answers' must be a list of strings"),
     (_rec(golds="A"), "golden_answers' must be a list of strings"),
     (_rec(costs={"a": "cheap"}), "costs\\['a'\\] must be a number"),
     (_rec(costs={"a": -1}), "costs\\['a'\\] must be finite and >= 0"),
     (_rec(responses={"a": 7}), "'responses' must be an object"),
     (_rec(scores={"a": 1.0, "zz": 0.0}), "not in the pool"),
     (_rec(rid=True), "'id' must be"),
     (_rec().replace('"what?"', '""'), "'question' must be a non-empty string"),
     (_rec().replace('"question": "what?", ', ""), "missing field\\(s\\) \\['question'\\]")],
)
def test_mistyped_fields_name_the_line(tmp_path, line, message):
    path = tmp_path / "log.jsonl"
    _write(path, [_rec("0"), line])
    with pytest.raises(ValueError, match=message) as err:
        read_log_jsonl(path, models=MODELS)
    assert str(err.value).startswith(f"{path}:2:")


def test_gold_answers_are_needed_under_multi_turn_only(tmp_path):
    path = tmp_path / "log.jsonl"
    _write(path, [_rec("1"), _rec("2", golds=())])
    log = read_log_jsonl(path, models=MODELS)  # headerless, a score-only record: single_call
    assert log.protocol == "single_call" and log.records[1].golden_answers == ()
    with pytest.raises(ValueError, match="no golden_answers, which the multi_turn protocol needs") as err:
        read_log_jsonl(path, models=MODELS, protocol="multi_turn")
    assert str(err.value).startswith(f"{path}:2:")
    _write(path, [_rec("1"), _rec("2")])
    assert read_log_jsonl(path, models=MODELS).protocol == "multi_turn"


def test_every_model_scored_when_required(tmp_path):
    path = tmp_path / "log.jsonl"
    _write(path, [_rec("1"), _rec("2", scores={"a": 0.5})])
    assert len(read_log_jsonl(path, models=MODELS)) == 2
    with pytest.raises(ValueError, match="scores lack model\\(s\\) \\['b'\\]") as err:
        read_log_jsonl(path, models=MODELS, require_all_scores=True)
    assert str(err.value).startswith(f"{path}:2:")


def test_errors_are_data_errors(tmp_path):
    from recal_jax.data import DataError

    path = tmp_path / "log.jsonl"
    _write(path, ["{oops"])
    with pytest.raises(DataError):
        read_log_jsonl(path, models=MODELS)


def test_dataset_round_trip_and_parquet(tmp_path):
    from recal_jax.data import log_to_dataset, read_log_dataset

    ds = log_to_dataset(LOG)
    assert ds.num_rows == 2 and ds[0]["id"] == "1"
    back = read_log_dataset(ds, MODELS, protocol="single_call", datasets=("x", "y"), name="toy")
    assert back == LOG  # record 2 lacks model b: arrow's null for it is dropped again
    ds.to_parquet(str(tmp_path / "log.parquet"))
    from_file = read_log_dataset(tmp_path / "log.parquet", MODELS, protocol="single_call")
    assert from_file.records == LOG.records and from_file.datasets == ("x", "y")
    bad = log_to_dataset(LOG.subset([RECS[0], RECS[0]]))
    with pytest.raises(ValueError, match="toy: row 1: duplicate id '1'"):
        read_log_dataset(bad, MODELS, name="toy")


def test_dataset_columns_do_not_depend_on_the_first_record():
    from recal_jax.data import log_to_dataset, read_log_dataset

    flipped = LOG.subset(RECS[::-1])  # the first record has no responses and no costs
    back = read_log_dataset(log_to_dataset(flipped), MODELS, protocol="single_call", datasets=("x", "y"), name="toy")
    assert back.records == flipped.records
