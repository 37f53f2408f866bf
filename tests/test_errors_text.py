"""Issue 7, text cases: every bad text is refused with one clear line (exit 2) or cleaned as documented.

Synthesis is faked (``fake_synth``: every real check runs, no model does), so these run in
milliseconds; the models folder is the tiny one for its tokenizer.
"""

from __future__ import annotations

import pytest

from tests.error_cases import check_case, fake_synth, run_cli  # noqa: F401  (fake_synth is a fixture)


@pytest.fixture
def speak(tiny_models_dir, tmp_path, capsys, fake_synth):
    """``speak(*args)`` -> (code, stderr, output path); the output is tmp_path/out.wav."""
    out = tmp_path / "out.wav"

    def run(*args):
        code, _, err = run_cli(["speak", *args, "-o", out, "--models-dir", tiny_models_dir, "--device", "cpu",
                                "-q", "--seed", "1"], capsys)
        return code, err, out

    return run


@pytest.mark.parametrize("case,text", [
    ("text.empty", ""),
    ("text.whitespace", "   \n\t  \r\n "),
    ("text.brackets_only", "[I am really sad]"),
    ("text.brackets_only", "  [I am really sad,] [and tired.] ..."),
    ("text.unbalanced_brackets", "hello [there"),
    ("text.unbalanced_brackets", "hello] there"),
    ("text.nested_brackets", "[a [b] c] d"),
    ("text.emoji_only", "😀🎉 👍🏽"),
    ("text.too_many_tokens", "你好世界" * 60),  # 240 characters, 900 tokens once transliterated
])
def test_bad_text_is_refused(speak, fake_synth, case, text):
    code, err, out = speak(text)
    check_case(case, code, err, absent=[out])
    assert fake_synth == []  # refused before any synthesis


def test_bad_text_never_reaches_synthesis(speak, fake_synth):
    for text in ("", "[only a prompt]", "a [b", "🎉"):
        code, _, _ = speak(text)
        assert code == 2
    # the fake records a call only when the real checks passed
    assert fake_synth == []


def test_one_megabyte_to_speak_says_use_read(speak, tmp_path, fake_synth):
    code, err, out = speak("word " * 200_000)
    msg = check_case("text.speak_too_long", code, err, absent=[out])
    assert "1000000 characters" in msg
    big = tmp_path / "book.txt"
    big.write_text("Some sentence here. " * 50_000, encoding="utf-8")
    code, err, out = speak("-f", big)
    check_case("text.speak_too_long", code, err, absent=[out])
    assert fake_synth == []


def test_medium_text_is_split_and_joined(speak, fake_synth):
    import soundfile as sf

    # (no digits: the first number cleaned imports inflect, which is slow)
    text = " ".join(f"This is the sentence called {w}, which is long enough to count."
                    for w in "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi".split())
    assert 300 < len(text) <= 2000
    code, err, out = speak(text)
    check_case("text.speak_split", code, err)
    assert len(fake_synth) >= 3 and all(len(c["text"]) <= 300 for c in fake_synth)
    assert sf.info(str(out)).frames == 4800 * len(fake_synth)  # every chunk joined into the one file


def test_emoji_between_words_is_dropped(speak, fake_synth, tiny_models_dir):
    code, err, out = speak("good 😀 morning 🎉")
    check_case("text.emoji_mixed", code, err)
    assert out.exists()
    from tortoise_xpu.text.cleaners import english_cleaners

    assert english_cleaners("good 😀 morning 🎉").split() == ["good", "morning"]


@pytest.mark.parametrize("case,text,latin", [
    ("text.cjk", "你好世界", "ni hao shi jie"),
    ("text.cjk", "こんにちは", "konnichiha"),
    ("text.rtl", "שלום", "shlvm"),
    ("text.rtl", "\u202eabc\u202c مرحبا", "abc mrhb"),
])
def test_non_latin_scripts_are_transliterated(speak, fake_synth, case, text, latin):
    from tortoise_xpu.text.cleaners import english_cleaners

    code, err, out = speak(text)
    check_case(case, code, err)
    assert out.exists() and fake_synth[0]["text"] == text
    cleaned = english_cleaners(text)
    assert cleaned.isascii() and " ".join(cleaned.split()) == latin


def test_control_characters_become_spaces(speak, fake_synth, tiny_models_dir):
    code, err, out = speak("hello\x00world\x07 again\x1b")
    check_case("text.control_chars", code, err)
    assert fake_synth[0]["text"].split() == ["hello", "world", "again"]
    # the tokenizer sees no [UNK] for them any more
    from tortoise_xpu.text.tokenizer import UNK_TOKEN, VoiceBpeTokenizer

    tok = VoiceBpeTokenizer(tiny_models_dir / "tokenizer.json")
    assert UNK_TOKEN not in tok.encode(fake_synth[0]["text"])
    assert UNK_TOKEN in tok.encode("hello\x00world")  # what the cleaning protects from


def test_only_control_characters_is_refused(speak):
    code, err, out = speak("\x00\x01\x07\x1b")
    check_case("text.control_only", code, err, absent=[out])


def test_lone_surrogate_from_argv_is_cleaned(speak, fake_synth):
    # Linux hands undecodable argv bytes to Python as lone surrogates (surrogateescape).
    code, err, out = speak("caf\udce9 au lait")
    assert code == 0 and "Traceback" not in err and out.exists()
    assert fake_synth[0]["text"].split() == ["caf", "au", "lait"]


def test_binary_file_is_refused(speak, tmp_path):
    blob = tmp_path / "song.mp3"
    blob.write_bytes(bytes(range(256)) * 4)
    code, err, out = speak("-f", blob)
    check_case("text.binary_file", code, err, absent=[out])


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
def test_utf16_and_other_unicode_files(speak, fake_synth, tmp_path, encoding):
    f = tmp_path / "t.txt"
    f.write_bytes("Café au lait, s’il vous plaît.".encode(encoding))  # -le/-be: no BOM
    code, err, out = speak("-f", f)
    check_case("text.utf16_file", code, err)
    assert fake_synth[0]["text"] == "Café au lait, s’il vous plaît."


@pytest.mark.parametrize("encoding,text", [
    ("latin-1", "Café crème, naïve façade."),
    ("cp1252", "“Quoted” — and café."),
])
def test_latin1_and_windows_files(speak, fake_synth, tmp_path, encoding, text):
    f = tmp_path / "t.txt"
    f.write_bytes(text.encode(encoding))
    code, err, out = speak("-f", f)
    check_case("text.latin1_file", code, err)
    assert fake_synth[0]["text"] == text


def test_missing_text_file_and_folder(speak, tmp_path):
    code, err, out = speak("-f", tmp_path / "nope.txt")
    check_case("text.file_missing", code, err, absent=[out])
    code, err, out = speak("-f", tmp_path)
    check_case("text.file_missing", code, err, absent=[out])


def test_read_refuses_empty_and_whitespace_files(tiny_models_dir, tmp_path, capsys, fake_synth):
    for content in (b"", b"  \n\n\t ", b" . , ; ! "):
        f = tmp_path / "empty.txt"
        f.write_bytes(content)
        code, _, err = run_cli(["read", f, "-o", tmp_path / "book", "--models-dir", tiny_models_dir, *_tiny()],
                               capsys)
        check_case("text.empty", code, err)
    assert not (tmp_path / "book").exists()


def test_read_of_unbalanced_brackets_fails_cleanly_without_chunk_files(tiny_models_dir, tmp_path, capsys,
                                                                       fake_synth):
    f = tmp_path / "b.txt"
    f.write_text("A fine start. | Then [a broken prompt. | The end.", encoding="utf-8")
    code, _, err = run_cli(["read", f, "-o", tmp_path / "book", "--models-dir", tiny_models_dir, *_tiny()], capsys)
    check_case("text.unbalanced_brackets", code, err)
    # chunk 1 was fine and is kept; the failing chunk left nothing half-written
    names = sorted(p.name for p in (tmp_path / "book").iterdir())
    assert names == ["chunk_0001.wav", "manifest.json"]


def test_text_command_reports_cleaning(capsys):
    code, out, err = run_cli(["text", "你好 😀 \x07world"], capsys)
    assert code == 0 and out.split() == ["ni", "hao", "world"]


def _tiny():
    return ["--device", "cpu", "-q", "--seed", "3"]
