"""Both mel features equal the original's (torchaudio MelSpectrogram / TacotronSTFT), the two STFT
paths agree, and the conditioning clips are prepared as the original did.

Goldens: tests/reference/gen_frontend.py (dsp.pt).  The real-clip cases read the input clip from
the tortoise-tts 3.0.0 sdist (``official_data``) and skip without it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tortoise_xpu.audio import mel as M
from tortoise_xpu.audio.conditioning import (
    AR_CLIP_SAMPLES,
    DIFFUSION_CLIP_SAMPLES,
    crop_ar_clip,
    pad_or_truncate,
    prepare_ar_clips,
    prepare_diffusion_clips,
)
from tortoise_xpu.audio.io import load_audio
from tortoise_xpu.audio.resample import resample
from tortoise_xpu.data import load_mel_norms
from tortoise_xpu.errors import ModelFileError

GOLDEN = Path(__file__).parent / "reference" / "goldens" / "frontend" / "dsp.pt"


@pytest.fixture(scope="module")
def dsp():
    return torch.load(GOLDEN, weights_only=True)


def _maxdiff(a, b) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def assert_mel_close(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    """Log-mels equal within 1e-5, plus float32 round-off of the transform relative to the band (as
    :func:`assert_paths_agree`): ``|d| <= 1e-5 + 1e-7 * peak / band``, and within 1e-5 within 20 dB
    of the loudest band.  The log turns an FFT's ~1e-7-of-peak round-off into large differences
    in near-silent bands, and that round-off depends on the CPU's FFT kernels (a chirp's quietest
    UnivNet bands: up to 7e-3 on a Xeon with AMX against goldens made on an AVX2 CPU)."""
    assert got.shape == want.shape, what
    band = want.exp().clamp(min=M.LOG_FLOOR)
    peak = band.amax()
    d = (got - want).abs()
    assert bool((d <= 1e-5 + 1e-7 * peak / band).all()), (what, float(d.max()))
    assert float(d[band > 1e-2 * peak].max()) <= 1e-5, what


def assert_paths_agree(x: torch.Tensor, spec: M.MelSpec) -> None:
    """The STFT paths agree within 1e-5 after the log, plus float32 round-off of the transform
    (~1e-7 of the clip's loudest band) relative to the band: ``|d| <= 1e-5 + 1e-7 * peak / band``."""
    a = M.mel_spectrogram(x, spec, method="stft")
    b = M.mel_spectrogram(x, spec, method="dft")
    la, lb = a.clamp(min=M.LOG_FLOOR).log(), b.clamp(min=M.LOG_FLOOR).log()
    peak = a.amax()
    bound = 1e-5 + 1e-7 * peak / a.clamp(min=M.LOG_FLOOR)
    assert bool(((la - lb).abs() <= bound).all()), float(((la - lb).abs() - bound).max())
    near_peak = a > 1e-2 * peak  # 20 dB (power) / 40 dB (magnitude) below the loudest band at most
    assert float((la - lb)[near_peak].abs().max()) <= 1e-5


def test_ar_mel_equals_torchaudio(dsp):
    for c in dsp["mel"]:
        assert_mel_close(M.ar_mel(c["input22"]), c["ar_mel"], c["kind"])


def test_univnet_mel_equals_tacotron_stft(dsp):
    for c in dsp["mel"]:
        assert_mel_close(M.univnet_mel(c["input24"]), c["univnet_mel"], c["kind"])
        # use_complex is accepted; the original's algorithm needs no complex tensors anyway.
        assert torch.equal(M.univnet_mel(c["input24"], use_complex=False), M.univnet_mel(c["input24"]))


def test_complex_free_ar_mel_matches_the_original_within_round_off(dsp):
    for c in dsp["mel"]:
        ours = M.ar_mel(c["input22"], use_complex=False)
        ref = c["ar_mel"]
        bound = 1e-4 + 1e-7 * ref.exp().amax() / ref.exp()
        assert bool(((ours - ref).abs() <= bound).all()), c["kind"]
        if c["kind"] in ("noise", "loud"):  # broadband: no band near the round-off floor
            assert _maxdiff(ours, ref) <= 1e-4


@pytest.mark.parametrize("kind", ["noise", "chirp", "speechlike", "loud"])
@pytest.mark.parametrize("spec", [M.AR_MEL, M.UNIVNET_MEL], ids=["ar", "univnet"])
def test_stft_paths_agree(dsp, kind, spec):
    c = next(c for c in dsp["mel"] if c["kind"] == kind)
    assert_paths_agree(c["input22"] if spec is M.AR_MEL else c["input24"], spec)


def test_no_complex_tensor_on_the_dft_path(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("torch.stft called on the complex-free path")

    monkeypatch.setattr(torch, "stft", forbidden)
    x = torch.randn(2, 22050) * 0.1
    assert M.ar_mel(x, use_complex=False).shape == (2, 80, 87)
    assert M.univnet_mel(x).shape == (2, 100, 87)


def test_shapes_frames_and_inputs():
    x = torch.randn(AR_CLIP_SAMPLES) * 0.1
    assert M.ar_mel(x).shape == (1, 80, 517) == (1, 80, M.num_frames(AR_CLIP_SAMPLES))
    assert M.univnet_mel(torch.randn(1, 1, DIFFUSION_CLIP_SAMPLES)).shape == (1, 100, 401)
    assert M.ar_mel(x.double()).dtype == torch.float32
    with pytest.raises(ValueError, match="too short"):
        M.ar_mel(torch.zeros(100))
    with pytest.raises(ValueError, match="mono"):
        M.ar_mel(torch.zeros(1, 2, 4000))


def test_filter_banks():
    htk = M.mel_filterbank(22050, 1024, 80, 0.0, 8000.0, "htk", "torchaudio")
    slaney = M.mel_filterbank(24000, 1024, 100, 0.0, 12000.0, "slaney", "tacotron")
    assert htk.shape == (80, 513) and slaney.shape == (100, 513)
    assert bool((htk >= 0).all()) and bool((htk.sum(1) > 0).all())
    assert float(htk[:, 8000 * 1024 // 22050 + 2:].abs().max()) == 0.0  # nothing above fmax
    # Slaney area normalisation: each triangle's area (in Hz) is 1 (the narrow low bands are
    # sampled too coarsely by the 21.5 Hz FFT bins for the sum to show it).
    for bank, sr in ((htk, 22050), (slaney, 24000)):
        area = bank.double().sum(1) * (sr / 1024)
        assert torch.allclose(area[50:], torch.ones_like(area[50:]), rtol=0.02)


def test_mel_norms(official_mel_norms_file, tmp_path):
    norms = load_mel_norms(official_mel_norms_file)
    assert norms.shape == (80,) and norms.dtype == torch.float32
    assert torch.equal(M.load_mel_norms(official_mel_norms_file), norms)
    x = torch.randn(1, 22050) * 0.1
    assert torch.allclose(M.ar_mel(x, norms), M.ar_mel(x) / norms[None, :, None])
    with pytest.raises(ModelFileError, match="not found"):
        load_mel_norms(tmp_path / "mel_norms.pth")
    torch.save(torch.ones(10), tmp_path / "short.pth")
    with pytest.raises(ModelFileError, match="80 mel band norms, found \\(10,\\)"):
        load_mel_norms(tmp_path / "short.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelFileError, match="cannot be read"):
        load_mel_norms(tmp_path / "junk.pth")


# ------------------------------------------------------------------------------ real clips

@pytest.fixture(scope="module")
def real(dsp, official_data):
    from tests import assets

    r = dsp["real_clip"]
    path = official_data / "voices" / r["voice"] / r["file"]
    assert assets.sha256(path) == r["sha256"]
    clip = load_audio(path, 22050)[:, :r["samples"]]
    return r, clip, load_mel_norms(official_data / "mel_norms.pth")


def test_real_clip_mels_equal_the_original(real):
    r, clip, _ = real
    assert_mel_close(M.ar_mel(clip), r["ar_mel"])
    assert_mel_close(M.univnet_mel(resample(clip, 22050, 24000)), r["univnet_mel"])
    assert_paths_agree(clip, M.AR_MEL)


def test_real_clip_conditioning_mels_equal_the_original(real):
    r, clip, norms = real
    (ar_clip,) = prepare_ar_clips([clip], torch.Generator().manual_seed(0))
    assert ar_clip.shape == (1, AR_CLIP_SAMPLES)
    ar = M.ar_mel(ar_clip, norms)
    assert ar.shape == (1, 80, 517)
    assert_mel_close(ar, r["ar_conditioning_mel"])
    (diff_clip,) = prepare_diffusion_clips([clip])
    diff = M.univnet_mel(diff_clip)
    assert diff.shape == (1, 100, 401)
    assert_mel_close(diff, r["diffusion_conditioning_mel"])


def test_44k_wav_loads_like_the_original(dsp, official_data):
    from tests import assets

    r = dsp["real_44k"]
    path = official_data / "voices" / r["voice"] / r["file"]
    assert assets.sha256(path) == r["sha256"]
    wav = load_audio(path, 22050)
    assert wav.shape[-1] == r["samples"]
    assert_mel_close(M.ar_mel(wav[:, :22050]), r["ar_mel_first_second"])


# ------------------------------------------------------------------------------ clip preparation

def test_ar_clip_pad_and_seeded_crop():
    short = torch.randn(1, 1000)
    padded = crop_ar_clip(short)
    assert padded.shape == (1, AR_CLIP_SAMPLES)
    assert torch.equal(padded[:, :1000], short) and float(padded[:, 1000:].abs().max()) == 0.0
    long = torch.arange(AR_CLIP_SAMPLES + 500, dtype=torch.float32)
    a = prepare_ar_clips([long, long], torch.Generator().manual_seed(3))
    b = prepare_ar_clips([long, long], torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # one seed, one crop
    starts = [int(x[0, 0]) for x in a]
    assert all(0 <= s <= 500 for s in starts)
    for x, s in zip(a, starts):
        assert torch.equal(x[0], long[s:s + AR_CLIP_SAMPLES])
    offsets = {int(crop_ar_clip(long, torch.Generator().manual_seed(k))[0, 0]) for k in range(40)}
    assert len(offsets) > 20  # the offset really is random over 0..gap
    exact = torch.randn(AR_CLIP_SAMPLES)
    assert torch.equal(crop_ar_clip(exact)[0], exact)


def test_diffusion_clip_takes_the_first_samples_at_24k():
    clip = torch.randn(1, 22050 * 6) * 0.1
    (d,) = prepare_diffusion_clips(clip)
    assert d.shape == (1, DIFFUSION_CLIP_SAMPLES)
    assert torch.equal(d, resample(clip, 22050, 24000)[:, :DIFFUSION_CLIP_SAMPLES])
    short = prepare_diffusion_clips([torch.randn(22050) * 0.1], source_rate=24000)[0]
    assert short.shape == (1, DIFFUSION_CLIP_SAMPLES) and float(short[:, 22050:].abs().max()) == 0.0
    assert torch.equal(pad_or_truncate(torch.ones(1, 5), 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="shaped"):
        prepare_diffusion_clips([torch.zeros(2, 100)])


def test_mels_of_a_speechlike_clip_have_sensible_energy():
    t = torch.arange(22050) / 22050
    x = 0.3 * torch.sin(2 * math.pi * 440 * t)
    mel = M.ar_mel(x)[0]
    band = int(mel[:, 10:-10].mean(1).argmax())
    hz = M.mel_filterbank(22050, 1024, 80, 0.0, 8000.0)[band].argmax() * 22050 / 1024
    assert abs(float(hz) - 440) < 40
