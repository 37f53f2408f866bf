"""Fuzzing the paths that read untrusted input: they may refuse it (UserError and its subclasses),
never crash with anything else.

Text: cleaners, the sentence splitter, the tokenizer, the redaction-bracket parser and the text-file
decoder, on arbitrary unicode (lone surrogates included, as a non-UTF-8 command line gives them).
Files: the audio loader, the latents loader and the checkpoint reader, on random and mutated bytes.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tortoise_xpu.errors import AudioError, ModelFileError, UserError

# TORTOISE_XPU_FUZZ_SCALE=20 multiplies the example counts for a longer hunt than CI's.
_SCALE = float(os.environ.get("TORTOISE_XPU_FUZZ_SCALE", "1"))
FAST = settings(max_examples=int(150 * _SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILES = settings(max_examples=int(60 * _SCALE), deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Arbitrary unicode, surrogates and control characters included...
ANY_CHAR = st.characters(exclude_categories=())
# ...and text dense in what the parsers care about.
SPECIAL = st.sampled_from(list('[]|"“”.!?,;:$£€%&-\'0123456789 \n\t\r\x00\x07\u200b\u202e\ufeff')
                          + ["😀", "你", "ש", "ß", "İ", "\ud800", "1,000", "$3.50", "£7", "mr.", "21st", "...", "?!"])
TEXT = st.one_of(st.text(ANY_CHAR, max_size=400),
                 st.lists(st.one_of(SPECIAL, st.text(ANY_CHAR, max_size=5)), max_size=80).map("".join))

_tmp = tempfile.TemporaryDirectory(prefix="tortoise-fuzz-")
TMP = Path(_tmp.name)


@pytest.fixture(scope="module")
def tokenizer(tiny_models_dir):
    from tortoise_xpu.text.tokenizer import VoiceBpeTokenizer

    return VoiceBpeTokenizer(Path(tiny_models_dir) / "tokenizer.json")


# unidecode warns about surrogates, the audio loader about odd clips: expected here, not failures
pytestmark = pytest.mark.filterwarnings("ignore")


# ---------------------------------------------------------------------------------------- text

@FAST
@given(TEXT)
@example("$,5 and 1" + "0" * 40 + " and £.")  # inputs that crashed the original
def test_cleaners_never_crash(text):
    from tortoise_xpu.text.cleaners import basic_cleaners, english_cleaners, transliteration_cleaners

    for clean in (english_cleaners, basic_cleaners, transliteration_cleaners):
        out = clean(text)
        assert isinstance(out, str)
    cleaned = english_cleaners(text)
    assert cleaned == cleaned.lower() and "\n" not in cleaned


@FAST
@given(TEXT, st.integers(1, 400), st.integers(0, 400))
def test_splitter_never_crashes_and_keeps_its_limit(text, desired, extra):
    from tortoise_xpu.text.split import split_and_recombine_text, split_for_reading

    maximum = desired + extra
    for split in (split_and_recombine_text, split_for_reading):
        chunks = split(text, desired, maximum)
        assert all(isinstance(c, str) and c.strip() for c in chunks)
    assert all(len(c) <= maximum for c in split_and_recombine_text(text, desired, maximum))


@FAST
@given(TEXT)
def test_tokenizer_never_crashes(tokenizer, text):
    from tortoise_xpu.text.tokenizer import VoiceBpeTokenizer

    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
    assert isinstance(tokenizer.decode(ids), str)
    basic = VoiceBpeTokenizer(tokenizer.path, cleaner="basic")
    assert all(0 <= i < basic.vocab_size for i in basic.encode(text))
    assert isinstance(tokenizer.encode(text, clean=False), list)


@FAST
@given(TEXT)
def test_bracket_parser_refuses_or_parses(text):
    from tortoise_xpu.text.split import parse_redaction

    try:
        r = parse_redaction(text)
    except UserError as exc:
        assert "\n" not in str(exc) and ("[" in text or "]" in text)
        return
    assert r.bare == text.replace("[", "").replace("]", "")
    assert all(0 <= a < b <= len(r.bare) for a, b in r.keep)
    assert "".join(r.bare[a:b] for a, b in r.keep) == r.spoken


@FAST
@given(st.binary(max_size=600))
@example("Café".encode("utf-16-le"))
@example(b"\xff\xfe" + "x".encode("utf-16-le"))
def test_text_file_decoding_never_crashes(raw):
    from tortoise_xpu.cli.common import decode_text, sanitize_text

    text = decode_text(raw)
    assert isinstance(text, str)
    try:
        clean = sanitize_text(text, "f.txt")
    except UserError:
        return
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in clean)


@FAST
@given(TEXT)
def test_text_checks_of_the_pipeline_refuse_cleanly(tiny_models_dir, text):
    """What ``tts()`` checks before any model runs: brackets, emptiness, token count."""
    tts = _tts(tiny_models_dir)
    try:
        tokens = tts.text_tokens(text)
    except UserError:
        return
    assert tokens.dim() == 2 and tokens.shape[0] == 1 and tokens.dtype == torch.long


_TTS = {}


def _tts(models_dir):
    from tortoise_xpu.pipeline.tts import TextToSpeech

    if "t" not in _TTS:
        _TTS["t"] = TextToSpeech(models_dir=models_dir, device="cpu")
    return _TTS["t"]


# ---------------------------------------------------------------------------------------- files

def _write(name: str, data: bytes) -> Path:
    p = TMP / name
    p.write_bytes(data)
    return p


def _wav_bytes(seconds: float = 0.5, sr: int = 22050, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(sr * seconds)) / sr
    sf.write(buf, (0.4 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr, subtype=subtype, format=fmt)
    return buf.getvalue()


VALID = {"pcm16": _wav_bytes(), "float": _wav_bytes(subtype="FLOAT"), "flac": _wav_bytes(fmt="FLAC", subtype="PCM_16")}


def _load(path: Path) -> None:
    from tortoise_xpu.audio.io import load_audio

    for check in (True, False):
        try:
            clip = load_audio(path, 22050, check=check, max_seconds=30)
        except AudioError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            continue
        assert clip.dim() == 2 and clip.shape[0] == 1 and bool(torch.isfinite(clip).all())
        assert float(clip.abs().max()) <= 1.0


@FILES
@given(st.binary(max_size=2048))
@example(b"")
@example(b"RIFF")
@example(b"RIFF\x24\x00\x00\x00WAVEfmt ")
def test_audio_loader_random_bytes(raw):
    _load(_write("random.wav", raw))


@FILES
@given(st.sampled_from(sorted(VALID)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                 min_size=1, max_size=12), st.integers(8, 10**6))
def test_audio_loader_mutated_files(kind, flips, cut):
    data = bytearray(VALID[kind])
    for pos, value in flips:
        data[pos % len(data)] = value
    _load(_write(f"mutated.{'flac' if kind == 'flac' else 'wav'}", bytes(data[: max(8, cut % (len(data) + 1))])))


def _latents_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save((torch.zeros(1, 64), torch.zeros(1, 128)), buf)
    return buf.getvalue()


LATENTS = _latents_bytes()


@FILES
@given(st.one_of(st.binary(max_size=1024),
                 st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)), min_size=1, max_size=8).map(
                     lambda flips: _mutate(LATENTS, flips))))
def test_latents_and_checkpoint_readers_random_bytes(raw):
    from tortoise_xpu.models.loading import load_state
    from tortoise_xpu.voices import load_latents

    p = _write("voice.pth", raw)
    try:
        ar, diff = load_latents(p)
        assert ar.shape[0] == 1 and diff.shape[0] == 1
    except UserError as exc:
        assert "\n" not in str(exc)
    try:
        load_state(p)
    except ModelFileError as exc:
        assert "\n" not in str(exc)


def _mutate(data: bytes, flips) -> bytes:
    out = bytearray(data)
    for pos, value in flips:
        out[pos % len(out)] = value
    return bytes(out)
