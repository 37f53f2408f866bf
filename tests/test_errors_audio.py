"""Issue 7, audio cases: voice clips that cannot be used are refused with one line naming the file and
the problem (exit 2); doubtful ones are used with a one-line warning; odd formats are converted.

Each case runs twice: through ``load_audio`` (the API) and through ``tortoise-xpu speak --voice``
with synthesis faked (``fake_synth``), so the whole CLI path up to the models is real.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.error_cases import check_case, fake_synth, run_cli  # noqa: F401  (fake_synth is a fixture)
from tortoise_xpu.audio.io import AudioWarning, load_audio
from tortoise_xpu.errors import AudioError


def tone(sr: int, seconds: float, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else x


def _zero(d):
    (d / "zero.wav").write_bytes(b"")
    return d / "zero.wav"


def _corrupt(d):
    p = d / "corrupt.wav"
    sf.write(p, tone(22050, 1), 22050)
    data = bytearray(p.read_bytes())
    data[20:36] = b"\xff" * 16  # the fmt chunk: format tag, channels, rate, block align...
    p.write_bytes(bytes(data))
    return p


def _not_audio(d):
    p = d / "notes.wav"
    p.write_text("These are my notes, not a recording.\n" * 50)
    return p


def _silent(d):
    p = d / "silent.wav"
    sf.write(p, np.zeros(22050 * 2, np.float32), 22050)
    return p


def _nan(d):
    x = tone(22050, 2)
    x[100] = np.nan
    x[200] = np.inf
    p = d / "nan.wav"
    sf.write(p, x, 22050, subtype="FLOAT")
    return p


BAD = {
    "audio.zero_length": _zero,
    "audio.corrupt_header": _corrupt,
    "audio.not_audio": _not_audio,
    "audio.silent": _silent,
    "audio.nan_inf": _nan,
}


@pytest.fixture
def speak(tiny_models_dir, tmp_path, capsys, fake_synth):
    out = tmp_path / "out.wav"

    def run(*args):
        code, _, err = run_cli(["speak", "Hello there.", *args, "-o", out, "--models-dir", tiny_models_dir,
                                "--device", "cpu", "-q", "--seed", "1"], capsys)
        return code, err, out

    return run


@pytest.mark.parametrize("case", list(BAD))
def test_unusable_clip_is_refused(speak, fake_synth, tmp_path, case):
    path = BAD[case](tmp_path)
    with pytest.raises(AudioError) as info:
        load_audio(path, 22050)
    assert str(path) in str(info.value)
    code, err, out = speak("--voice", path)
    msg = check_case(case, code, err, absent=[out])
    assert str(path) in msg
    assert fake_synth == []


def test_missing_clip_and_folder_instead_of_file(speak, tmp_path, capsys):
    code, err, out = speak("--voice", tmp_path / "absent.wav")
    check_case("audio.missing", code, err, absent=[out])
    with pytest.raises(AudioError, match="no such audio file"):
        load_audio(tmp_path / "absent.wav", 22050)
    # a folder where a clip is expected
    with pytest.raises(AudioError, match="is a folder, not an audio file"):
        load_audio(tmp_path, 22050)
    code, _, err = run_cli(["detect", tmp_path, "--models-dir", tmp_path], capsys)
    check_case("audio.directory", code, err)
    # a folder given as a voice, with no clips in it
    empty = tmp_path / "empty_voice"
    empty.mkdir()
    (empty / "readme.txt").write_text("no clips here")
    code, err, out = speak("--voice", empty)
    check_case("audio.directory", code, err, absent=[out])


def test_clipped_clip_is_used_with_a_warning(speak, fake_synth, tmp_path):
    p = tmp_path / "clipped.wav"
    sf.write(p, np.clip(tone(22050, 3, amp=3.0), -1, 1), 22050)
    with pytest.warns(AudioWarning, match="clipped"):
        load_audio(p, 22050)
    code, err, out = speak("--voice", p)
    check_case("audio.clipped", code, err)
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "clipped" in warning[0] and str(p) in warning[0]
    assert out.exists() and len(fake_synth) == 1


@pytest.mark.parametrize("sr", [8000, 48000, 96000])
def test_other_sample_rates_are_resampled(speak, fake_synth, tmp_path, sr):
    p = tmp_path / f"sr{sr}.wav"
    sf.write(p, tone(sr, 1), sr)
    clip = load_audio(p, 22050, check=False)
    assert clip.shape == (1, 22050)
    # the 220 Hz tone is still at 220 Hz after resampling
    spectrum = torch.fft.rfft(clip[0]).abs()
    assert abs(int(spectrum.argmax()) - 220) < 2
    code, err, out = speak("--voice", p)
    check_case("audio.rates", code, err)
    assert fake_synth[0]["voice_samples"][0].shape == (1, 22050)


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_clips_are_mixed_to_mono(speak, fake_synth, tmp_path, channels):
    p = tmp_path / f"ch{channels}.wav"
    x = tone(22050, 2, channels)
    sf.write(p, x, 22050, subtype="FLOAT")
    clip = load_audio(p, 22050)
    assert clip.shape == (1, 44100)
    assert torch.allclose(clip[0], torch.from_numpy(x.mean(axis=1)), atol=1e-6)
    code, err, out = speak("--voice", p)
    check_case("audio.channels", code, err)
    assert fake_synth[0]["voice_samples"][0].shape == (1, 44100)


def test_ten_minute_clip_reads_only_what_is_needed(speak, fake_synth, tmp_path, monkeypatch):
    from tortoise_xpu.voices import CLIP_MAX_SECONDS

    p = tmp_path / "lecture.wav"
    sr = 8000
    sf.write(p, np.tile(tone(sr, 1), 600), sr, subtype="PCM_16")  # 10 minutes
    requested = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    code, err, out = speak("--voice", p)
    msg = check_case("audio.long_clip", code, err, line=err)
    assert "600 s" in msg
    assert requested == [int(CLIP_MAX_SECONDS * sr)]  # never the whole file
    assert fake_synth[0]["voice_samples"][0].shape == (1, int(CLIP_MAX_SECONDS * 22050))


def test_voice_folder_without_usable_clips(speak, fake_synth, tmp_path):
    voice = tmp_path / "voices" / "bad"
    voice.mkdir(parents=True)
    _silent(voice)
    _not_audio(voice)
    code, err, out = speak("--voice", "bad", "-V", tmp_path / "voices")
    msg = check_case("audio.no_usable_clips", code, err, absent=[out])
    assert "silent.wav" in msg and "notes.wav" in msg and "silent" in msg and "not a readable" in msg
    # one good clip among them: the bad ones are skipped with a warning each, the run goes on
    sf.write(voice / "good.wav", tone(22050, 2), 22050)
    code, err, out = speak("--voice", "bad", "-V", tmp_path / "voices")
    assert code == 0 and out.exists() and "Traceback" not in err
    skipped = [line for line in err.splitlines() if line.startswith("warning: skipping")]
    assert len(skipped) == 2
    assert len(fake_synth[0]["voice_samples"]) == 1


def test_voice_folder_of_mixed_formats(speak, fake_synth, tmp_path):
    voice = tmp_path / "mixed"
    voice.mkdir()
    sf.write(voice / "a.wav", tone(22050, 2), 22050)
    sf.write(voice / "b.flac", tone(44100, 2), 44100)
    sf.write(voice / "c.ogg", tone(24000, 2), 24000)
    wanted = 3
    try:
        sf.write(voice / "d.mp3", tone(44100, 2), 44100)
        wanted += 1
    except Exception:  # libsndfile < 1.1 has no MP3: the case still holds for the other formats
        (voice / "d.mp3").unlink(missing_ok=True)
    code, err, out = speak("--voice", voice)
    check_case("audio.mixed_formats", code, err)
    clips = fake_synth[0]["voice_samples"]
    assert len(clips) == wanted
    # lossy codecs pad a little: every clip is about 2 s at 22.05 kHz
    assert all(abs(c.shape[-1] - 44100) < 4000 for c in clips)


def test_short_clip_is_refused_and_quiet_one_warned(tmp_path):
    p = tmp_path / "blip.wav"
    sf.write(p, tone(22050, 0.1), 22050)
    with pytest.raises(AudioError, match="only 0.10 s long"):
        load_audio(p, 22050)
    q = tmp_path / "quiet.wav"
    sf.write(q, tone(22050, 3, amp=0.003), 22050)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_audio(q, 22050)
    assert any("very quiet" in str(w.message) for w in caught)


def test_an_odd_sample_rate_is_a_one_line_audio_error(tmp_path):
    path = tmp_path / "odd.wav"
    sf.write(path, (0.4 * np.sin(np.arange(44101 * 2) / 7)).astype(np.float32), 44101)
    with pytest.raises(AudioError, match="cannot resample 44101 Hz") as info:
        load_audio(path, 22050)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
