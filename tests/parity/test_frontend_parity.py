"""The front end's mel features on each backend against CPU float32, both STFT paths.

The AR conditioning mel is computed by ``torch.stft`` (complex tensors, as the original's
torchaudio) or, where a backend has no complex dtype (DirectML) or the policy says so, by a real
DFT basis through ``conv1d``.  Both paths on every backend are compared with the CPU's
``torch.stft`` result, the original's algorithm; the UnivNet/diffusion mel has only the real-DFT
path (the original's ``TacotronSTFT``).  The features are computed in float32 whatever the model
dtype, so the columns are float32 (TF32 off) and the policy's own path (torch's defaults).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.parity.conftest import check, device_label
from tests.parity.tolerances import precision_name, tolerance_for

SECONDS = 1.5


def speech_like(sample_rate: int, seed: int = 11) -> torch.Tensor:
    """(2, T) clips: harmonic tones with a vibrato over broadband noise, so every mel band holds signal.

    Bands that hold only float32 round-off (a pure tone's far bands, ~1e-7 of the peak) make the
    two STFT paths differ after the log by more than their arithmetic does; the noise floor here
    keeps every band within ~60 dB of the peak.
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(SECONDS * sample_rate), dtype=torch.float64) / sample_rate
    clips = []
    for f0 in (140.0, 220.0):
        phase = 2 * math.pi * (f0 * t + 3.0 * torch.sin(2 * math.pi * 5.0 * t))
        voiced = sum(torch.sin(k * phase) / k for k in range(1, 12))
        noise = torch.randn(t.shape, generator=g, dtype=torch.float64)
        clips.append(0.25 * voiced + 0.02 * noise)
    return torch.stack(clips).float()


def _ar(wav: torch.Tensor, use_complex: bool) -> torch.Tensor:
    from tortoise_xpu.audio.mel import ar_mel

    return ar_mel(wav, use_complex=use_complex)


def _univnet(wav: torch.Tensor, use_complex: bool) -> torch.Tensor:
    from tortoise_xpu.audio.mel import univnet_mel

    return univnet_mel(wav, use_complex=use_complex)


# row -> (sample rate, function, use_complex); the reference of every row is its feature's
# original algorithm on the CPU (ar_mel: torch.stft; univnet_mel: the real DFT).
FEATURES = {
    "ar_mel[stft]": (22050, _ar, True),
    "ar_mel[dft]": (22050, _ar, False),
    "univnet_mel[dft]": (24000, _univnet, True),
}
_REFERENCES: dict[str, torch.Tensor] = {}


def reference(row: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input clips, CPU float32 feature by the original's algorithm), computed once."""
    rate, fn, _ = FEATURES[row]
    key = fn.__name__
    wav = speech_like(rate)
    if key not in _REFERENCES:
        _REFERENCES[key] = fn(wav, True)
    return wav, _REFERENCES[key]


def _complex_problem(backend) -> str | None:
    if not backend.supports_complex:
        return f"{device_label(backend)} has no complex tensors"
    if backend.quirks.needs_real_stft:
        return f"{device_label(backend)} needs the real-DFT STFT (quirks.needs_real_stft)"
    return None


@pytest.mark.parametrize("row", list(FEATURES))
def test_mel_float32(row, backend, parity):
    from tests.parity.compare import measure, strict_float32

    _, fn, use_complex = FEATURES[row]
    if row.endswith("[stft]") and _complex_problem(backend):
        pytest.skip(_complex_problem(backend))
    wav, ref = reference(row)
    with torch.no_grad(), strict_float32():
        out = fn(backend.to_device(wav), use_complex).cpu()
    tol = tolerance_for(torch.float32)
    check([measure(f"frontend/{row}", f"{device_label(backend)} float32", "float32", out, ref, tol)], parity)


def test_mel_policy_path(backend, parity):
    """The path the backend's Policy picks (``use_complex_stft``), under torch's default flags."""
    from tests.parity.compare import measure, reduced_float32
    from tortoise_xpu.backends import policy_for

    use_complex = policy_for(backend).use_complex_stft
    if use_complex and _complex_problem(backend):
        pytest.fail(f"the policy asks for complex STFT where {_complex_problem(backend)}")
    tf32 = reduced_float32(backend.device, backend.capabilities().is_cpu)
    precision = precision_name(torch.float32, tf32)
    column = f"{device_label(backend)} policy"
    measurements = []
    for row in ("ar_mel[stft]" if use_complex else "ar_mel[dft]", "univnet_mel[dft]"):
        _, fn, _ = FEATURES[row]
        wav, ref = reference(row)
        with torch.no_grad():
            out = fn(backend.to_device(wav), use_complex).cpu()
        measurements.append(measure(f"frontend/{row}", column, precision, out, ref, tolerance_for(torch.float32, tf32)))
    check(measurements, parity)
