"""Tokenizer: byte-level BPE round-trips, specials are single tokens, save/load, HF backend."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recal_jax.models.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    PROTOCOL_TAGS,
    Tokenizer,
    protocol_special_tokens,
    train_bpe,
)

POOL = ["qwen2.5-7b-instruct", "llama-3.1-70b-instruct", "gpt-4o-mini"]
CORPUS = [
    "<think> which model knows this? </think> <search> gpt-4o-mini : who wrote Hamlet? </search>",
    "<information> William Shakespeare </information> <answer> Shakespeare </answer>",
    "The quick brown fox jumps over the lazy dog. Zwölf Boxkämpfer jagen Viktor.",
    "def f(x):\n    return x * 2  # 数字 and émojis 🙂",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe(CORPUS, vocab_size=400, special_tokens=protocol_special_tokens(POOL))


def test_protocol_special_tokens_lists_tags_then_names():
    specials = protocol_special_tokens(POOL + [POOL[0]])
    assert specials == list(PROTOCOL_TAGS) + POOL
    with pytest.raises(ValueError, match="whitespace"):
        protocol_special_tokens([" bad"])


def test_pad_eos_ids_and_vocab(tok):
    assert tok.pad_id == tok.token_to_id(PAD_TOKEN) == 0
    assert tok.eos_id == tok.token_to_id(EOS_TOKEN) == 1
    assert tok.vocab_size == 400
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.token_to_id("<definitely-not-a-token>")


def test_specials_are_single_tokens(tok):
    for s in protocol_special_tokens(POOL) + [PAD_TOKEN, EOS_TOKEN]:
        ids = tok.encode(s)
        assert ids == [tok.token_to_id(s)], s
        # also inside running text, with no spaces around
        ids = tok.encode(f"ab{s}cd")
        assert tok.token_to_id(s) in ids
        assert tok.decode(ids) == f"ab{s}cd"


def test_encode_adds_no_bos_or_eos(tok):
    ids = tok.encode("hello")
    assert tok.eos_id not in ids and tok.pad_id not in ids
    assert tok.encode("") == []


@given(st.text(max_size=60))
def test_round_trip_arbitrary_unicode(text):
    tok = _module_tok()
    assert tok.decode(tok.encode(text)) == text


def test_skip_special_tokens(tok):
    ids = tok.encode("<think>hi</think>")
    assert tok.decode(ids, skip_special_tokens=True) == "hi"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_vocab_too_small_raises():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(CORPUS, vocab_size=100, special_tokens=["<x>"])


def test_save_load_equal(tok, tmp_path):
    tok.save(tmp_path / "t")
    back = Tokenizer.load(tmp_path / "t")
    assert (back.pad_id, back.eos_id, back.vocab_size) == (tok.pad_id, tok.eos_id, tok.vocab_size)
    for text in CORPUS[:4] + ["ünï©ødé <answer>x</answer>"]:
        assert back.encode(text) == tok.encode(text)
        assert back.decode(back.encode(text)) == text


def test_load_missing_dir_or_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no tokenizer files"):
        Tokenizer.load(tmp_path / "empty")


def test_plain_chat_fallback(tok):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
    assert tok.apply_chat_template(msgs) == "system: be brief\nuser: 2+2?\nassistant: "
    assert tok.apply_chat_template(msgs, add_generation_prompt=False) == (
        "system: be brief\nuser: 2+2?\n"
    )
    with pytest.raises(ValueError, match="role"):
        tok.apply_chat_template([{"content": "x"}])


def test_raw_chat_template_saved_and_used(tmp_path):
    template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    tok = train_bpe(CORPUS, vocab_size=300, chat_template=template)
    tok.save(tmp_path)
    back = Tokenizer.load(tmp_path)
    msgs = [{"role": "user", "content": "hi"}]
    assert back.apply_chat_template(msgs) == "[user]hi[assistant]"
    assert back.apply_chat_template(msgs, add_generation_prompt=False) == "[user]hi"


def test_hf_backend_via_local_dir(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok._raw, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )
    hf.chat_template = template
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg  # a real HF directory, no recal meta file
    back = Tokenizer.load(tmp_path)
    assert back._hf is not None
    assert (back.pad_id, back.eos_id, back.vocab_size) == (0, 1, tok.vocab_size)
    text = "<think> émoji 🙂 </think><search> gpt-4o-mini : q </search>"
    assert back.encode(text) == tok.encode(text)
    assert back.decode(back.encode(text)) == text
    msgs = [{"role": "user", "content": "hi"}]
    assert back.apply_chat_template(msgs) == "<|user|>hi<|assistant|>"
    back.save(tmp_path / "again")
    assert Tokenizer.load(tmp_path / "again").encode(text) == tok.encode(text)


_CACHE = {}


def _module_tok():
    if "tok" not in _CACHE:
        _CACHE["tok"] = train_bpe(
            CORPUS, vocab_size=400, special_tokens=protocol_special_tokens(POOL)
        )
    return _CACHE["tok"]


def test_split_pattern_names_tokenize_as_syllables_everywhere():
    """With the compose world's split pattern, a name never seen in the corpus is its syllables,
    one token each, the same tokens after a space, right after a tag and at the start of a text."""
    from recal_jax.data.compose_world import NAME_SPLIT_PATTERN, SYLLABLES

    rng = np.random.default_rng(0)
    names = ["".join(rng.choice(SYLLABLES, 3)) for _ in range(400)]
    unseen = "lopure"
    names = [n for n in names if n != unseen]
    corpus = [f"where was {n} born? <information> {m} </information>" for n, m in zip(names, names[1:])]
    tok = train_bpe(corpus, vocab_size=600, special_tokens=["<information>", "</information>"],
                    split_pattern=NAME_SPLIT_PATTERN)
    for text in (f"where was {unseen} born?", f"<information>{unseen}</information>", unseen):
        pieces = [tok.decode([i]) for i in tok.encode(text)]
        assert ["lo", "pu", "re"] == [p for p in pieces if p.strip() in ("lo", "pu", "re")], (text, pieces)
        assert tok.decode(tok.encode(text)) == text
    # a word that is not a name (7 letters) is left to BPE, whole or in other pieces
    assert tok.decode(tok.encode("kamibix")) == "kamibix"


def test_split_pattern_rejected_with_its_name():
    with pytest.raises(ValueError, match="invalid split pattern"):
        train_bpe(["a b c"], vocab_size=300, split_pattern="(ab")
