"""Vocoding stage: mel spectrograms to 24 kHz audio (UnivNet); streams use pipeline/stream_vocoder.py (HiFi-GAN)."""

from __future__ import annotations

from typing import Any

import torch

from tortoise_xpu.audio.rates import SAMPLE_RATE  # the output rate of both vocoders (re-exported)
from tortoise_xpu.pipeline.store import weight_dtype

__all__ = ["SAMPLE_RATE", "vocode"]


def vocode(store: Any, ctx: Any, mel: torch.Tensor) -> torch.Tensor:
    """The UnivNet vocoder on a mel (1, 100, L): a (1, S) float32 CPU waveform (noise from ``ctx.generator``)."""
    with torch.no_grad(), store.on_device("vocoder", ctx) as vocoder:
        wav = vocoder.inference(mel.to(weight_dtype(vocoder)), generator=ctx.generator).float().cpu()
    return wav.reshape(1, -1)
