"""cut_question against a plain character-level reference: what is kept, what is marked, what is counted."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recal_jax.routing.question_cut import CHARS_PER_TOKEN_BOUND, CUT_MARK, cut_question


class CharCodec:
    """One token per character, so the expected cut can be written by slicing the string."""

    def __init__(self):
        self.longest_encoded = 0

    def encode(self, text):
        self.longest_encoded = max(self.longest_encoded, len(text))
        return [ord(ch) for ch in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


def reference_cut(question, cap, cut):
    if cap <= 0 or len(question) <= cap:
        return question, False
    if cut == "tail":
        return question[-cap:], True
    return question[:cap // 2] + CUT_MARK + question[len(question) - (cap - cap // 2):], True


def test_hand_computed_cases():
    codec = CharCodec()
    assert cut_question("abcdefghij", codec, 4, "tail") == ("ghij", True)
    assert cut_question("abcdefghij", codec, 4, "head_tail") == ("ab ... ij", True)
    assert cut_question("abcdefghij", codec, 5, "head_tail") == ("ab ... hij", True)
    assert cut_question("abcd", codec, 4, "head_tail") == ("abcd", False)
    assert cut_question("abcdefghij", codec, 0, "head_tail") == ("abcdefghij", False)


@settings(max_examples=200, deadline=None)
@given(question=st.text(max_size=300), cap=st.integers(0, 40), cut=st.sampled_from(["tail", "head_tail"]))
def test_matches_the_character_reference(question, cap, cut):
    assert cut_question(question, CharCodec(), cap, cut) == reference_cut(question, cap, cut)


@pytest.mark.parametrize("cut", ["tail", "head_tail"])
def test_a_huge_question_is_never_tokenised_whole(cut):
    codec = CharCodec()
    question = "HEAD" + "x" * 5_000_000 + "the ask?"
    text, was_cut = cut_question(question, codec, 40, cut)
    assert was_cut and codec.longest_encoded <= 40 * CHARS_PER_TOKEN_BOUND * 2
    assert text.endswith("the ask?") and text.startswith("HEAD") == (cut == "head_tail")
    assert len(text) == 40 + (len(CUT_MARK) if cut == "head_tail" else 0)


def test_unknown_cut_is_refused():
    with pytest.raises(ValueError, match="unknown question cut 'middle'"):
        cut_question("abc", CharCodec(), 2, "middle")
