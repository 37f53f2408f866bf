"""Latents stage: the AR model's final hidden states for the chosen candidates (diffusion's input)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ar_latents"]


def ar_latents(store: Any, ctx: Any, ar_latent: torch.Tensor, text: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """AR latents (n, L, D) float32 of ``codes`` (n, L) for ``text`` (1, T) and the voice ``ar_latent`` (1, D)."""
    dev = store.device
    with torch.no_grad(), store.on_device("autoregressive", ctx) as ar:
        n = codes.shape[0]
        return ar(ar_latent.to(dev).expand(n, -1), text.to(dev).expand(n, -1),
                  torch.tensor([text.shape[1]], device=dev), codes.to(dev),
                  torch.tensor([codes.shape[1] * ar.config.mel_length_compression], device=dev),
                  return_latent=True, clip_inputs=False).float()
