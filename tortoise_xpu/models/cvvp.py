"""CVVP: the contrastive voice/speech model that can join CLVP in ranking candidates.

One side reads a conditioning mel (a reference clip of the target voice, 80 bands, 22.05 kHz
frames), the other the candidate's speech codes.  Each side runs a transformer encoder
(``xencoder.XEncoder``), a small conv-attention-conv "pre-combiner", and a mean over time; the
score is the cosine similarity of the projected latents times ``exp(temperature)``.

The original is off by default (``cvvp_amount=0``); when used, its score is averaged over the
reference clips and blended with CLVP's: ``amount * cvvp + (1 - amount) * clvp``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttentionBlock
from .xencoder import XEncoder, contrastive_loss


@dataclass(frozen=True)
class CVVPConfig:
    """Constructor values of the official ``cvvp.pth`` (defaults) or a test-sized variant.

    ``dropout``, ``cond_mask_percentage`` and ``speech_mask_percentage`` only matter in training
    (the original draws random pooling masks there); inference ignores them.  ``mel_codes=None``
    builds the variant that reads mels (a conv embedding) instead of codes on the speech side.
    """

    model_dim: int = 512
    transformer_heads: int = 8
    dropout: float = 0.0
    conditioning_enc_depth: int = 8
    cond_mask_percentage: float = 0.0
    mel_channels: int = 80
    mel_codes: int | None = 8192
    speech_enc_depth: int = 8
    speech_mask_percentage: float = 0.0
    latent_multiplier: int = 1

    @classmethod
    def tiny(cls) -> "CVVPConfig":
        """About 0.7M parameters (most in the 8192-code embedding)."""
        return cls(model_dim=64, transformer_heads=2, conditioning_enc_depth=1, speech_enc_depth=1)


class _CollapsingEncoder(nn.Module):
    """Transformer encoder, then conv -> attention -> conv over time, then a mean over time."""

    def __init__(self, model_dim: int, output_dim: int, heads: int, depth: int):
        super().__init__()
        self.transformer = XEncoder(model_dim, depth, heads, ff_mult=1)
        self.pre_combiner = nn.Sequential(nn.Conv1d(model_dim, output_dim, 1),
                                          AttentionBlock(output_dim, num_heads=heads, do_checkpoint=False),
                                          nn.Conv1d(output_dim, output_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, model_dim) -> (B, output_dim)."""
        h = self.transformer(x).transpose(1, 2)
        return self.pre_combiner(h).mean(dim=-1)


class _CodeEmbedding(nn.Module):
    """Code embedding under the ``emb`` name of the original's wrapper; returns (B, N, D)."""

    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(num_codes, dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.emb(codes)


class CVVP(nn.Module):
    """Contrastive Voice-Voice Pretrained scorer (state-dict compatible with ``cvvp.pth``)."""

    def __init__(self, config: CVVPConfig | None = None):
        super().__init__()
        self.config = config = config or CVVPConfig()
        dim = config.model_dim
        latent_dim = config.latent_multiplier * dim
        self.temperature = nn.Parameter(torch.tensor(1.0))
        # Two stride-2 convs: the conditioning mel is encoded at a quarter of its frame rate.
        self.cond_emb = nn.Sequential(nn.Conv1d(config.mel_channels, dim // 2, kernel_size=5, stride=2, padding=2),
                                      nn.Conv1d(dim // 2, dim, kernel_size=3, stride=2, padding=1))
        self.conditioning_transformer = _CollapsingEncoder(dim, dim, config.transformer_heads,
                                                           config.conditioning_enc_depth)
        self.to_conditioning_latent = nn.Linear(latent_dim, latent_dim, bias=False)
        if config.mel_codes is None:
            self.speech_emb = nn.Conv1d(config.mel_channels, dim, kernel_size=5, padding=2)
        else:
            self.speech_emb = _CodeEmbedding(config.mel_codes, dim)
        self.speech_transformer = _CollapsingEncoder(dim, latent_dim, config.transformer_heads,
                                                     config.speech_enc_depth)
        self.to_speech_latent = nn.Linear(latent_dim, latent_dim, bias=False)

    def embed_conditioning(self, mel_cond: torch.Tensor) -> torch.Tensor:
        """Unit-length voice latents (B, latent) for conditioning mels (B, mel_channels, T)."""
        h = self.cond_emb(mel_cond).transpose(1, 2)
        return F.normalize(self.to_conditioning_latent(self.conditioning_transformer(h)), p=2, dim=-1)

    def embed_speech(self, mel_input: torch.Tensor) -> torch.Tensor:
        """Unit-length speech latents (B, latent) for codes (B, N) (or mels (B, C, T) when mel_codes=None)."""
        h = self.speech_emb(mel_input)
        if isinstance(self.speech_emb, nn.Conv1d):
            h = h.transpose(1, 2)
        return F.normalize(self.to_speech_latent(self.speech_transformer(h)), p=2, dim=-1)

    def forward(self, mel_cond: torch.Tensor, mel_input: torch.Tensor, return_loss: bool = False) -> torch.Tensor:
        """Score row i of ``mel_cond`` (B, C, T) against row i of ``mel_input`` (B, N): returns (B,).

        With ``return_loss`` it returns the symmetric contrastive loss over the batch instead.
        """
        cond = self.embed_conditioning(mel_cond)
        speech = self.embed_speech(mel_input)
        scale = self.temperature.exp()
        if not return_loss:
            return (cond * speech).sum(dim=-1) * scale
        return contrastive_loss(cond, speech, scale)

    def score(self, cond_mels: torch.Tensor | Sequence[torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
        """Rank candidates: each row of ``codes`` (B, N) scored against the voice, averaged over clips.

        ``cond_mels`` is (K, C, T) — K reference clips of one length — or a sequence of (C, T) /
        (1, C, T) mels of any lengths.  Every clip and every candidate is encoded once; the result
        (B,) equals the original pipeline's mean over clips of ``forward(clip.repeat(B, 1, 1), codes)``.
        """
        if isinstance(cond_mels, torch.Tensor):
            if cond_mels.dim() != 3:
                raise ValueError(f"expected conditioning mels (K, C, T), got {tuple(cond_mels.shape)}")
            cond = self.embed_conditioning(cond_mels)
        else:
            if len(cond_mels) == 0:
                raise ValueError("no conditioning mels given")
            cond = torch.cat([self.embed_conditioning(m if m.dim() == 3 else m.unsqueeze(0)) for m in cond_mels])
        speech = self.embed_speech(codes)
        return (cond @ speech.t()).mean(dim=0) * self.temperature.exp()
