"""Long-text splitting (equal to the original's ``split_and_recombine_text``), manual ``|`` splits
and redaction brackets.

"Rejoin", precisely: with ``N = normalize_for_split(text)`` (whitespace runs -> one space,
curly double quotes -> straight), ``N`` equals the chunks in order, separated (and preceded /
followed) by gaps that contain only whitespace and ``.,;:!?``.  ``assert_rejoins`` checks it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tortoise_xpu.errors import UserError
from tortoise_xpu.text.split import (
    normalize_for_split,
    parse_redaction,
    split_and_recombine_text,
    split_for_reading,
    split_manual,
)

GOLDEN = Path(__file__).parent / "reference" / "goldens" / "frontend" / "split.pt"
_GAP = re.compile(r"^[\s.,;:!?]*$")


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def assert_rejoins(text: str, chunks: list[str]) -> None:
    normal = normalize_for_split(text)
    at = 0
    for chunk in chunks:
        found = normal.find(chunk, at)
        assert found >= 0, (chunk, normal[at:])
        assert _GAP.match(normal[at:found]), normal[at:found]
        at = found + len(chunk)
    assert _GAP.match(normal[at:])


def test_equal_to_the_original_on_own_texts(golden):
    assert len(golden["own"]) >= 30
    for c in golden["own"]:
        assert split_and_recombine_text(c["text"], c["desired"], c["max"]) == c["chunks"]


def test_equal_to_the_original_on_random_strings(golden):
    for c in golden["fuzz"]:
        assert split_and_recombine_text(c["text"], c["desired"], c["max"]) == c["chunks"], repr(c["text"])


def test_deviation_chunks_never_exceed_max_length(golden):
    # The original returns a chunk longer than max_length on these (a closing quote at the end of the
    # text taken two characters at a time); we cut that chunk again at its last space.
    for c in golden["over_max"]:
        assert any(len(x) > c["max"] for x in c["chunks"])
        ours = split_and_recombine_text(c["text"], c["desired"], c["max"])
        assert all(len(x) <= c["max"] for x in ours)
        assert_rejoins(c["text"], ours)
        # Everything up to the offending chunk is the original's.
        first_bad = next(i for i, x in enumerate(c["chunks"]) if len(x) > c["max"])
        assert ours[:first_bad] == c["chunks"][:first_bad]


def test_equal_to_the_original_on_the_package_texts(golden, official_data):
    for c in golden["package"]:
        text = (official_data / c["file"]).read_text(encoding="utf-8")
        chunks = split_and_recombine_text(text, c["desired"], c["max"])
        assert [len(x) for x in chunks] == c["lengths"], c["file"]
        digest = hashlib.sha256(json.dumps(chunks, ensure_ascii=False).encode("utf-8")).hexdigest()
        assert digest == c["sha256"]


def test_original_unit_test_expectations():
    text = """
        This is a sample sentence.
        This is another sample sentence.
        This is a longer sample sentence that should force a split inthemiddlebutinotinthislongword.
        "Don't split my quote... please"
        """
    assert split_and_recombine_text(text, desired_length=20, max_length=40) == [
        "This is a sample sentence.", "This is another sample sentence.", "This is a longer sample sentence that",
        "should force a split", "inthemiddlebutinotinthislongword.", "\"Don't split my quote... please\""]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(1, 60), st.integers(0, 60))
def test_never_crashes_chunks_fit_and_rejoin(text, desired, extra):
    max_length = desired + extra
    chunks = split_and_recombine_text(text, desired, max_length)
    assert all(0 < len(c) <= max_length for c in chunks)
    assert all(c == c.strip() for c in chunks)
    assert_rejoins(text, chunks)


_PROSE = st.lists(st.sampled_from(["word", "Word", "a", "longerword", ".", "!", "?", ",", '"', "\u201c", "\u201d",
                                   " ", " ", " ", "\n", "...", "'", "x" * 30]), max_size=200).map("".join)


@settings(max_examples=200, deadline=None)
@given(_PROSE, st.sampled_from([(200, 300), (50, 80), (20, 40), (5, 8)]))
def test_prose_like_text_fits_and_rejoins(text, lengths):
    desired, max_length = lengths
    chunks = split_and_recombine_text(text, desired, max_length)
    assert all(len(c) <= max_length for c in chunks)
    assert_rejoins(text, chunks)


def test_bad_lengths():
    with pytest.raises(UserError):
        split_and_recombine_text("text", desired_length=10, max_length=5)
    with pytest.raises(UserError):
        split_and_recombine_text("text", desired_length=0, max_length=5)


def test_manual_split():
    assert split_manual("One. | Two! ||  Three  ") == ["One.", "Two!", "Three"]
    assert split_for_reading("a long text | with a manual split") == ["a long text", "with a manual split"]
    assert split_for_reading("No pipe here. Two sentences.") == ["No pipe here. Two sentences."]


def test_redaction_parsing():
    r = parse_redaction("[I am really sad,] Please feed me.")
    assert r.has_redaction
    assert r.prompt == "I am really sad,"
    assert r.spoken == " Please feed me."
    assert r.bare == "I am really sad, Please feed me."
    assert r.keep == ((16, 32),)
    assert r.bare[16:32] == " Please feed me."
    assert r.source == "[I am really sad,] Please feed me."

    r = parse_redaction("Hello [whispering] there [softly] friend")
    assert r.spoken == "Hello  there  friend"
    assert r.prompt == "whisperingsoftly"
    assert [r.bare[a:b] for a, b in r.keep] == ["Hello ", " there ", " friend"]

    r = parse_redaction("no brackets")
    assert not r.has_redaction and r.keep == ((0, 11),) and r.spoken == "no brackets" and r.prompt == ""


@pytest.mark.parametrize("text, message", [
    ("a ] b", r"'\]' at character 3 has no matching '\['"),
    ("[a [b] c]", r"nested '\[' at character 4"),
    ("[never closed", r"never closed"),
])
def test_redaction_errors(text, message):
    with pytest.raises(UserError, match=message):
        parse_redaction(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab [].", max_size=40))
def test_redaction_never_crashes_unexpectedly(text):
    try:
        r = parse_redaction(text)
    except UserError:
        return
    assert "".join(r.bare[a:b] for a, b in r.keep) == r.spoken
    assert len(r.bare) == len(text) - text.count("[") - text.count("]")
