"""Audio files: reading every format libsndfile knows, mono mixing, scaling, checks; atomic writing."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from tortoise_xpu.audio.io import AudioWarning, audio_info, load_audio, save_wav
from tortoise_xpu.audio.resample import resample
from tortoise_xpu.errors import AudioError, TortoiseError


def _tone(seconds=3.0, sr=22050, amp=0.5, freq=220.0):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _load_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioWarning)  # a clean clip raises no warning at all
        return load_audio(*args, **kwargs)


@pytest.mark.parametrize("fmt, subtype, tol", [
    ("WAV", "PCM_16", 1 / 32768), ("WAV", "PCM_24", 1e-6), ("WAV", "PCM_32", 1e-6), ("WAV", "FLOAT", 0.0),
    ("FLAC", "PCM_16", 1 / 32768), ("OGG", "VORBIS", 0.05), ("AIFF", "PCM_16", 1 / 32768),
])
def test_formats_round_trip(tmp_path, fmt, subtype, tol):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile here cannot write {fmt}")
    x = _tone()
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(str(path), x, 22050, subtype=subtype, format=fmt)
    y = _load_quiet(path, 22050)
    assert y.shape == (1, x.size) and y.dtype == torch.float32
    assert float((y[0] - torch.from_numpy(x)).abs().max()) <= tol + 1e-7


def test_mp3_when_libsndfile_supports_it(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("libsndfile here has no MP3 support (needs libsndfile >= 1.1)")
    path = tmp_path / "clip.mp3"
    sf.write(str(path), _tone(), 22050, format="MP3")
    y = _load_quiet(path, 22050)
    assert abs(y.shape[1] - 3 * 22050) < 3000  # decoders pad a little
    assert 0.3 < float(y.abs().max()) < 0.7


def test_int16_scaling_is_the_originals(tmp_path):
    # The original divided int16 by 2**15: -32768 -> -1.0, 16384 -> 0.5.
    raw = (np.array([0, 16384, -32768, 32767, -16384] * 8000, dtype=np.int16))
    path = tmp_path / "int.wav"
    sf.write(str(path), raw, 22050, subtype="PCM_16")
    y = load_audio(path, 22050, check=False)
    assert torch.equal(y[0, :5], torch.tensor([0.0, 0.5, -1.0, 32767 / 32768, -0.5]))


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = _tone(amp=0.4), _tone(amp=0.2, freq=330.0)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), 22050, subtype="FLOAT")
    y = _load_quiet(path, 22050)
    assert torch.allclose(y[0], torch.from_numpy((left + right) / 2), atol=1e-7)


def test_resampled_on_load_like_resample(tmp_path):
    x = _tone(sr=44100)
    path = tmp_path / "hi.wav"
    sf.write(str(path), x, 44100, subtype="FLOAT")
    y = _load_quiet(path, 22050)
    assert torch.equal(y, resample(torch.from_numpy(x), 44100, 22050).clamp(-1, 1).unsqueeze(0))
    assert audio_info(path) == (44100, x.size, 1)


def test_max_seconds_reads_only_the_start(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(str(path), _tone(seconds=10.0), 22050)
    with pytest.warns(AudioWarning, match="only the first 2.5 s of 10 s"):
        assert load_audio(path, 22050, max_seconds=2.5).shape == (1, int(2.5 * 22050))
    assert load_audio(path, 22050).shape == (1, 10 * 22050)


def _write(tmp_path, name, data, sr=22050, subtype="FLOAT"):
    path = tmp_path / name
    sf.write(str(path), np.asarray(data, dtype=np.float32), sr, subtype=subtype)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda: np.zeros(0), "holds no samples"),
    (lambda: np.where(np.arange(44100) == 7, np.nan, 0.1).astype(np.float32), "1 of 44100 samples are NaN"),
    (lambda: np.zeros(44100), "silent \\(digital silence\\)"),
    (lambda: _tone(amp=5e-5), "silent \\(peak -86 dBFS\\)"),
    (lambda: _tone(seconds=0.1), "only 0.10 s long"),
])
def test_unusable_clips_are_refused(tmp_path, make, message):
    path = _write(tmp_path, "bad.wav", make())
    with pytest.raises(AudioError, match=message):
        load_audio(path, 22050)


def test_nan_is_refused_even_without_checks(tmp_path):
    path = _write(tmp_path, "nan.wav", np.full(1000, np.inf))
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(path, 22050, check=False)
    quiet = _write(tmp_path, "short.wav", np.zeros(100))
    assert load_audio(quiet, 22050, check=False).shape == (1, 100)  # no other check


@pytest.mark.parametrize("make, message", [
    (lambda: np.clip(_tone(amp=3.0), -1, 1), "clipped"),
    (lambda: _tone(amp=0.005), "very quiet \\(peak -46 dBFS\\)"),
    (lambda: _tone(seconds=1.0), "only 1.0 s long"),
    (lambda: _tone(amp=1.5), "beyond full scale \\(peak 1.50\\)"),
])
def test_doubtful_clips_warn(tmp_path, make, message):
    path = _write(tmp_path, "doubt.wav", make())
    with pytest.warns(AudioWarning, match=message):
        y = load_audio(path, 22050)
    assert float(y.abs().max()) <= 1.0  # clipped to [-1, 1] as the original did


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "nope.wav", 22050)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(junk, 22050)
    with pytest.raises(AudioError, match="not a readable audio file"):
        audio_info(junk)


def test_save_pcm16_and_float(tmp_path):
    x = torch.from_numpy(_tone(sr=24000, amp=0.7))
    p16 = save_wav(tmp_path / "out.wav", x.unsqueeze(0))
    info = sf.info(str(p16))
    assert (info.samplerate, info.subtype, info.channels) == (24000, "PCM_16", 1)
    back, _ = sf.read(str(p16), dtype="float32")
    assert np.abs(back - x.numpy()).max() <= 1 / 32767
    pf = save_wav(tmp_path / "out_f.wav", x.view(1, 1, -1), subtype="FLOAT")
    assert sf.info(str(pf)).subtype == "FLOAT"
    assert np.array_equal(sf.read(str(pf), dtype="float32")[0], x.numpy())


def test_save_clips_pcm_but_not_float(tmp_path):
    x = torch.tensor([0.0, 1.5, -2.0, 0.25] * 100)
    save_wav(tmp_path / "a.wav", x)
    pcm = sf.read(str(tmp_path / "a.wav"), dtype="float32")[0]
    assert pcm[1] > 0.99 and pcm[2] == -1.0  # clipped, not wrapped around
    save_wav(tmp_path / "b.wav", x, subtype="FLOAT")
    assert sf.read(str(tmp_path / "b.wav"), dtype="float32")[0][2] == -2.0


def test_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "keep.wav"
    save_wav(target, torch.zeros(2400))
    before = target.read_bytes()
    with pytest.raises(TortoiseError, match="NaN"):
        save_wav(target, torch.full((2400,), math.nan))
    # A failure while writing leaves the old file untouched and no temporary file behind.
    import soundfile

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(soundfile, "write", boom)
    with pytest.raises((OSError, TortoiseError), match="disk full"):
        save_wav(target, torch.ones(2400) * 0.1)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.wav"]


def test_save_multichannel_and_numpy(tmp_path):
    stereo = np.stack([_tone(sr=24000), _tone(sr=24000, freq=440.0)])
    path = save_wav(tmp_path / "st.flac", stereo)
    info = sf.info(str(path))
    assert info.channels == 2 and info.format == "FLAC"


def test_builtin_voice_clips_load(official_data):
    # Every clip the original ships, wav and mp3, 22.05 / 44.1 kHz, mono and stereo.
    clips = sorted(p for p in (official_data / "voices").rglob("*") if p.suffix in (".wav", ".mp3"))
    assert len(clips) >= 80
    for path in clips[::7]:
        y = load_audio(path, 22050)
        assert y.dim() == 2 and y.shape[0] == 1 and y.shape[1] > 22050
