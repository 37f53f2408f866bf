"""``tortoise-xpu text``: cleaned text, token ids, chunks, JSON."""

from __future__ import annotations

import json

import pytest

from tortoise_xpu.cli import main


@pytest.fixture(autouse=True)
def _no_user_models(monkeypatch, tmp_path):
    monkeypatch.setenv("TORTOISE_XPU_MODELS", str(tmp_path / "empty-models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_prints_the_cleaned_text(capsys):
    assert main(["text", "Dr. Smith paid £7.50 in 1984."]) == 0
    assert capsys.readouterr().out == "doctor smith paid seven pounds, fifty pence in nineteen eighty-four.\n"


def test_basic_cleaners(capsys):
    assert main(["text", "--basic-cleaners", "Dr.  Smith 42"]) == 0
    assert capsys.readouterr().out == "dr. smith 42\n"


def test_split_from_file(tmp_path, capsys):
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    f = tmp_path / "in.txt"
    f.write_text(text, encoding="utf-8")
    assert main(["text", "-f", str(f), "--split"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sentence number zero is here.")  # the cleaned text first
    chunks = [line for line in lines if line.startswith("[")]
    assert len(chunks) > 1 and chunks[0].startswith("[1] Sentence number 0 is here.")
    assert all(len(line.split("] ", 1)[1]) <= 300 for line in chunks)


def test_json_without_tokens(capsys):
    assert main(["text", "One. | Two!", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"cleaned": "one. | two!", "tokens": None, "chunks": ["One.", "Two!"]}


def test_tokens_need_the_tokenizer(capsys):
    assert main(["text", "hello", "--tokens"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.json" in err and "tortoise-xpu models download" in err


def test_tokens_and_json(official_data, capsys):
    assert main(["text", "hello world", "--tokens", "--models-dir", str(official_data)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["hello world", "62 84 28 2 179 79", "6 tokens (one pass reads at most 401)"]
    assert main(["text", "Hi there. | Bye.", "--tokens", "--split", "--json",
                 "--models-dir", str(official_data)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["chunks"] == ["Hi there.", "Bye."]
    assert len(data["chunk_tokens"]) == 2 and all(isinstance(i, int) for i in data["tokens"])


def test_too_long_text_is_flagged(official_data, capsys):
    text = "word " * 500
    assert main(["text", text, "--tokens", "--models-dir", str(official_data)]) == 0
    out = capsys.readouterr().out
    assert "note: the text is" in out and "tortoise-xpu read" in out


def test_tokens_and_split_print_the_cleaned_text_and_every_id(tiny_models_dir, capsys):
    """The README's `text 'Dr. Smith paid $7.50.' --tokens --split`: the cleaned text, its ids, and
    each chunk with its ids (issue 16: it printed neither the cleaned text nor the ids)."""
    from tortoise_xpu.text.tokenizer import VoiceBpeTokenizer

    assert main(["text", "Dr. Smith paid $7.50. | Thanks.", "--tokens", "--split",
                 "--models-dir", str(tiny_models_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    tok = VoiceBpeTokenizer(f"{tiny_models_dir}/tokenizer.json")
    assert lines[0] == "doctor smith paid seven dollars, fifty cents. | thanks."
    assert lines[1] == " ".join(map(str, tok.encode(lines[0], clean=False)))
    assert lines[2].endswith("tokens (one pass reads at most 401)")
    assert lines[3].startswith("[1] Dr. Smith paid $7.50.") and lines[5].startswith("[2] Thanks.")
    assert lines[4].strip() == " ".join(map(str, tok.encode("Dr. Smith paid $7.50.")))
    assert lines[6].strip() == " ".join(map(str, tok.encode("Thanks.")))


def test_empty_text_is_an_error(capsys):
    assert main(["text", "   "]) == 2
    assert "empty" in capsys.readouterr().err
