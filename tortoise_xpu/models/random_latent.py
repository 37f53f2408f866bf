"""Random-latent generators (RLG): a voice made up from Gaussian noise.

For the "random" voice the original draws a standard normal vector and pushes it through a small
StyleGAN-like mapping MLP trained to land on the manifold of real conditioning latents: five
equalised-learning-rate linear layers (fused bias + leaky ReLU, gain √2) and a plain linear head.
``rlg_auto.pth`` (1024 channels) makes the autoregressive conditioning latent and
``rlg_diffuser.pth`` (2048 channels) the diffusion one.

Equalised learning rate: the stored weight is the trained one divided by ``lr_mul``; at run time
it is multiplied by ``lr_mul / sqrt(in_features)`` and the bias by ``lr_mul``.  The stored tensors
are kept as they are so the checkpoints load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RLGConfig:
    """``channels`` is 1024 for ``rlg_auto.pth`` and 2048 for ``rlg_diffuser.pth``."""

    channels: int = 1024
    depth: int = 5
    lr_mul: float = 0.1
    negative_slope: float = 0.2

    @classmethod
    def tiny(cls) -> "RLGConfig":
        """A 16-channel generator for tests."""
        return cls(channels=16)


class EqualLinear(nn.Module):
    """Linear layer with run-time weight scaling, followed by the fused bias + leaky ReLU × √2."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, negative_slope: float = 0.2):
        super().__init__()
        # N(0, 1/lr_mul) like the original's randn / lr_mul, without arithmetic on meta tensors
        # (loading builds on the meta device, where a division imports torch._dynamo: ~1.6 s).
        self.weight = nn.Parameter(nn.init.normal_(torch.empty(out_dim, in_dim), std=1.0 / lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight * self.scale) + self.bias * self.lr_mul
        return F.leaky_relu(y, self.negative_slope) * math.sqrt(2.0)


class RandomLatentConverter(nn.Module):
    """Gaussian noise (B, channels) → a conditioning latent (B, channels)."""

    def __init__(self, config: RLGConfig | None = None):
        super().__init__()
        self.config = cfg = config or RLGConfig()
        self.channels = cfg.channels
        self.layers = nn.Sequential(
            *[EqualLinear(cfg.channels, cfg.channels, cfg.lr_mul, cfg.negative_slope) for _ in range(cfg.depth)],
            nn.Linear(cfg.channels, cfg.channels))

    @staticmethod
    def convert_state_dict(raw: dict) -> dict:
        """The RLG files are plain state dicts."""
        return raw

    def convert(self, noise: torch.Tensor) -> torch.Tensor:
        """Map given noise (B, channels) to latents."""
        return self.layers(noise)

    def forward(self, ref: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``ref.shape[0]`` random latents; like the original, ``ref`` only gives the batch size.

        The noise is drawn on the CPU from ``generator`` (the global CPU generator when None, as
        the original on a CPU) and then moved to the model's device, so one seed gives one voice
        on every backend.
        """
        p = self.layers[-1].weight
        noise = torch.randn(ref.shape[0], self.channels, generator=generator)
        return self.convert(noise.to(device=p.device, dtype=p.dtype))
