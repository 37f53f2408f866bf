"""Redaction: the alignment DP, frame → sample mapping, interpolation and cutting, with stand-in CTC models.

Nothing is downloaded: the wav2vec2 model is replaced by fakes that return chosen logits.  The
DP and ``align`` are checked against goldens of the original (tests/reference/gen_redaction.py).
"""

from __future__ import annotations

import sys
import types
from itertools import groupby
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tortoise_xpu.errors import ModelFileError, UserError
from tortoise_xpu.pipeline import redaction
from tortoise_xpu.pipeline.redaction import (_interpolate_missing, align, cut_spans, match_characters,
                                             max_alignment, redact)
from tortoise_xpu.text.split import parse_redaction

GOLDEN = Path(__file__).parent / "reference" / "goldens" / "redaction" / "redaction.pt"
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("abcdefghijklmnopqrstuvwxyz")


class FakeAligner:
    """A character CTC recogniser with fixed logits, decoding like ``Wav2Vec2CTCTokenizer``."""

    def __init__(self, logits=None, frames_for=None):
        self._logits = logits
        self._frames_for = frames_for  # wave (1, S16) -> logits, when the logits depend on the length
        self.calls = []

    def logits(self, wave):
        self.calls.append(wave)
        return self._logits if self._frames_for is None else self._frames_for(wave)

    def decode(self, ids):
        tokens = [VOCAB[k] for k, _ in groupby(ids) if k != 0]
        return "".join(" " if t == "|" else t for t in tokens).strip()

    def encode(self, text):
        return [VOCAB.index("|") if c == " " else (VOCAB.index(c) if c in VOCAB else 3) for c in text]


def one_hot_logits(frame_ids):
    logits = torch.zeros(len(frame_ids), len(VOCAB))
    logits[torch.arange(len(frame_ids)), torch.tensor(frame_ids)] = 5.0
    return logits


def spelled(text, frames):
    """Frame ids that say ``text`` evenly over ``frames`` frames: each character in its own frame slot."""
    ids = [0] * frames
    per = frames // len(text)
    for i, c in enumerate(text):
        ids[i * per] = VOCAB.index("|") if c == " " else VOCAB.index(c)
    return ids


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


# ------------------------------------------------------------------------------------ DP
def test_dp_matches_original(golden):
    for expected, heard, want in golden["dp"]:
        assert max_alignment(expected, heard) == want, (expected, heard)


def test_dp_examples_and_long_text_without_recursion():
    assert max_alignment("hello world", "helo wrld") == "hel~o w~rld"
    assert max_alignment("abc", "") == "~~~" and max_alignment("", "abc") == ""
    assert match_characters("abc", "xaybzc") == [True, True, True]
    # The original recurses once per character pair and hits Python's recursion limit near here.
    text = "the quick brown fox jumps over the lazy dog " * 14
    heard = text.replace("o", "")
    flags = match_characters(text, heard)
    assert sum(flags) == len(heard) and not any(f for c, f in zip(text, flags) if c == "o")


# ------------------------------------------------------------------------------------ align
def test_align_matches_original(golden):
    assert golden["vocab"] == VOCAB
    for case in golden["align"]:
        fake = FakeAligner(case["logits"])
        assert fake.decode(case["logits"].argmax(-1).tolist()) == case["heard"]
        assert fake.encode(case["text"]) == case["ids"]
        wav = torch.randn(1, case["samples"])
        assert align(fake, wav, case["text"]) == case["positions"], case["text"]


def test_align_feeds_normalised_16khz_audio_and_maps_frames_to_samples():
    text = "hello"
    frames = [0] * 12
    for frame, ch in zip((1, 3, 6, 8, 10), text):
        frames[frame] = VOCAB.index(ch)
    fake = FakeAligner(one_hot_logits(frames))
    wav = torch.randn(1, 24000) * 0.3 + 0.1
    pos = align(fake, wav, text)
    hop = 24000 // 12
    # first character pinned to 0, the rest at the frame where each token first tops
    assert pos == [0, 3 * hop, 6 * hop, 8 * hop, 10 * hop]
    (wave,) = fake.calls
    assert wave.shape == (1, 16000)
    assert abs(float(wave.mean())) < 1e-4 and abs(float(wave.std()) - 1) < 1e-3


def test_unheard_characters_are_interpolated():
    assert _interpolate_missing([0, None, None, 30], 100) == [0, 10, 20, 30]
    assert _interpolate_missing([0, 40, None], 100) == [0, 40, 70]  # up to the end of the audio
    # a heard character whose token never tops a frame is interpolated instead of failing
    fake = FakeAligner(one_hot_logits([0, VOCAB.index("a"), 0, 0]))
    assert align(fake, torch.randn(1, 400), "xa") == [0, 100]
    fake = FakeAligner(one_hot_logits([VOCAB.index("a"), 0, 0, 0]))
    assert align(fake, torch.randn(1, 400), "abc") == [0, 133, 266]


# ------------------------------------------------------------------------------------ cutting
def test_cut_spans_keeps_half_open_character_spans():
    wav = torch.arange(100.0)[None]
    starts = [0, 10, 20, 30, 40, 50]
    assert torch.equal(cut_spans(wav, starts, [(1, 3)]), torch.arange(10.0, 30.0)[None])
    # a span running to the last character keeps the audio to the end
    assert torch.equal(cut_spans(wav, starts, [(0, 1), (4, 6)]),
                       torch.cat([torch.arange(0.0, 10.0), torch.arange(40.0, 100.0)])[None])
    assert cut_spans(wav, starts, []).shape == (1, 0)


def test_redact_cuts_the_bracketed_words():
    parsed = parse_redaction("[sad] hello")
    assert parsed.bare == "sad hello" and parsed.keep == ((3, 9),)
    frames = 90
    fake = FakeAligner(frames_for=lambda w: one_hot_logits(spelled(parsed.bare, frames)))
    wav = torch.linspace(-1, 1, 27000)[None]
    out = redact(wav, parsed, aligner=fake)
    hop = 27000 // frames
    start = 3 * (frames // len(parsed.bare)) * hop  # where the space after "sad" is heard
    assert torch.equal(out, wav[:, start:])
    # no brackets: untouched and the aligner is not asked
    plain = redact(wav, parse_redaction("hello"), aligner=fake)
    assert plain is wav or torch.equal(plain, wav)
    assert len(fake.calls) == 1


def test_redact_refuses_to_cut_everything():
    with pytest.raises(UserError, match="brackets"):
        redact(torch.zeros(1, 100), parse_redaction("[all of it]"), aligner=FakeAligner())


# ------------------------------------------------------------------------------------ loading
def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(UserError) as info:
        redact(torch.zeros(1, 100), parse_redaction("[x] hello"))
    msg = str(info.value)
    assert "pip install 'tortoise-xpu[redaction]'" in msg and "--disable-redaction" in msg


def fake_transformers(model_factory):
    def tokenizer_factory(name):
        return SimpleNamespace(decode=FakeAligner().decode, encode=FakeAligner().encode, name=name)

    mod = types.ModuleType("transformers")
    mod.Wav2Vec2ForCTC = SimpleNamespace(from_pretrained=model_factory)
    mod.Wav2Vec2CTCTokenizer = SimpleNamespace(from_pretrained=tokenizer_factory)
    return mod


def test_unloadable_model_names_the_id_and_offline_setting(monkeypatch):
    def no_model(name):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {name}")

    monkeypatch.setitem(sys.modules, "transformers", fake_transformers(no_model))
    monkeypatch.setattr(redaction, "_LOADED", {})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFileError) as info:
        redaction.load_aligner()
    assert redaction.MODEL_ID in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(ModelFileError, match="could not be downloaded"):
        redaction.load_aligner()


class TinyCtc(torch.nn.Module):
    """Stands in for Wav2Vec2ForCTC: 320-sample frames, logits spelling ``text`` over them."""

    def __init__(self, text):
        super().__init__()
        self.text = text
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, wave):
        frames = wave.shape[-1] // 320
        return SimpleNamespace(logits=(one_hot_logits(spelled(self.text, frames)).to(wave.device) * self.scale)[None])


def test_loaded_model_runs_through_the_backend(monkeypatch):
    from tortoise_xpu.backends import resolve

    loads = []
    monkeypatch.setitem(sys.modules, "transformers",
                        fake_transformers(lambda name: loads.append(name) or TinyCtc("sad hello")))
    monkeypatch.setattr(redaction, "_LOADED", {})
    parsed = parse_redaction("[sad] hello")
    wav = torch.randn(1, 24000)
    out1 = redact(wav, parsed, resolve("cpu"))
    out2 = redact(wav, parsed, resolve("cpu"))
    assert loads == [redaction.MODEL_ID]  # loaded once per process
    assert torch.equal(out1, out2) and 0 < out1.shape[-1] < wav.shape[-1]
    assert torch.equal(out1, wav[:, wav.shape[-1] - out1.shape[-1]:])  # the tail after "sad" is kept


# ------------------------------------------------------------------------------------ pipeline
def test_pipeline_redacts_with_the_aligner(tiny_models_dir, monkeypatch):
    from tortoise_xpu import TextToSpeech

    text = "[I am sad] please feed me"
    bare = parse_redaction(text).bare.lower()
    monkeypatch.setattr(redaction, "load_aligner", lambda backend=None: FakeAligner(
        frames_for=lambda w: one_hot_logits(spelled(bare, max(w.shape[-1] // 320, len(bare))))))
    seen = []
    real_redact = redaction.redact

    def spy(wav, parsed, backend=None, **kw):
        seen.append((wav, parsed))
        return real_redact(wav, parsed, backend, **kw)

    monkeypatch.setattr(redaction, "redact", spy)
    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    cut = tts.tts(text, num_autoregressive_samples=1, diffusion_iterations=2, max_mel_tokens=12, cond_free=False,
                  seed=3)
    (full, parsed), = seen
    assert parsed.bare == "I am sad please feed me" and "redaction" in tts.last_report.stages
    assert 0 < cut.shape[-1] < full.shape[-1]
    assert torch.equal(cut, full[:, full.shape[-1] - cut.shape[-1]:])  # the prompt at the start is gone
