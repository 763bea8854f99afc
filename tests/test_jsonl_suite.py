"""A user's own routing log (suite "jsonl", launch/configs/jsonl.py): loading, protocol and
metric defaults, reference routers, question truncation, and a whole tiny run whose
evaluation rollouts are exported as a datasets.Dataset."""

import json
import logging

import pytest

from launch.configs import jsonl as jsonl_config
from recal_jax.data import DataError, load_jsonl_dir
from recal_jax.evaluation.reference_routers import reference_routers
from recal_jax.training import builders
from recal_jax.training.run_config import ConfigError, parse_config

POOL = {
    "small": {"price_in": 0.1, "price_out": 0.2, "description": "7B instruct model, cheap and fast"},
    "mid": {"price_in": 0.5, "price_out": 0.5, "description": "27B model, good recall"},
    "large": {"price_in": 2.0, "price_out": 2.0, "description": "70B model, strong reasoning"},
}
# The README's example log (score-only: no gold answers, so protocol single_call).
TRAIN = """\
{"id": "m1", "dataset": "math", "question": "What is 17 * 3?", "golden_answers": [], "scores": {"small": 0, "mid": 1, "large": 1}}
{"id": "m2", "dataset": "math", "question": "Solve for x: 2x + 6 = 14.", "golden_answers": [], "scores": {"small": 1, "mid": 1, "large": 1}}
{"id": "m3", "dataset": "math", "question": "What is the derivative of x^3?", "golden_answers": [], "scores": {"small": 0, "mid": 0, "large": 1}}
{"id": "m4", "dataset": "math", "question": "How many primes are below 20?", "golden_answers": [], "scores": {"small": 0, "mid": 1, "large": 1}, "costs": {"small": 0.00001, "mid": 0.00006, "large": 0.0004}}
{"id": "m5", "dataset": "math", "question": "What is 2 to the power 10?", "golden_answers": [], "scores": {"small": 1, "mid": 1, "large": 1}}
{"id": "t1", "dataset": "trivia", "question": "Who wrote Hamlet?", "golden_answers": [], "scores": {"small": 1, "mid": 1, "large": 1}}
{"id": "t2", "dataset": "trivia", "question": "What is the capital of Australia?", "golden_answers": [], "scores": {"small": 0, "mid": 1, "large": 1}}
{"id": "t3", "dataset": "trivia", "question": "Which element has the symbol W?", "golden_answers": [], "scores": {"small": 0, "mid": 0, "large": 1}}
{"id": "t4", "dataset": "trivia", "question": "In which year did the Berlin Wall fall?", "golden_answers": [], "scores": {"small": 1, "mid": 0.5, "large": 1}}
{"id": "t5", "dataset": "trivia", "question": "Who painted The Night Watch?", "golden_answers": [], "scores": {"small": 0, "mid": 1, "large": 0}}
"""
TEST = """\
{"id": "m6", "dataset": "math", "question": "What is 9 squared?", "golden_answers": [], "scores": {"small": 1, "mid": 1, "large": 1}}
{"id": "m7", "dataset": "math", "question": "What is the integral of 2x?", "golden_answers": [], "scores": {"small": 0, "mid": 1, "large": 1}, "costs": {"small": 0.00001, "mid": 0.00006, "large": 0.0004}}
{"id": "t6", "dataset": "trivia", "question": "Who discovered penicillin?", "golden_answers": [], "scores": {"small": 0, "mid": 0, "large": 1}}
{"id": "t7", "dataset": "trivia", "question": "What is the largest ocean?", "golden_answers": [], "scores": {"small": 1, "mid": 1, "large": 0}}
"""


def write_log_dir(root, train=TRAIN, test=TEST, pool=POOL):
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.jsonl").write_text(train, encoding="utf-8")
    (root / "test.jsonl").write_text(test, encoding="utf-8")
    if pool is not None:
        (root / "pool.json").write_text(json.dumps(pool), encoding="utf-8")
    return root


def with_golds(text: str) -> str:
    return text.replace('"golden_answers": []', '"golden_answers": ["x"]')


def config_for(root, **overrides):
    c = jsonl_config.get_config()
    c.data_dir = str(root)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


def test_score_only_log_is_single_call_scored_by_the_log(tmp_path):
    c = config_for(write_log_dir(tmp_path))
    suite = builders.load_suite(parse_config(c))
    assert suite.train.protocol == suite.test.protocol == "single_call"
    assert builders.resolve_answer_metric(c.reward.answer_metric, suite.train) == "score"
    assert suite.train.datasets == suite.test.datasets == ("math", "trivia")
    assert suite.train.model_names == ("small", "mid", "large") and len(suite.train) == 10
    assert suite.train.models["large"].price_in == 2.0
    m4 = next(r for r in suite.train.records if r.id == "m4")
    assert suite.train.call_cost(m4, "mid") == 0.00006  # the logged cost of the call, not prices


def test_reference_routers_by_hand(tmp_path):
    test = builders.load_suite(parse_config(config_for(write_log_dir(tmp_path)))).test
    refs = reference_routers(test)
    # test scores (small, mid, large): m6 (1,1,1), m7 (0,1,1), t6 (0,0,1), t7 (1,1,0)
    assert refs["single:small"].accuracy == 0.5
    assert refs["single:mid"].accuracy == refs["single:large"].accuracy == 0.75
    assert refs["random"].accuracy == pytest.approx(8 / 12)
    assert refs["oracle"].accuracy == 1.0 and refs["cheapest_correct"].accuracy == 1.0
    # cheapest correct: m6 small, m7 mid (logged 6e-5 < 4e-4), t6 large, t7 small
    assert refs["cheapest_correct"].route_share == {"small": 0.5, "mid": 0.25, "large": 0.25}
    assert refs["cheapest_correct"].per_dataset == {"math": 1.0, "trivia": 1.0}


def test_gold_answers_mean_multi_turn_and_em(tmp_path):
    c = config_for(write_log_dir(tmp_path, train=with_golds(TRAIN), test=with_golds(TEST)))
    suite = builders.load_suite(parse_config(c))
    assert suite.train.protocol == "multi_turn"
    assert builders.resolve_answer_metric(c.reward.answer_metric, suite.train) == "em"
    c = config_for(tmp_path, protocol="single_call")
    suite = builders.load_suite(parse_config(c))
    assert suite.test.protocol == "single_call"
    assert builders.resolve_answer_metric(c.reward.answer_metric, suite.test) == "score"


def test_header_protocol_and_pool(tmp_path):
    header = json.dumps({"routing_log": {"protocol": "single_call", "models": POOL}})
    root = write_log_dir(tmp_path, train=header + "\n" + with_golds(TRAIN), test=with_golds(TEST), pool=None)
    suite = load_jsonl_dir(root)  # the header's protocol and models, no pool.json
    assert suite.test.protocol == "single_call" and suite.test.model_names == ("small", "mid", "large")


def test_multi_turn_needs_gold_answers(tmp_path):
    root = write_log_dir(tmp_path)
    with pytest.raises(DataError, match="no golden_answers, which the multi_turn protocol needs") as err:
        builders.load_suite(parse_config(config_for(root, protocol="multi_turn")))
    assert str(err.value).startswith(f"{root / 'train.jsonl'}:1:")
    suite = builders.load_suite(parse_config(config_for(write_log_dir(tmp_path, train=with_golds(TRAIN),
                                                                      test=with_golds(TEST)))))
    with pytest.raises(ValueError, match="'score' needs the single_call protocol"):
        builders.resolve_answer_metric("score", suite.train)


@pytest.mark.parametrize(
    "change, message, where",
    [(lambda d: (d / "pool.json").unlink(), "missing data file: .*pool.json", None),
     (lambda d: (d / "test.jsonl").unlink(), "missing data file: .*test.jsonl", None),
     (lambda d: (d / "test.jsonl").write_text(""), "test.jsonl: no records", None),
     (lambda d: (d / "test.jsonl").write_text(TEST.replace('"mid": 0, ', "")), r"scores lack model\(s\) \['mid'\]",
      "test.jsonl:3"),
     (lambda d: (d / "train.jsonl").write_text(TRAIN + TRAIN.splitlines()[6] + "\n"), "duplicate id 't2'",
      "train.jsonl:11"),
     (lambda d: (d / "pool.json").write_text('{"small": {"price_in": "cheap"}}'), "price_in must be a number",
      None)],
)
def test_bad_log_dirs(tmp_path, change, message, where):
    root = write_log_dir(tmp_path)
    change(root)
    with pytest.raises(DataError, match=message) as err:
        load_jsonl_dir(root)
    if where:
        assert f"{root / where}:" in str(err.value)


def test_parquet_split_read_through_datasets(tmp_path):
    import datasets

    root = write_log_dir(tmp_path)
    rows = [{"costs": None, **json.loads(line)} for line in TEST.splitlines()]
    datasets.Dataset.from_list(rows).to_parquet(str(root / "test.parquet"))
    (root / "test.jsonl").unlink()
    suite = load_jsonl_dir(root)
    assert [r.id for r in suite.test.records] == ["m6", "m7", "t6", "t7"]
    assert suite.test.records[0].costs is None and suite.test.records[1].costs["mid"] == 0.00006


def test_negative_caps_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="--config.max_test_instances=-1"):
        parse_config(config_for(write_log_dir(tmp_path), max_test_instances=-1))


class CharTokenizer:
    """One token per character (and a record of what it was asked to encode)."""

    def __init__(self):
        self.encoded_lengths = []

    def encode(self, text):
        self.encoded_lengths.append(len(text))
        return [ord(ch) for ch in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


def test_long_questions_are_truncated_and_counted(tmp_path, caplog):
    huge = "x" * 5_000_000 + " the ask?"
    train = TRAIN.replace("Who wrote Hamlet?", huge)
    c = config_for(write_log_dir(tmp_path, train=train), **{"tokenizer.max_question_tokens": 40})
    suite = builders.load_suite(parse_config(c))
    tok = CharTokenizer()
    with caplog.at_level(logging.WARNING):
        prompts = builders.prompt_builder(parse_config(c), suite.train, tok)
    assert prompts.truncated == {"t1"}
    assert "1 of 10 questions were longer than tokenizer.max_question_tokens=40" in caplog.text
    t1 = next(r for r in suite.train.records if r.id == "t1")
    assert "".join(map(chr, prompts(t1))).endswith("x" * 31 + " the ask?\n")  # the last 40 characters
    assert max(tok.encoded_lengths) < 10_000  # the 5 MB question was never tokenised whole
    assert len(builders.prompt_builder(parse_config(config_for(tmp_path, **{"tokenizer.max_question_tokens": 0})),
                                       suite.train, CharTokenizer()).truncated) == 0


def test_head_tail_cut_reaches_the_prompt(tmp_path):
    question = "Passage: " + "x" * 5_000 + " the ask?"
    train = TRAIN.replace("Who wrote Hamlet?", question)
    c = config_for(write_log_dir(tmp_path, train=train),
                   **{"tokenizer.max_question_tokens": 40, "tokenizer.question_cut": "head_tail"})
    suite = builders.load_suite(parse_config(c))
    prompts = builders.prompt_builder(parse_config(c), suite.train, CharTokenizer())
    t1 = next(r for r in suite.train.records if r.id == "t1")
    assert "Passage: " + "x" * 11 + " ... " + "x" * 11 + " the ask?\n" in "".join(map(chr, prompts(t1)))
    assert prompts.truncated == {"t1"}


def tiny_run_config(root):
    c = config_for(root)
    c.tokenizer.vocab_size = 400
    c.tokenizer.max_question_tokens = 64
    c.model.num_layers, c.model.hidden_size = 1, 32
    c.sft.steps, c.sft.batch_size = 2, 8
    g = c.grpo
    g.steps, g.instances_per_step, g.group_size = 1, 4, 2
    g.max_turns, g.max_new_tokens_per_turn, g.max_total_tokens, g.max_info_tokens = 1, 12, 12, 6
    c.eval.batch_size = 4
    return c


def test_whole_run_on_a_jsonl_log_exports_its_rollouts(tmp_path):
    import datasets

    from recal_jax.training.pipeline import train_and_evaluate

    long_question = "Tell me, after a long preamble: " + "blah " * 200 + "who painted The Night Watch?"
    root = write_log_dir(tmp_path / "log", train=TRAIN.replace("Who painted The Night Watch?", long_question),
                         test=TEST.replace("Who discovered penicillin?", long_question))
    result = train_and_evaluate(tiny_run_config(root), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["truncated_questions"] == {"train": 1, "test": 1}
    assert {"random", "best_single", "oracle", "cheapest_correct", "single:small", "single:mid",
            "single:large"} <= set(saved["references"])
    assert saved["sft_policy"]["greedy"] is True and result.policy == saved["policy"]
    ds = datasets.load_from_disk(str(tmp_path / "run" / "eval_rollouts"))
    assert ds.num_rows == 4 and ds["id"] == ["m6", "m7", "t6", "t7"]
    assert {"question", "routed_models", "replies", "completion", "answer", "reward_format", "reward_answer",
            "reward_info", "cost_usd", "format_ok"} <= set(ds.column_names)
    assert ds["question"][2] == long_question  # the record's question, not the truncated prompt
    assert sum(ds["reward_answer"]) / 4 == pytest.approx(saved["policy"]["accuracy"], abs=1e-6)
    assert sum(ds["cost_usd"]) == pytest.approx(saved["policy"]["cost_total"], rel=1e-5)
    for row in ds:
        assert len(row["routed_models"]) == len(row["replies"]) <= 1
        assert row["format_ok"] == (row["reward_format"] == 1.0)


def test_own_log_default_is_dcrouters_recipe():
    """The README's claim: a user's own log gets the recipe measured on dcrouter (task named in
    <think>, task-random SFT routing, long GRPO with a strong KL term and route weight 0.1),
    not the quickstart's 300 steps at KL 0.001 or the base config's SFT towards the best model."""
    from launch.configs import dcrouter

    own_config = jsonl_config.get_config()
    own_config.data_dir = "a_log_dir"  # required by the parser; not read (check_paths=False)
    own, dc = (parse_config(c, check_paths=False) for c in (own_config, dcrouter.get_config()))
    for section, field in (("sft", "steps"), ("sft", "routing"), ("sft", "think"), ("grpo", "steps"),
                           ("grpo", "kl_coef"), ("calibration", "preset")):
        assert getattr(getattr(own, section), field) == getattr(getattr(dc, section), field), (section, field)
    assert dict(own.calibration.overrides)["weights"] == dict(dc.calibration.overrides)["weights"] == (
        0.5, 1.0, 0.25, 0.1, 0.1)
    assert (own.sft.routing, own.sft.think, own.grpo.kl_coef) == ("dataset_random", "dataset", 0.1)
