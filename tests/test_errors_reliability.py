"""Issue 16 (reliability, round 2): settings, seeds and output paths refused before any work; chunks
that clean to nothing dropped; hostile files refused; `detect` keeps the good files' results.

Synthesis is faked (``fake_synth``: every real check runs, no model does) where a run would
otherwise synthesise; the models folder is the tiny one for its tokenizer.
"""

from __future__ import annotations

import io
import math
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from tests import malicious_files as bad
from tests.error_cases import CASES, check_case, fake_synth, run_cli  # noqa: F401  (fake_synth is a fixture)
from tortoise_xpu.errors import UserError


@pytest.fixture
def speak(tiny_models_dir, tmp_path, capsys, fake_synth):
    """``speak(*args, out=...)`` -> (code, stdout, stderr); the output defaults to tmp_path/out.wav."""

    def run(*args, out=None):
        out = tmp_path / "out.wav" if out is None else out
        code, stdout, err = run_cli(["speak", *args, "-o", out, "--models-dir", tiny_models_dir, "--device", "cpu",
                                     "-q"], capsys)
        return code, stdout, err

    return run


# ------------------------------------------------------------------------------------ settings

@pytest.mark.parametrize("flags", [["--seed", "-1"], ["--seed", str(2 ** 64)], ["--seed", str(2 ** 63)],
                                   ["--seed", "1.5"], ["--seed", "nan"]])
def test_bad_seeds_exit_2_before_anything(speak, fake_synth, flags, tmp_path):
    code, _, err = speak("Hello.", *flags)
    check_case("settings.seed_range", code, err, absent=[tmp_path / "out.wav"])
    assert fake_synth == []


@pytest.mark.parametrize("flags", [
    ["--diffusion-iterations", "0"], ["--diffusion-iterations", "4001"], ["--temperature", "nan"],
    ["--temperature", "inf"], ["--temperature", "0"], ["--length-penalty", "nan"], ["--cond-free-k", "nan"],
    ["--cond-free-k=-inf"], ["--top-p", "0"], ["--top-p", "1.5"], ["--top-k", "-1"], ["--top-k", "2.5"],
    ["--repetition-penalty", "0"], ["--num-autoregressive-samples", "0"], ["--max-mel-tokens", "601"],
    ["--cvvp-amount", "1.1"], ["--diffusion-temperature", "nan"], ["--force-tokens", "0"], ["-k", "0"],
    ["--batch-size", "0"], ["--temperature", "hot"],
])
def test_bad_knobs_exit_2_before_models_load(speak, fake_synth, flags, tmp_path):
    code, _, err = speak("Hello.", *flags)
    check_case("settings.knob_range", code, err, absent=[tmp_path / "out.wav"])
    assert fake_synth == []


@pytest.mark.parametrize("kwargs", [{"seed": 1.5}, {"seed": True}, {"seed": -1}, {"seed": 2 ** 63}, {"seed": "5"},
                                    {"use_deterministic_seed": -3}])
def test_api_seeds_are_checked(tiny_models_dir, kwargs):
    from tortoise_xpu.pipeline.tts import TextToSpeech

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    with pytest.raises(UserError) as info:
        tts.tts("Hello.", **kwargs)
    check_case("settings.seed_range", 2, "", line=str(info.value))


@pytest.mark.parametrize("kwargs", [{"temperature": float("nan")}, {"top_p": float("inf")}, {"top_k": 1.5},
                                    {"diffusion_iterations": 0}, {"cond_free_k": float("nan")},
                                    {"length_penalty": float("nan")}, {"num_autoregressive_samples": True},
                                    {"cond_free": "yes"}, {"k": 0}, {"force_tokens": 601}])
def test_api_knobs_are_checked(tiny_models_dir, kwargs):
    from tortoise_xpu.pipeline.tts import TextToSpeech

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    with pytest.raises(UserError) as info:
        tts.tts("Hello.", **kwargs)
    assert "\n" not in str(info.value)
    assert not tts.store.loaded()  # refused before any model loaded


def test_dpm_sampler_needs_cond_free_where_it_diffuses(tiny_models_dir):
    from tortoise_xpu.pipeline.tts import TextToSpeech
    from tortoise_xpu.pipeline.validate import check_diffusion_settings

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    with pytest.raises(UserError, match="dpm\\+\\+2m sampler needs conditioning-free guidance"):
        tts.tts("Hello.", sampler="dpm++2m", cond_free=False)
    assert not tts.store.loaded()  # refused before any model loaded
    check_diffusion_settings({"sampler": "dpm++2m", "cond_free": True})
    check_diffusion_settings({"sampler": "ddim", "cond_free": False})


def test_api_text_must_be_a_string(tiny_models_dir):
    from tortoise_xpu.pipeline.tts import TextToSpeech

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    for text in (None, b"hello", 42):
        with pytest.raises(UserError) as info:
            tts.tts(text)
        check_case("text.api_not_str", None, "", line=str(info.value))


@pytest.mark.parametrize("samples", [
    [torch.full((1, 22050), float("nan"))],
    [torch.zeros(1, 22050), torch.tensor([[0.1, float("inf")] * 11025])],
    torch.full((22050,), float("nan")),
    [torch.ones(1, 22050, dtype=torch.int16)],
])
def test_api_voice_samples_with_nan_are_refused(tiny_models_dir, samples):
    from tortoise_xpu.pipeline.tts import TextToSpeech

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    with pytest.raises(UserError) as info:
        tts.tts("Hello.", voice_samples=samples)
    check_case("audio.api_nan_clips", None, "", line=str(info.value))
    assert not tts.store.loaded()


@pytest.mark.parametrize("latents", [
    (torch.full((1, 64), float("nan")), torch.zeros(1, 128)),
    (torch.zeros(1, 64, dtype=torch.int64), torch.zeros(1, 128)),
    (torch.zeros(1, 64), torch.zeros(1, 128, dtype=torch.complex64)),
])
def test_api_bad_latents_are_refused(tiny_models_dir, latents):
    from tortoise_xpu.pipeline.tts import TextToSpeech

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    with pytest.raises(UserError, match="NaN or infinite|floating point"):
        tts.tts("Hello.", conditioning_latents=latents)


def test_sampler_names_match_the_samplers():
    from tortoise_xpu.diffusion.samplers import SAMPLERS
    from tortoise_xpu.pipeline.validate import RANGES, SAMPLER_NAMES

    assert tuple(SAMPLERS) == SAMPLER_NAMES
    assert set(RANGES) - {"force_tokens"} == set(__import__("tortoise_xpu.pipeline.presets",
                                                            fromlist=["x"]).TTS_DEFAULTS)


def test_valid_values_pass_unchanged():
    from tortoise_xpu.pipeline.validate import check_seed, check_settings

    assert check_seed(2 ** 63 - 1) == 2 ** 63 - 1 and check_seed(np.int64(5)) == 5 and check_seed(None) is None
    s = check_settings({"top_k": 50.0, "temperature": 1, "cond_free": np.bool_(True), "sampler": "ddim"})
    assert s == {"top_k": 50, "temperature": 1.0, "cond_free": True, "sampler": "ddim"}
    assert isinstance(s["top_k"], int) and isinstance(s["temperature"], float)


# ------------------------------------------------------------------------------------ output paths

def test_device_nodes_and_fifos_are_never_replaced(speak, fake_synth, tmp_path):
    code, _, err = speak("Hello.", out="/dev/null")
    check_case("settings.output_not_regular", code, err)
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    code, _, err = speak("Hello.", out=fifo)
    check_case("settings.output_not_regular", code, err)
    assert not fifo.is_file()
    assert fake_synth == []


def test_bad_output_names_fail_before_synthesis(speak, fake_synth, tmp_path):
    for out in (tmp_path / ("a" * 300 + ".wav"), tmp_path / (("d" * 200 + "/") * 25 + "x.wav"),
                str(tmp_path / "b\udcff.wav")):
        code, _, err = speak("Hello.", out=out)
        check_case("settings.output_name", code, err)
    assert fake_synth == [] and list(tmp_path.iterdir()) == []


def test_a_long_name_within_name_max_is_written(speak, fake_synth, tmp_path):
    out = tmp_path / ("a" * 236 + ".wav")  # 240 characters: its temporary file must fit as well
    code, _, err = speak("Hello.", out=out)
    check_case("settings.output_long_name", code, err)
    assert sf.info(str(out)).format == "WAV"


@pytest.mark.parametrize("ext,fmt", [(".mp3", "MP3"), (".flac", "FLAC"), (".ogg", "OGG"), (".wav", "WAV")])
def test_the_extension_chooses_the_format(speak, fake_synth, tmp_path, ext, fmt):
    if fmt == "MP3" and "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3 (libsndfile < 1.1)")
    out = tmp_path / f"out{ext}"
    code, _, err = speak("Hello.", out=out)
    check_case("settings.output_format", code, err)
    assert sf.info(str(out)).format == fmt


@pytest.mark.parametrize("name", ["out.xyz", "out", "out.wav.bak"])
def test_unknown_extensions_are_refused(speak, fake_synth, tmp_path, name):
    code, _, err = speak("Hello.", out=tmp_path / name)
    check_case("settings.output_unknown_format", code, err, absent=[tmp_path / name])
    assert fake_synth == []


def test_dash_writes_wav_to_stdout(tiny_models_dir, capsysbinary, fake_synth):
    from tortoise_xpu.cli import main

    assert main(["speak", "Hello.", "-o", "-", "--models-dir", str(tiny_models_dir), "--device", "cpu",
                 "--seed", "1"]) == 0
    out, err = capsysbinary.readouterr()
    data, sr = sf.read(io.BytesIO(out))
    assert sr == 24000 and data.size == 4800 and b"wrote -" in err
    check_case("settings.output_stdout", 0, err.decode())
    code = main(["speak", "Hello.", "-o", "-", "-k", "2", "--models-dir", str(tiny_models_dir)])
    assert code == 2 and b"one candidate" in capsysbinary.readouterr().err


def test_latents_output_is_checked_first(tiny_models_dir, tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    sf.write(clip, 0.3 * np.sin(np.arange(22050) / 10.0), 22050)
    code, _, err = run_cli(["latents", clip, "-o", "/dev/null", "--models-dir", tmp_path / "none"], capsys)
    check_case("settings.output_not_regular", code, err)
    code, _, err = run_cli(["latents", clip, "-o", tmp_path / "v.txt", "--models-dir", tmp_path / "none"], capsys)
    assert code == 2 and ".pth" in err


# ------------------------------------------------------------------------------------ text

def test_a_chunk_of_only_emoji_is_dropped_with_a_warning(speak, fake_synth):
    text = "Hello there, my good friend. " * 6 + "😀" * 400 + " " + "= " * 200 + "Goodbye for now, friend."
    code, _, err = speak(text, "--seed", "1")
    check_case("text.unspeakable_chunk", code, err)
    spoken = [c["text"] for c in fake_synth]
    assert spoken and all(any(ch.isalpha() for ch in t) for t in spoken)
    assert "Goodbye" in spoken[-1]


def test_read_drops_unspeakable_chunks_too(tiny_models_dir, tmp_path, capsys, fake_synth):
    book = tmp_path / "book.txt"
    book.write_text("First part. | * * * * * | 😀😀😀 | Second part.", encoding="utf-8")
    code, _, err = run_cli(["read", book, "-o", tmp_path / "out", "--models-dir", tiny_models_dir, "-q",
                            "--device", "cpu", "--seed", "1"], capsys)
    check_case("text.unspeakable_chunk", code, err)
    assert [c["text"] for c in fake_synth] == ["First part.", "Second part."]


def test_all_chunks_unspeakable_names_the_chunk(speak, fake_synth, tmp_path, capsys, tiny_models_dir):
    code, _, err = speak("😀" * 350 + " " + "* " * 200)
    check_case("text.unspeakable_all", code, err)
    book = tmp_path / "book.txt"
    book.write_text("😀 | = = = | * *", encoding="utf-8")
    code, _, err = run_cli(["read", book, "-o", tmp_path / "out", "--models-dir", tiny_models_dir, "-q"], capsys)
    msg = check_case("text.unspeakable_all", code, err)
    assert str(book) in msg
    assert fake_synth == []


def test_text_tokens_split_case(tiny_models_dir, capsys):
    code, out, err = run_cli(["text", "Dr. Smith paid $7.50.", "--tokens", "--split", "--models-dir",
                              tiny_models_dir], capsys)
    check_case("text.tokens_split", code, err)
    lines = out.splitlines()
    assert lines[0] == "doctor smith paid seven dollars, fifty cents." and lines[1].split()[0].isdigit()
    assert lines[3].startswith("[1] Dr. Smith paid $7.50.") and lines[4].split()[0].isdigit()


# ------------------------------------------------------------------------------------ files

def test_hostile_latents_through_the_cli(speak, fake_synth, tmp_path):
    cases = {
        "assets.expanded_tensor": bad.expanded_latents(tmp_path / "expanded.pth", elements=5 * 10**8),
        "assets.zip_bomb": bad.zip_bomb(tmp_path / "bomb.pth", elements=1 << 24),
        "assets.latents_dtype": bad.latents_of(tmp_path / "ints.pth", torch.zeros(1, 1024, dtype=torch.int64)),
    }
    for case, path in cases.items():
        code, _, err = speak("Hello.", "--voice", str(path), out=tmp_path / "o.wav")
        check_case(case, code, err, absent=[tmp_path / "o.wav"])
    nan = bad.latents_of(tmp_path / "nan.pth", torch.full((1, 1024), math.nan))
    code, _, err = speak("Hello.", "--voice", str(nan), out=tmp_path / "o.wav")
    check_case("assets.latents_dtype", code, err, absent=[tmp_path / "o.wav"])
    assert fake_synth == []


def test_lying_safetensors_case(tmp_path):
    from tortoise_xpu.models.loading import load_state

    path = bad.safetensors_with_header(tmp_path / "clvp2.safetensors",
                                       {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}, bytes(16))
    with pytest.raises(UserError) as info:
        load_state(path)
    check_case("assets.safetensors_lying", 2, "", line=str(info.value))


def test_clip_headers_promising_huge_reads_are_refused(tmp_path, monkeypatch):
    """The header's frames x channels are checked before reading (libsndfile allocates what a compressed
    file promises: silence in FLAC unpacks a thousand-fold).  The cap is lowered here so a small file
    stands for a huge one; the channel cap is real."""
    from tortoise_xpu.audio import io as audio_io

    many = tmp_path / "many.wav"
    sf.write(many, np.full((2205, 100), 0.1, dtype=np.float32), 22050)
    with pytest.raises(UserError) as info:
        audio_io.load_audio(many, 22050, max_seconds=30)
    check_case("audio.huge_header", 2, "", line=str(info.value))
    flac = tmp_path / "long.flac"
    sf.write(flac, np.zeros((48000, 2), dtype=np.float32) + 0.1, 48000, format="FLAC")
    monkeypatch.setattr(audio_io, "MAX_SAMPLES", 50_000)
    with pytest.raises(UserError) as info:
        audio_io.load_audio(flac, 22050, max_seconds=30)
    msg = check_case("audio.huge_header", 2, "", line=str(info.value))
    assert "48,000 frames x 2 channels" in msg
    assert audio_io.load_audio(flac, 22050, max_seconds=0.5, check=False).shape[-1] > 0  # what is read is bounded


def test_detect_reports_every_file(tiny_models_dir, tmp_path, capsys):
    good = tmp_path / "good.wav"
    sf.write(good, (0.3 * np.sin(2 * np.pi * 200 * np.arange(24000) / 24000)).astype(np.float32), 24000)
    broken = tmp_path / "bad.wav"
    broken.write_bytes(b"RIFF not really")
    code, out, err = run_cli(["detect", good, broken, "--models-dir", tiny_models_dir], capsys)
    check_case("settings.detect_some_bad", code, err)
    assert out.startswith(f"{good}: ") and "Tortoise" in out
    code, out, err = run_cli(["detect", good, broken, "--models-dir", tiny_models_dir, "--json"], capsys)
    rows = __import__("json").loads(out)
    assert code == 2 and "tortoise_probability" in rows[0] and "error" in rows[1]


def test_every_new_case_is_documented():
    assert sys.modules["tests.error_cases"].DOC.read_text(encoding="utf-8").count("`settings.") >= 9
    assert all(c in CASES for c in ("assets.zip_bomb", "assets.expanded_tensor", "text.unspeakable_chunk"))
