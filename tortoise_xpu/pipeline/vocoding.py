"""Vocoding stage: mel spectrograms (UnivNet) or AR hidden states (HiFi-GAN, streaming) to 24 kHz audio."""

from __future__ import annotations

from typing import Any

import torch

from tortoise_xpu.audio.rates import SAMPLE_RATE  # the output rate of both vocoders (re-exported)
from tortoise_xpu.pipeline.store import weight_dtype

__all__ = ["SAMPLE_RATE", "hifigan_decode", "vocode"]


def vocode(store: Any, ctx: Any, mel: torch.Tensor) -> torch.Tensor:
    """The UnivNet vocoder on a mel (1, 100, L): a (1, S) float32 CPU waveform (noise from ``ctx.generator``)."""
    with torch.no_grad(), store.on_device("vocoder", ctx) as vocoder:
        wav = vocoder.inference(mel.to(weight_dtype(vocoder)), generator=ctx.generator).float().cpu()
    return wav.reshape(1, -1)


def hifigan_decode(hifi: torch.nn.Module, hidden: torch.Tensor, ar_latent: torch.Tensor) -> torch.Tensor:
    """One streaming decode: the HiFi-GAN decoder (already on the device) on the AR hidden states
    ``hidden`` (1, n, D) so far, conditioned on the voice ``ar_latent`` (1, D); a 1-D float32
    waveform on the device covering all ``n`` codes (the stream keeps only its new part)."""
    with torch.no_grad():
        return hifi.inference(hidden.to(weight_dtype(hifi)), g=ar_latent).float().reshape(-1)
