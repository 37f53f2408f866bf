"""Resampling equals ``torchaudio.functional.resample`` (defaults) — goldens from the original's venv."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tortoise_xpu.audio.resample import resample, sinc_resample_kernel

GOLDEN = Path(__file__).parent / "reference" / "goldens" / "frontend" / "dsp.pt"


@pytest.fixture(scope="module")
def cases():
    return torch.load(GOLDEN, weights_only=True)["resample"]


def test_equal_to_torchaudio(cases):
    assert len(cases) == 20
    for c in cases:
        out = resample(c["input"], c["orig"], c["new"])
        assert out.shape == c["output"].shape, (c["orig"], c["new"])
        assert float((out - c["output"]).abs().max()) <= 1e-6, (c["kind"], c["orig"], c["new"])


def test_output_length_and_batch_shapes():
    x = torch.randn(2, 3, 1001)
    y = resample(x, 22050, 24000)
    assert y.shape == (2, 3, math.ceil(1001 * 24000 / 22050))
    assert torch.allclose(y[1, 2], resample(x[1, 2], 22050, 24000), atol=1e-6)
    assert resample(x, 16000, 16000) is x


def test_float64_and_kernel_shape():
    k, width = sinc_resample_kernel(22050, 24000)
    assert k.shape == (160, 1, 2 * width + 147) and width == 7
    x = torch.randn(5000, dtype=torch.float64)
    assert resample(x, 48000, 16000).dtype == torch.float64


def test_passband_is_kept_and_alias_band_removed():
    t = torch.arange(48000) / 48000
    low = torch.sin(2 * math.pi * 1000 * t)
    high = torch.sin(2 * math.pi * 15000 * t)  # above 8 kHz: must vanish at 16 kHz
    y_low = resample(low, 48000, 16000)[2000:-2000]
    y_high = resample(high, 48000, 16000)[2000:-2000]
    assert abs(float(y_low.abs().max()) - 1.0) < 0.01
    assert float(y_high.abs().max()) < 1e-2  # about -50 dB: a 6-zero-crossing Hann sinc


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive integers"):
        resample(torch.zeros(10), 22050.5, 24000)
    with pytest.raises(ValueError, match="positive integers"):
        resample(torch.zeros(10), 0, 24000)
    with pytest.raises(TypeError, match="floating-point"):
        resample(torch.zeros(10, dtype=torch.int16), 22050, 24000)


def test_rates_without_a_useful_common_divisor_are_refused_not_allocated():
    """44101 -> 22050 Hz reduces to 44101:22050, a filter of terabytes: a clear error instead (a corrupt
    WAV header can claim such a rate; tests/test_fuzz.py found it)."""
    import pytest

    from tortoise_xpu.audio.resample import resample

    with pytest.raises(ValueError, match="44101 Hz to 22050 Hz"):
        resample(torch.zeros(100), 44101, 22050)
    for rate in (8000, 11025, 16000, 22000, 32000, 44100, 48000, 96000, 192000, 384000):
        assert resample(torch.zeros(rate // 10), rate, 22050).shape[-1] == -(-22050 * (rate // 10) // rate)
