"""The BPE tokenizer: the original's ids on the golden corpus (same tokenizer.json), round trips,
the AR model's start/stop conventions and the text-length limit.

The tokenizer.json comes from the tortoise-tts 3.0.0 sdist (``official_data`` fixture); the tests
that need it skip with the reason where it cannot be downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tortoise_xpu.errors import ModelFileError, UserError
from tortoise_xpu.text import (
    MAX_TEXT_TOKENS,
    START_TEXT_TOKEN,
    STOP_TOKEN,
    TextTooLongError,
    VoiceBpeTokenizer,
    ar_text_sequence,
    check_text_length,
    english_cleaners,
    max_text_length,
    tts_text_tokens,
)

GOLDEN = Path(__file__).parent / "reference" / "goldens" / "frontend" / "text.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def tok(official_tokenizer_file):
    return VoiceBpeTokenizer(official_tokenizer_file)


@pytest.fixture(scope="module")
def tok_basic(official_tokenizer_file):
    return VoiceBpeTokenizer(official_tokenizer_file, use_basic_cleaners=True)


def test_vocabulary_and_special_ids(tok, golden):
    assert tok.vocab_size == golden["vocab_size"] == 255
    assert golden["special"] == {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2}
    assert tok.encode("a b", clean=False) == [14, 2, 15]
    assert tok.encode("[", clean=False) == [1]  # not in the vocabulary: [UNK]


def test_ids_equal_the_original_on_its_own_cleaned_text(tok, golden):
    # Independent of our cleaner: the original's cleaned text through our tokenizer.
    for c in golden["cases"]:
        if c["ids"] is not None:
            assert tok.encode(c["english"], clean=False) == c["ids"], c["text"]


def test_ids_equal_the_original_end_to_end(tok, golden):
    from tests.test_text_cleaners import DEVIATIONS

    checked = 0
    for c in golden["cases"]:
        if c["ids"] is not None and c["text"] not in DEVIATIONS:
            assert tok.encode(c["text"]) == c["ids"], c["text"]
            checked += 1
    assert checked >= 200


def test_basic_cleaner_ids_and_decode_equal_the_original(tok_basic, golden):
    for c in golden["cases"]:
        assert tok_basic.encode(c["text"]) == c["basic_ids"], c["text"]
        assert tok_basic.decode(c["basic_ids"]) == c["basic_decoded"]


def test_decode_equals_the_original(tok, golden):
    for c in golden["cases"]:
        if c["ids"] is not None:
            assert tok.decode(c["ids"]) == c["decoded"]
            assert tok.decode(torch.tensor(c["ids"])) == c["decoded"]  # tensors too


def test_round_trip_and_special_tokens(tok):
    text = "Dr. Smith paid £7.50 on the 2nd of May."
    ids = tok.encode(text)
    assert tok.decode(ids) == english_cleaners(text)
    assert tok.decode([STOP_TOKEN] + ids + [STOP_TOKEN, 1]) == english_cleaners(text)  # [STOP]/[UNK] vanish


_VOCAB_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz !'(),-./:;?", max_size=80)


@settings(max_examples=200, deadline=None)
@given(_VOCAB_TEXT)
def test_decode_inverts_encode_on_vocabulary_text(tok, text):
    # Text already in cleaned form made of vocabulary characters comes back exactly.
    assert tok.decode(tok.encode(text, clean=False)) == text


def test_ar_sequence_conventions():
    ids = [20, 30, 40]
    assert tts_text_tokens(ids) == [20, 30, 40, 0]
    assert ar_text_sequence(ids) == [START_TEXT_TOKEN, 20, 30, 40, 0, 0]
    assert START_TEXT_TOKEN == 255 and STOP_TOKEN == 0


def test_text_length_limit():
    limit = max_text_length()
    assert MAX_TEXT_TOKENS == 402 and limit == 401
    # The longest sequence fills the AR model's 404 text positions exactly.
    assert len(ar_text_sequence([5] * limit)) == MAX_TEXT_TOKENS + 2
    check_text_length([5] * limit)
    with pytest.raises(TextTooLongError, match=r"402 tokens long.*at most 401.*'\|'.*tortoise-xpu read"):
        check_text_length([5] * 402)
    assert issubclass(TextTooLongError, UserError)


def test_missing_and_bad_tokenizer_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        VoiceBpeTokenizer(tmp_path / "tokenizer.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelFileError, match="not a valid tokenizer file"):
        VoiceBpeTokenizer(bad)


def test_other_tokenizer_file_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    other = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "[SPACE]": 2}, unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "other.json"
    other.save(str(path))
    with pytest.raises(ModelFileError, match="not the Tortoise tokenizer"):
        VoiceBpeTokenizer(path)


def test_known_sha_of_the_official_file(official_tokenizer_file):
    from tests import assets

    assert assets.sha256(official_tokenizer_file) == assets.KNOWN_SHA256["tokenizer.json"]
    data = json.loads(official_tokenizer_file.read_text())
    assert data["model"]["type"] == "BPE"
