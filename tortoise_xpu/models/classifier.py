"""The tortoise-detect classifier: does a 24 kHz clip come from Tortoise?

A small 1-D convolutional encoder reads the raw waveform (one input channel): a conv, then
``depth`` stages of residual blocks each ending in a strided conv that downsamples by
``downsample_factor`` and doubles the channels, a projection to ``embedding_dim``, a few
self-attention blocks, and the features of the first time step.  A linear head gives the two
class logits; class 0 is "made by Tortoise".

Module names mirror ``classifier.pth`` (``enc.init.0``, ``enc.res.{n}.in_layers/out_layers``,
``enc.res.{n}.op``, ``enc.final.{0,2}``, ``enc.attn.{n}``, ``head``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttentionBlock, Downsample, normalization, zero_module

# The original command line (is_this_from_tortoise.py) classifies at most the first 220000
# samples (~9.2 s at 24 kHz) of a clip; classify_audio_clip itself does not crop.
MAX_CLIP_SAMPLES = 220000
SAMPLE_RATE = 24000


@dataclass(frozen=True)
class ClassifierConfig:
    """Constructor values; the defaults are the official ``classifier.pth`` ones."""

    classes: int = 2
    spec_dim: int = 1
    embedding_dim: int = 512
    depth: int = 5
    downsample_factor: int = 4
    resnet_blocks: int = 2
    attn_blocks: int = 4
    num_attn_heads: int = 4
    base_channels: int = 32
    dropout: float = 0.0
    kernel_size: int = 5
    distribute_zero_label: bool = False  # training-only label smoothing; kept for completeness

    @classmethod
    def tiny(cls) -> "ClassifierConfig":
        """A small classifier for tests (two stages of ×4 downsampling, 32-d embedding)."""
        return cls(embedding_dim=32, depth=2, base_channels=8, attn_blocks=2, num_attn_heads=2)


class ResBlock(nn.Module):
    """Pre-norm residual block: (norm → SiLU → conv) twice, the second conv zero-initialised.

    The padding rule is the original's: 1 for kernel 3, otherwise 2 (right for kernel 5 only).
    """

    def __init__(self, channels: int, dropout: float = 0.0, kernel_size: int = 3):
        super().__init__()
        pad = 1 if kernel_size == 3 else 2
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv1d(channels, channels, kernel_size, padding=pad))
        self.out_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(nn.Conv1d(channels, channels, kernel_size, padding=pad)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out_layers(self.in_layers(x))


class AudioMiniEncoder(nn.Module):
    """Waveform or spectrogram (B, spec_dim, T) → embedding (B, embedding_dim) of the first frame."""

    def __init__(self, spec_dim: int, embedding_dim: int, base_channels: int = 128, depth: int = 2,
                 resnet_blocks: int = 2, attn_blocks: int = 4, num_attn_heads: int = 4, dropout: float = 0.0,
                 downsample_factor: int = 2, kernel_size: int = 3):
        super().__init__()
        self.init = nn.Sequential(nn.Conv1d(spec_dim, base_channels, 3, padding=1))
        ch = base_channels
        res: list[nn.Module] = []
        for _ in range(depth):
            res += [ResBlock(ch, dropout, kernel_size) for _ in range(resnet_blocks)]
            res.append(Downsample(ch, use_conv=True, out_channels=ch * 2, factor=downsample_factor))
            ch *= 2
        self.res = nn.Sequential(*res)
        self.final = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv1d(ch, embedding_dim, 1))
        self.attn = nn.Sequential(*[AttentionBlock(embedding_dim, num_attn_heads) for _ in range(attn_blocks)])
        self.dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(self.final(self.res(self.init(x))))
        return h[:, :, 0]


class AudioMiniEncoderWithClassifierHead(nn.Module):
    """The encoder plus a linear head: (B, spec_dim, T) → class logits (B, classes)."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = cfg = config or ClassifierConfig()
        self.enc = AudioMiniEncoder(cfg.spec_dim, cfg.embedding_dim, base_channels=cfg.base_channels,
                                    depth=cfg.depth, resnet_blocks=cfg.resnet_blocks, attn_blocks=cfg.attn_blocks,
                                    num_attn_heads=cfg.num_attn_heads, dropout=cfg.dropout,
                                    downsample_factor=cfg.downsample_factor, kernel_size=cfg.kernel_size)
        self.head = nn.Linear(cfg.embedding_dim, cfg.classes)

    @staticmethod
    def convert_state_dict(raw: dict) -> dict:
        """``classifier.pth`` is a plain state dict."""
        return raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))

    @torch.no_grad()
    def classify(self, clip: torch.Tensor, max_samples: int | None = None) -> float:
        """Probability that a 24 kHz mono clip was generated by Tortoise (softmax of class 0).

        ``clip`` is (samples,) or (1, samples) as ``load_audio`` returns it; it becomes one
        (1, 1, samples) batch, as in the original's ``classify_audio_clip``.  ``max_samples``
        crops first (the original command line uses :data:`MAX_CLIP_SAMPLES`).
        """
        if clip.dim() == 2 and clip.shape[0] == 1:
            clip = clip[0]
        if clip.dim() != 1:
            raise ValueError(f"expected one mono clip of shape (samples,) or (1, samples), got {tuple(clip.shape)}")
        if max_samples is not None:
            clip = clip[:max_samples]
        p = self.head.weight
        logits = self(clip.to(device=p.device, dtype=p.dtype).view(1, 1, -1))
        return F.softmax(logits.float(), dim=-1)[0, 0].item()
