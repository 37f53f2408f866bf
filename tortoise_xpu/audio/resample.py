"""Band-limited resampling in plain torch (windowed sinc, polyphase conv1d).

The numbers are those of ``torchaudio.functional.resample`` with its defaults
(``sinc_interp_hann``, ``lowpass_filter_width=6``, ``rolloff=0.99``): the
diffusion conditioning of the checkpoints was computed with it (22.05 -> 24 kHz),
so the same kernel gives the same latents.  The filter taps are computed in float32
on the CPU in torchaudio's order of operations, which makes the output equal to
torchaudio's on the CPU (tests/test_audio_resample.py), down to the round-off that
fills the empty band above the old Nyquist frequency.

How it works: with ``g = gcd(orig, new)``, ``orig/g`` input samples map to
``new/g`` output samples.  Each of the ``new/g`` output phases has its own
low-pass-interpolation kernel; one strided ``conv1d`` computes all phases for
every block of input, and the phases are then interleaved.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from tortoise_xpu.backends.markers import cpu_route

__all__ = ["resample", "sinc_resample_kernel"]

# For the portability audit (backends/audit.py): the kernel is deliberate host work.
_HOST_KERNEL = "resampling kernel: built in float32 on the host (torchaudio's arithmetic), then moved"


@lru_cache(maxsize=32)
@cpu_route(_HOST_KERNEL)
def _kernel(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[torch.Tensor, int]:
    # float32 with torchaudio's order of operations: the rounding of the taps is visible downstream.
    # After 22.05 -> 24 kHz the band above 10.9 kHz holds only round-off, and the UnivNet mel's log
    # of it moved by 1e-2 when these taps were computed in float64 instead.
    f32 = torch.float32
    cutoff = min(orig, new) * rolloff  # in units of the reduced rates: below both Nyquists
    half_span = math.ceil(lowpass_filter_width * orig / cutoff)  # input samples each side
    # Time of each input tap relative to each output phase, in input periods, scaled to the cutoff.
    taps = torch.arange(-half_span, half_span + orig, dtype=f32)[None, None] / orig
    phases = torch.arange(0, -new, -1, dtype=f32)[:, None, None] / new
    x = ((phases + taps) * cutoff).clamp_(-lowpass_filter_width, lowpass_filter_width)
    hann = torch.cos(x * math.pi / lowpass_filter_width / 2) ** 2
    x = x * math.pi
    sinc = torch.where(x == 0, torch.tensor(1.0, dtype=f32), torch.sin(x) / x)
    return sinc * (hann * (cutoff / orig)), half_span


def sinc_resample_kernel(orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99,
                         device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                         ) -> tuple[torch.Tensor, int]:
    """The polyphase kernel ``(new/g, 1, 2*width + orig/g)`` and ``width`` for a rate pair.

    ``g`` is ``gcd(orig_freq, new_freq)``.  Built once per rate pair in float32 on the
    CPU (the same numbers on every device), then cast and moved.
    """
    g = math.gcd(int(orig_freq), int(new_freq))
    kernel, width = _kernel(int(orig_freq) // g, int(new_freq) // g, int(lowpass_filter_width), float(rolloff))
    with cpu_route(_HOST_KERNEL):  # cast on the host
        kernel = kernel.to(dtype)
    return kernel.to(device), width


#: Largest step x phases (the reduced rate ratio) resampled: every pair of standard rates from 8 kHz to
#: 384 kHz is far below it (384000 -> 22050 Hz is 2560 x 147), and it keeps the filter under ~100 MB.
MAX_REDUCED_RATIO_PRODUCT = 4_000_000


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """Resample the last dimension of ``waveform`` from ``orig_freq`` to ``new_freq`` Hz.

    Args:
        waveform: float tensor ``(..., time)`` on any device.
        orig_freq, new_freq: integer sample rates.
        lowpass_filter_width: zero crossings of the sinc on each side (sharper with more).
        rolloff: cutoff as a fraction of the lower Nyquist frequency.

    Returns:
        ``(..., ceil(time * new_freq / orig_freq))``, same dtype and device.
    """
    if int(orig_freq) != orig_freq or int(new_freq) != new_freq or orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_freq} and {new_freq}")
    if not waveform.is_floating_point():
        raise TypeError(f"resample needs a floating-point waveform, got {waveform.dtype}")
    if orig_freq == new_freq:
        return waveform
    g = math.gcd(int(orig_freq), int(new_freq))
    step, phases = int(orig_freq) // g, int(new_freq) // g
    if step * phases > MAX_REDUCED_RATIO_PRODUCT:
        # The kernel has phases x (step + 2 width) taps: 44101 -> 22050 Hz would need terabytes.
        raise ValueError(f"cannot resample {orig_freq} Hz to {new_freq} Hz: the rates reduce to "
                         f"{step}:{phases}, which needs an impractically large filter; convert the audio "
                         "to a standard rate (e.g. 22050, 24000, 44100 or 48000 Hz) first")
    kernel, width = sinc_resample_kernel(orig_freq, new_freq, lowpass_filter_width, rolloff,
                                         device=waveform.device, dtype=waveform.dtype)
    lead = waveform.shape[:-1]
    length = waveform.shape[-1]
    flat = waveform.reshape(-1, 1, length)
    padded = F.pad(flat, (width, width + step))
    blocks = F.conv1d(padded, kernel, stride=step)  # (n, phases, blocks)
    out = blocks.transpose(1, 2).reshape(flat.shape[0], -1)
    out_len = -(-phases * length // step)  # ceil(length * new / orig) in integers
    return out[:, :out_len].reshape(*lead, -1)
