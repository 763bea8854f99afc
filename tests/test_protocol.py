"""Protocol parser: spec section 2 rules case by case, lenient extraction, hostile input."""

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recal_jax.routing.protocol import Parsed, information_block, parse, parse_call

POOL = ["tiny-fast", "large-pro", "qwen2.5:7b"]
GOOD = (
    "<think>I should ask.</think>\n"
    "<search> tiny-fast : capital of france? </search>\n"
    "<information>paris</information>\n"
    "<think>Good.</think>\n"
    "<answer> Paris </answer>"
)


def test_valid_multi_turn():
    p = parse(GOOD, POOL)
    assert p == Parsed(True, "ok", [("tiny-fast", "capital of france?")], "Paris")


def test_valid_no_calls_and_whitespace():
    p = parse("\n <think>easy</think><answer>4</answer>\n", POOL)
    assert p.format_ok and p.calls == [] and p.answer == "4"


@pytest.mark.parametrize(
    "text, reason_part",
    [
        ("<answer>x</answer>", "start with <think>"),
        ("hello <think>a</think><answer>x</answer>", "start"),
        ("<think> </think><answer>x</answer>", "empty <think>"),
        ("<think>a</think>", "exactly one <answer>"),
        ("<think>a</think><answer>x</answer><answer>y</answer>", "exactly one <answer>"),
        ("<think>a</think><answer>x</answer><think>b</think>", "not last"),
        ("<think>a</think><answer>x</answer> trailing", "not last"),
        ("<think>a<answer>x</answer></think>", "nested"),
        ("<think>a</think><answer>x", "unclosed"),
        ("<think>a</answer><answer>x</answer>", "closes"),
        ("</think><think>a</think><answer>x</answer>", "unmatched"),
        ("<think>a</think><search>nobody : q</search><information>r</information><answer>x</answer>", "unknown model"),
        ("<think>a</think><search>tiny-fast : </search><information>r</information><answer>x</answer>", "empty query"),
        ("<think>a</think><search>tiny-fast</search><information>r</information><answer>x</answer>", "NAME : QUERY"),
        ("<think>a</think><search>TINY-FAST : q</search><information>r</information><answer>x</answer>", "case"),
        ("<think>a</think><search>tiny-fast : q</search><answer>x</answer>", "<information>"),
        ("", "no tags"),
    ],
)
def test_invalid_multi_turn(text, reason_part):
    p = parse(text, POOL)
    assert not p.format_ok
    assert reason_part in p.reason


def test_turn_budget():
    one = "<search> large-pro : q </search><information>r</information><think>t</think>"
    text = "<think>a</think>" + one * 3 + "<answer>x</answer>"
    assert parse(text, POOL, max_turns=3).format_ok
    p = parse(text, POOL, max_turns=2)
    assert not p.format_ok and "budget" in p.reason
    assert len(p.calls) == 3  # lenient extraction still lists them


def test_model_name_with_colon_and_longest_match():
    p = parse_call(" qwen2.5:7b : what is 2+2? ", POOL)
    assert p == ("qwen2.5:7b", "what is 2+2?", "ok")
    assert parse_call("large-pro: a: b", POOL) == ("large-pro", "a: b", "ok")


def test_information_is_opaque():
    # a routed model's reply may contain answer tags; they are not the policy's
    text = (
        "<think>a</think><search>tiny-fast : q</search>"
        + information_block("<answer>1962</answer> and </information> inside")
        + "<think>b</think><answer>x</answer>"
    )
    p = parse(text, POOL)
    assert p.format_ok, p.reason
    assert p.answer == "x"


def test_lenient_extraction_when_format_fails():
    text = "blah <search>Large-Pro : who?</search> <search>ghost : q</search> <answer>first</answer> <answer> last "
    p = parse(text, POOL)
    assert not p.format_ok
    assert p.calls == [("large-pro", "who?")]  # case-insensitive resolution; unknown model dropped
    assert p.answer == "first"  # last CLOSED answer wins over a trailing unclosed one
    p = parse("<think>a</think><answer> cut by budget", POOL)
    assert p.answer == "cut by budget" and not p.format_ok


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<search> large-pro </search>", True),
        ("<think>hard one</think> <search>large-pro : the question</search>", True),
        ("<think>x</think><search>tiny-fast</search><information>reply</information>", True),
        ("<search>tiny-fast</search> extra", False),
        ("<think></think><search>tiny-fast</search>", False),
        ("<search>tiny-fast</search><search>large-pro</search>", False),
        ("<search>nobody</search>", False),
        ("<search>tiny-fast</search><answer>x</answer>", False),
        ("<think>x</think>", False),
        ("words <search>tiny-fast</search>", False),
    ],
)
def test_single_call(text, ok):
    p = parse(text, POOL, protocol="single_call")
    assert p.format_ok == ok, p.reason
    assert p.answer is None
    if ok:
        assert len(p.calls) == 1


def test_single_call_query_kept():
    p = parse("<search> tiny-fast : what? </search>", POOL, protocol="single_call")
    assert p.calls == [("tiny-fast", "what?")]
    assert parse("<search>tiny-fast</search>", POOL, protocol="single_call").calls == [("tiny-fast", "")]


def test_bad_protocol_and_non_string():
    with pytest.raises(ValueError, match="protocol"):
        parse(GOOD, POOL, protocol="chat")
    assert not parse(None, POOL).format_ok


# ---- hostile input: never raises, linear time ---------------------------------------

TAGS = ["<think>", "</think>", "<search>", "</search>", "<information>", "</information>",
        "<answer>", "</answer>", "tiny-fast : q", ":", " ", "x", "<", ">", "</", "\u202e", "\U0001f600"]


@given(st.lists(st.sampled_from(TAGS), max_size=80))
def test_fuzz_tag_soup_never_raises(parts):
    text = "".join(parts)
    for protocol in ("multi_turn", "single_call"):
        p = parse(text, POOL, protocol=protocol)
        assert isinstance(p.format_ok, bool) and isinstance(p.reason, str)
        assert all(m in POOL for m, _ in p.calls)
        if p.format_ok:
            assert p.reason == "ok"


@given(st.text(max_size=300))
def test_fuzz_unicode_never_raises(text):
    p = parse(text, POOL)
    assert not p.format_ok or text.lstrip().startswith("<think>")


@given(
    st.lists(
        st.tuples(st.sampled_from(["tiny-fast", "large-pro"]), st.text("abc ?", min_size=1, max_size=8).filter(str.strip)),
        max_size=4,
    ),
    st.text("abcd", min_size=1, max_size=6),
)
def test_fuzz_generated_valid_rollouts_parse_back(calls, answer):
    text = "<think>go</think>"
    for model, query in calls:
        text += f"<search>{model} : {query}</search>" + information_block("reply") + "<think>ok</think>"
    text += f"<answer>{answer}</answer>"
    p = parse(text, POOL, max_turns=4)
    assert p.format_ok, p.reason
    assert p.calls == [(m, q.strip()) for m, q in calls]
    assert p.answer == answer.strip()


def _timed(text, protocol="multi_turn"):
    t = time.perf_counter()
    parse(text, POOL, protocol=protocol)
    return time.perf_counter() - t


@pytest.mark.parametrize(
    "text",
    [
        "x",
        "<think>",
        "<search>",
        "<information>",
        "<think><search>",
        "<search>tiny-fast : q</search>",
        "<<<<//>>>>",
        "\U0001f600<answer",
    ],
    ids=["plain", "unclosed-think", "unclosed-search", "unclosed-info", "nested", "many-calls", "brackets", "unicode"],
)
def test_hostile_100k_is_fast(text):
    text = (text * (100_000 // len(text) + 1))[:100_000]
    elapsed = min(_timed(text), _timed(text))
    assert elapsed < 0.25, f"{elapsed:.3f}s"  # spec target 50 ms; loose for a shared CI core
    _timed(text, "single_call")


def test_linear_scaling():
    unit = "<think>a</think><search>tiny-fast : q" * 100
    small = min(_timed(unit * 10) for _ in range(3))
    big = min(_timed(unit * 80) for _ in range(3))
    assert big < 8 * small * 4 + 0.01  # 8x the input: well under quadratic (64x)


# ---- prompts ------------------------------------------------------------------------

from recal_jax.data.schema import ModelInfo  # noqa: E402
from recal_jax.routing.prompts import build_prompt  # noqa: E402

PROMPT_MODELS = {
    "tiny-fast": ModelInfo("tiny-fast", 0.05, 0.05, "cheap, simple facts"),
    "large-pro": ModelInfo("large-pro", 2.0, 2.0, "strong and expensive"),
}


def test_full_prompt_describes_protocol_and_pool():
    text = build_prompt("What is 2+2?", PROMPT_MODELS, "multi_turn", max_turns=3)
    for needle in ("<think>", "<search>", "<information>", "<answer>", "at most 3", "tiny-fast: cheap, simple facts",
                   "large-pro: strong and expensive", "What is 2+2?"):
        assert needle in text
    single = build_prompt("q?", PROMPT_MODELS, "single_call")
    assert "<search> MODEL </search>" in single and "<answer>" not in single


def test_compact_prompt_is_short():
    text = build_prompt("  what is   the capital of peru? ", PROMPT_MODELS, style="compact")
    assert text == "models: tiny-fast large-pro\nquestion: what is the capital of peru?\n"


def test_chat_template_paths():
    class HFLike:  # transformers-style: tokenize kwarg, returns ids unless tokenize=False
        chat_template = "{{...}}"

        def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
            assert tokenize is False and add_generation_prompt
            return "<|user|>" + messages[0]["content"] + "<|assistant|>"

    class ProjectLike:  # recal_jax.models.Tokenizer-style signature
        def apply_chat_template(self, messages, add_generation_prompt=True):
            return "user: " + messages[0]["content"] + "assistant: "

    class NoTemplate:
        chat_template = None

        def apply_chat_template(self, messages, **kw):
            raise AssertionError("must not be called")

    body = build_prompt("q?", PROMPT_MODELS, style="compact")
    assert build_prompt("q?", PROMPT_MODELS, tokenizer=HFLike(), style="compact") == f"<|user|>{body}<|assistant|>"
    assert build_prompt("q?", PROMPT_MODELS, tokenizer=ProjectLike(), style="compact") == f"user: {body}assistant: "
    assert build_prompt("q?", PROMPT_MODELS, tokenizer=NoTemplate(), style="compact") == body
    with pytest.raises(ValueError, match="style"):
        build_prompt("q?", PROMPT_MODELS, style="tiny")
    with pytest.raises(ValueError, match="protocol"):
        build_prompt("q?", PROMPT_MODELS, protocol="chat")
