"""Mel spectrograms in plain torch: the two feature sets the Tortoise checkpoints read.

``ar_mel``
    The AR model's (and CVVP's) conditioning mel: 22.05 kHz, ``n_fft`` 1024, hop
    256, Hann window 1024, 80 bands over 0-8000 Hz on the HTK mel scale with
    slaney area normalisation, *power* spectrum, ``log(clamp(x, 1e-5))``, divided
    per band by ``mel_norms``.  Numerically torchaudio's
    ``MelSpectrogram(norm="slaney")`` as the original ``TorchMelSpectrogram`` used it.
``univnet_mel``
    The diffusion decoder's conditioning / UnivNet vocoder mel: 24 kHz, ``n_fft``
    1024, hop 256, Hann 1024, 100 bands over 0-12000 Hz on the slaney mel scale
    with slaney normalisation (librosa's default filter bank), *magnitude*
    spectrum, input clipped to [-1, 1], ``log(clamp(x, 1e-5))``: the original
    ``TacotronSTFT`` / ``wav_to_univnet_mel``.

Both centre their frames with reflect padding of ``n_fft // 2``, giving
``1 + T // hop`` frames.

Two STFT paths: ``torch.stft`` (complex tensors, an FFT) and a real DFT basis
(windowed cos and -sin rows) applied with ``conv1d``, which needs no complex
dtype (DirectML has none).  Each feature uses the original's own algorithm by
default, so both equal the original bit for bit on the CPU: ``torch.stft`` for the
AR mel (torchaudio), the real DFT for the UnivNet mel (``TacotronSTFT``).
``ar_mel(use_complex=False)`` switches the AR mel to the real DFT.

How closely the two paths agree is set by float32 round-off in the transform,
about 1e-7 of the clip's loudest band: after the log, within 1e-5 wherever a band
holds at least 1/100 of that peak, and ``|diff| <= 1e-5 + 1e-7 * peak / band`` everywhere
(quieter bands are round-off for either path; even ``torch.stft`` is 4e-4 away
from a float64 reference there).  tests/test_mel.py checks exactly this.  All
work is done in float32 whatever the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from tortoise_xpu.backends.markers import cpu_route

__all__ = [
    "MelSpec",
    "AR_MEL",
    "UNIVNET_MEL",
    "mel_filterbank",
    "stft_magnitude",
    "mel_spectrogram",
    "log_mel",
    "ar_mel",
    "univnet_mel",
    "num_frames",
    "load_mel_norms",
]

LOG_FLOOR = 1e-5
# Constant tables are built on the CPU (float64 where the original rounds from float64) and moved
# as float32; the portability audit (backends/audit.py) reports them as deliberate host work.
_HOST_TABLES = "mel constants: window, DFT basis and filter bank built on the host (float64/float32), moved as float32"


@dataclass(frozen=True)
class MelSpec:
    """Everything that defines one mel feature: analysis, filter bank, spectrum power, numerics.

    ``flavour`` names whose numerics to reproduce, down to float32 rounding:
    ``"torchaudio"`` (window from ``torch.hann_window``, filter bank computed in
    float32 as ``melscale_fbanks`` does, ``torch.stft`` as its own STFT) or
    ``"tacotron"`` (window and filter bank computed in float64 as scipy/librosa do,
    a real-DFT ``conv1d`` as its own STFT).  The rounding matters only near the
    log floor next to strong tones, where a filter-edge weight of 1e-8 instead of 0
    times a large power moves a near-silent band by 1e-4.
    """

    sample_rate: int
    n_fft: int
    hop_length: int
    win_length: int
    n_mels: int
    fmin: float
    fmax: float
    power: float          # 2.0: power spectrum; 1.0: magnitude
    mel_scale: str        # "htk" or "slaney"
    clip_input: bool      # clip the waveform to [-1, 1] first
    flavour: str          # "torchaudio" or "tacotron"

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def native_complex(self) -> bool:
        """Whether the original computed this feature with complex tensors (``torch.stft``)."""
        return self.flavour == "torchaudio"


AR_MEL = MelSpec(sample_rate=22050, n_fft=1024, hop_length=256, win_length=1024, n_mels=80, fmin=0.0,
                 fmax=8000.0, power=2.0, mel_scale="htk", clip_input=False, flavour="torchaudio")
UNIVNET_MEL = MelSpec(sample_rate=24000, n_fft=1024, hop_length=256, win_length=1024, n_mels=100, fmin=0.0,
                      fmax=12000.0, power=1.0, mel_scale="slaney", clip_input=True, flavour="tacotron")


# --- mel scale ----------------------------------------------------------------------------------

_SLANEY_LINEAR_HZ_PER_MEL = 200.0 / 3  # below 1 kHz the slaney scale is linear...
_SLANEY_KNEE_HZ = 1000.0
_SLANEY_KNEE_MEL = _SLANEY_KNEE_HZ / _SLANEY_LINEAR_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0  # ...and logarithmic above


def _hz_to_mel(hz: float, scale: str) -> float:
    if scale == "htk":
        return 2595.0 * math.log10(1.0 + hz / 700.0)
    if hz < _SLANEY_KNEE_HZ:
        return hz / _SLANEY_LINEAR_HZ_PER_MEL
    return _SLANEY_KNEE_MEL + math.log(hz / _SLANEY_KNEE_HZ) / _SLANEY_LOG_STEP


def _mel_to_hz(mel: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    linear = mel * _SLANEY_LINEAR_HZ_PER_MEL
    log = _SLANEY_KNEE_HZ * torch.exp(_SLANEY_LOG_STEP * (mel - _SLANEY_KNEE_MEL))
    return torch.where(mel >= _SLANEY_KNEE_MEL, log, linear)


@lru_cache(maxsize=8)
@cpu_route(_HOST_TABLES)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                   mel_scale: str = "htk", flavour: str = "torchaudio") -> torch.Tensor:
    """Slaney-normalised triangular mel filters, ``(n_mels, n_fft // 2 + 1)`` float32 on the CPU.

    Band edges are ``n_mels + 2`` points evenly spaced on the mel scale between
    ``fmin`` and ``fmax``; each triangle is scaled by ``2 / (upper - lower edge in Hz)``
    so every band has the same area.  ``mel_scale="htk", flavour="torchaudio"`` is
    torchaudio's ``melscale_fbanks(norm="slaney")`` (computed in float32);
    ``mel_scale="slaney", flavour="tacotron"`` is librosa's ``filters.mel`` (computed
    in float64, stored as float32).  Cached; do not modify the result in place.
    """
    if mel_scale not in ("htk", "slaney"):
        raise ValueError(f"mel_scale must be 'htk' or 'slaney', got {mel_scale!r}")
    if flavour not in ("torchaudio", "tacotron"):
        raise ValueError(f"flavour must be 'torchaudio' or 'tacotron', got {flavour!r}")
    work = torch.float32 if flavour == "torchaudio" else torch.float64
    n_freqs = n_fft // 2 + 1
    if flavour == "torchaudio":
        bins_hz = torch.linspace(0, sample_rate // 2, n_freqs, dtype=work)  # torchaudio's (integer) Nyquist
    else:
        bins_hz = torch.arange(n_freqs, dtype=work) * (sample_rate / n_fft)
    edges_mel = torch.linspace(_hz_to_mel(fmin, mel_scale), _hz_to_mel(fmax, mel_scale), n_mels + 2, dtype=work)
    edges_hz = _mel_to_hz(edges_mel, mel_scale)
    widths = edges_hz[1:] - edges_hz[:-1]
    # Distance of every FFT bin from every edge, then the rising and falling sides of each triangle.
    dist = edges_hz[:, None] - bins_hz[None, :]                   # (n_mels + 2, n_freqs)
    rising = -dist[:-2] / widths[:-1, None]
    falling = dist[2:] / widths[1:, None]
    bank = torch.clamp(torch.minimum(rising, falling), min=0.0)
    area = (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    if flavour == "tacotron":
        bank = bank.to(torch.float32).to(torch.float64)  # librosa rounds the triangles before scaling
    return (bank * area).to(torch.float32)


# --- STFT ---------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
@cpu_route(_HOST_TABLES)
def _window(n_fft: int, win_length: int, flavour: str) -> torch.Tensor:
    # Periodic Hann, centred in n_fft: torch's own float32 one, or scipy's float64 one rounded.
    if flavour == "torchaudio":
        win = torch.hann_window(win_length, periodic=True, dtype=torch.float32)
    else:
        k = torch.arange(win_length, dtype=torch.float64)
        win = (0.5 - 0.5 * torch.cos(2.0 * math.pi * k / win_length)).to(torch.float32)
    left = (n_fft - win_length) // 2
    return F.pad(win, (left, n_fft - win_length - left))


@lru_cache(maxsize=8)
@cpu_route(_HOST_TABLES)
def _dft_basis(n_fft: int, win_length: int, flavour: str) -> torch.Tensor:
    """Windowed real DFT rows: ``(2 * n_freqs, 1, n_fft)``, cos rows then -sin rows."""
    n_freqs = n_fft // 2 + 1
    k = torch.arange(n_freqs, dtype=torch.float64)[:, None]
    n = torch.arange(n_fft, dtype=torch.float64)[None, :]
    angle = 2.0 * math.pi * ((k * n) % n_fft) / n_fft  # reduce k*n first: exact angles for large k*n
    basis = torch.cat([torch.cos(angle), -torch.sin(angle)], dim=0)
    return (basis.to(torch.float32) * _window(n_fft, win_length, flavour))[:, None, :]


@lru_cache(maxsize=16)
def _on(name: str, device: torch.device, *args) -> torch.Tensor:
    # The cached CPU constants, copied once per device.
    make = {"window": _window, "basis": _dft_basis, "bank": mel_filterbank}[name]
    return make(*args).to(device)


def _as_batch(wav: torch.Tensor) -> torch.Tensor:
    if wav.dim() == 1:
        wav = wav[None]
    elif wav.dim() == 3:
        if wav.shape[1] != 1:
            raise ValueError(f"expected mono audio (B, 1, T), got {tuple(wav.shape)}")
        wav = wav[:, 0]
    elif wav.dim() != 2:
        raise ValueError(f"expected audio shaped (T), (B, T) or (B, 1, T), got {tuple(wav.shape)}")
    return wav.float()


def num_frames(num_samples: int, spec: MelSpec = AR_MEL) -> int:
    """Frames a centred STFT gives for ``num_samples`` samples: ``1 + num_samples // hop``."""
    return 1 + num_samples // spec.hop_length


STFT_METHODS = ("stft", "dft")


def stft_magnitude(wav: torch.Tensor, n_fft: int, hop_length: int, win_length: int, power: float = 1.0,
                   method: str = "stft", flavour: str = "torchaudio") -> torch.Tensor:
    """``|STFT|**power`` of ``(B, T)`` float32 audio, centred (reflect padding), Hann window.

    Returns ``(B, n_fft // 2 + 1, 1 + T // hop_length)``.

    Args:
        method: ``"stft"``: ``torch.stft`` (complex tensors; torchaudio's algorithm).
            ``"dft"``: the frames times a windowed cos/-sin basis with ``conv1d`` (the
            original ``TacotronSTFT``'s algorithm; no complex dtype anywhere).
        flavour: the window's rounding (see :class:`MelSpec`).
    """
    if method not in STFT_METHODS:
        raise ValueError(f"method must be one of {STFT_METHODS}, got {method!r}")
    if wav.shape[-1] <= n_fft // 2:
        raise ValueError(f"audio of {wav.shape[-1]} samples is too short for an STFT of size {n_fft}")
    n_freqs = n_fft // 2 + 1
    if method == "stft":
        window = _on("window", wav.device, n_fft, win_length, flavour)
        spec = torch.stft(wav, n_fft, hop_length=hop_length, win_length=n_fft, window=window, center=True,
                          pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
        mag = spec.abs()
        return mag if power == 1.0 else mag.pow(power)
    padded = F.pad(wav[:, None], (n_fft // 2, n_fft // 2), mode="reflect")
    parts = F.conv1d(padded, _on("basis", wav.device, n_fft, win_length, flavour), stride=hop_length)
    power_spec = parts[:, :n_freqs] ** 2 + parts[:, n_freqs:] ** 2
    if power == 2.0:
        return power_spec
    mag = power_spec.sqrt()
    return mag if power == 1.0 else mag.pow(power)


def _pick_method(spec: MelSpec, use_complex: bool | None) -> str:
    # The original's own algorithm where allowed: torch.stft for torchaudio features (the
    # real DFT when complex tensors are not allowed), the real DFT for tacotron features.
    if not spec.native_complex:
        return "dft"
    return "dft" if use_complex is False else "stft"


def mel_spectrogram(wav: torch.Tensor, spec: MelSpec, use_complex: bool | None = None,
                    method: str | None = None) -> torch.Tensor:
    """Linear-amplitude mel spectrogram ``(B, n_mels, frames)`` of ``(T)``, ``(B, T)`` or ``(B, 1, T)`` audio.

    Args:
        use_complex: whether complex tensors may be used.  ``None``/``True``: the
            original's own algorithm for this feature (``torch.stft`` for the
            torchaudio flavour, the real DFT for the tacotron flavour); ``False``: the
            real DFT for both.
        method: force an STFT method (``"stft"`` or ``"dft"``); for comparisons.
    """
    wav = _as_batch(wav)
    if spec.clip_input:
        wav = wav.clamp(-1.0, 1.0)
    method = method or _pick_method(spec, use_complex)
    mag = stft_magnitude(wav, spec.n_fft, spec.hop_length, spec.win_length, spec.power, method, spec.flavour)
    bank = _on("bank", wav.device, spec.sample_rate, spec.n_fft, spec.n_mels, spec.fmin, spec.fmax,
               spec.mel_scale, spec.flavour)
    return torch.matmul(bank, mag)


def log_mel(wav: torch.Tensor, spec: MelSpec, use_complex: bool | None = None,
            method: str | None = None) -> torch.Tensor:
    """``log(clamp(mel, 1e-5))`` of :func:`mel_spectrogram`."""
    return torch.log(torch.clamp(mel_spectrogram(wav, spec, use_complex, method), min=LOG_FLOOR))


def ar_mel(wav: torch.Tensor, mel_norms: torch.Tensor | None = None, use_complex: bool = True) -> torch.Tensor:
    """The AR conditioning mel ``(B, 80, 1 + T // 256)`` of 22.05 kHz audio.

    Args:
        wav: ``(T)``, ``(B, T)`` or ``(B, 1, T)`` audio at 22050 Hz.
        mel_norms: the 80 per-band divisors (``tortoise_xpu.data.load_mel_norms``);
            ``None`` leaves the log-mel unnormalised.
        use_complex: ``True``: ``torch.stft``, as the original (torchaudio) did;
            ``False``: the real-DFT path, for backends without complex tensors.
    """
    mel = log_mel(wav, AR_MEL, use_complex)
    if mel_norms is not None:
        mel = mel / mel_norms.to(device=mel.device, dtype=mel.dtype)[None, :, None]
    return mel


def univnet_mel(wav: torch.Tensor, use_complex: bool = True) -> torch.Tensor:
    """The diffusion/vocoder mel ``(B, 100, 1 + T // 256)`` of 24 kHz audio (clipped to [-1, 1] first).

    The original (``TacotronSTFT``) computed it with a real DFT basis, which needs no
    complex tensors, so this always takes that path; ``use_complex`` is accepted for a
    signature uniform with :func:`ar_mel`.  (``torch.stft`` would differ by up to ~4e-4
    in bands that hold only float32 round-off, e.g. above 11 kHz of a 22.05 kHz clip.)
    """
    return log_mel(wav, UNIVNET_MEL, use_complex)


def load_mel_norms(path) -> torch.Tensor:
    """The 80 ``mel_norms`` divisors of :func:`ar_mel` (see :func:`tortoise_xpu.data.load_mel_norms`)."""
    from tortoise_xpu.data import load_mel_norms as _load

    return _load(path)
