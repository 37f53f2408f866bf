"""A synthetic voice: deterministic voice-like clips, so that ``bench`` and ``doctor`` need no voice files.

Each clip is 12 harmonics of a pitch drifting around 120 Hz, amplitude-modulated at a
syllable rate (~4 Hz), plus noise at -40 dB; peak 0.5.  They go through the whole conditioning
stage, as real clips do (mel features, and on backends without complex tensors the
real-valued STFT).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from tortoise_xpu.audio.rates import AR_SAMPLE_RATE

__all__ = ["VOICE_SECONDS", "synthetic_clip", "synthetic_voice"]

#: Lengths (seconds) of the two clips of :func:`synthetic_voice`: those of the clips the
#: performance anchor run used.
VOICE_SECONDS = (5.90, 5.19)


def synthetic_voice(seed: int = 0, seconds: Sequence[float] = VOICE_SECONDS,
                    rate: int = AR_SAMPLE_RATE) -> list[torch.Tensor]:
    """Deterministic voice-like clips, each ``(1, n)`` float32 at ``rate`` Hz, one per entry of ``seconds``."""
    g = torch.Generator().manual_seed(seed)
    clips = []
    for i, sec in enumerate(seconds):
        t = torch.arange(int(sec * rate), dtype=torch.float64) / rate
        f0 = 110.0 + 15.0 * i + 12.0 * torch.sin(2 * math.pi * 0.3 * t)
        phase = 2 * math.pi * torch.cumsum(f0, 0) / rate
        offsets = torch.rand(12, generator=g, dtype=torch.float64) * 2 * math.pi
        wave = sum(torch.sin(k * phase + offsets[k - 1]) / k for k in range(1, 13))
        envelope = 0.55 + 0.45 * torch.sin(2 * math.pi * 4.0 * t + float(offsets[0]))
        wave = wave * envelope + 0.01 * torch.randn(t.shape[0], generator=g, dtype=torch.float64)
        clips.append((0.5 * wave / wave.abs().max()).float().unsqueeze(0))
    return clips


def synthetic_clip(seconds: float = 2.5, sample_rate: int = AR_SAMPLE_RATE, seed: int = 0) -> torch.Tensor:
    """One clip ``(1, n)`` of the synthetic voice."""
    return synthetic_voice(seed, (seconds,), sample_rate)[0]
