"""CLVP: the contrastive text/speech-token model that ranks the autoregressive candidates.

Two bidirectional transformer encoders (``xencoder.XEncoder``) read the text tokens and the
speech codes; each sequence is mean-pooled, projected to a shared latent space and L2-normalised.
The score of a (text, codes) pair is their cosine similarity times ``exp(temperature)``.

At inference the original masks nothing: padding (the trailing zero after the text, the calm
tokens that replace everything after a stop token) is part of what the checkpoint was trained
to score.  Optional key-padding masks are offered for other uses; with a mask, the pooled
result equals the original's masked path (its training path with the random masking off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .xencoder import XEncoder, contrastive_loss, masked_mean


@dataclass(frozen=True)
class CLVPConfig:
    """Constructor values of the official ``clvp2.pth`` (defaults) or a test-sized variant.

    ``text_seq_len`` and ``speech_seq_len`` are kept for fidelity with the original constructor:
    with ``use_xformers=True`` (the only variant any checkpoint uses) the encoders take their
    positions from rotary embeddings and have no length table, so the values size nothing.
    """

    dim_text: int = 768
    dim_speech: int = 768
    dim_latent: int = 768
    num_text_tokens: int = 256
    text_enc_depth: int = 20
    text_seq_len: int = 350
    text_heads: int = 12
    num_speech_tokens: int = 8192
    speech_enc_depth: int = 20
    speech_heads: int = 12
    speech_seq_len: int = 430
    use_xformers: bool = True

    @classmethod
    def tiny(cls) -> "CLVPConfig":
        """About 0.7M parameters (most in the 8192-code embedding); same vocabularies as the official one."""
        return cls(dim_text=64, dim_speech=64, dim_latent=32, text_enc_depth=2, text_heads=2,
                   speech_enc_depth=2, speech_heads=2)


class _CheckpointedEncoder(nn.Module):
    """Holds the encoder under ``.transformer``, the name level of the original's wrapper class."""

    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        # Dropout 0.1 in the original applies in training only; inference is deterministic.
        self.transformer = XEncoder(dim, depth, heads, ff_mult=2, dropout=0.0, wrap_blocks=True)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.transformer(x, key_mask)


class CLVP(nn.Module):
    """Contrastive Language-Voice Pretrained scorer (state-dict compatible with ``clvp2.pth``)."""

    def __init__(self, config: CLVPConfig | None = None):
        super().__init__()
        self.config = config = config or CLVPConfig()
        if not config.use_xformers:
            raise ValueError("CLVP with use_xformers=False (absolute positions, no rotary) is not implemented: "
                             "no official checkpoint uses it")
        self.text_emb = nn.Embedding(config.num_text_tokens, config.dim_text)
        self.to_text_latent = nn.Linear(config.dim_text, config.dim_latent, bias=False)
        self.speech_emb = nn.Embedding(config.num_speech_tokens, config.dim_speech)
        self.to_speech_latent = nn.Linear(config.dim_speech, config.dim_latent, bias=False)
        self.text_transformer = _CheckpointedEncoder(config.dim_text, config.text_enc_depth, config.text_heads)
        self.speech_transformer = _CheckpointedEncoder(config.dim_speech, config.speech_enc_depth,
                                                       config.speech_heads)
        self.temperature = nn.Parameter(torch.tensor(1.0))

    def embed_text(self, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-length text latents (B, dim_latent) for token ids ``text`` (B, T).

        ``mask`` (B, T) bool marks real tokens; None uses every position (the pipeline's way).
        """
        h = self.text_transformer(self.text_emb(text), mask)
        return F.normalize(self.to_text_latent(masked_mean(h, mask)), p=2, dim=-1)

    def embed_speech(self, codes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-length speech latents (B, dim_latent) for speech codes ``codes`` (B, N)."""
        h = self.speech_transformer(self.speech_emb(codes), mask)
        return F.normalize(self.to_speech_latent(masked_mean(h, mask)), p=2, dim=-1)

    def similarity_matrix(self, text: torch.Tensor, speech_tokens: torch.Tensor, *,
                          text_mask: torch.Tensor | None = None,
                          speech_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled cosine similarity of every text row with every code row: (B_text, B_speech)."""
        text_latents = self.embed_text(text, text_mask)
        speech_latents = self.embed_speech(speech_tokens, speech_mask)
        return text_latents @ speech_latents.t() * self.temperature.exp()

    def forward(self, text: torch.Tensor, speech_tokens: torch.Tensor, return_loss: bool = False, *,
                text_mask: torch.Tensor | None = None,
                speech_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Score row i of ``text`` (B, T) against row i of ``speech_tokens`` (B, N): returns (B,).

        With ``return_loss`` it returns the symmetric contrastive (CLIP) loss over the batch instead.
        """
        text_latents = self.embed_text(text, text_mask)
        speech_latents = self.embed_speech(speech_tokens, speech_mask)
        scale = self.temperature.exp()
        if not return_loss:
            return (text_latents * speech_latents).sum(dim=-1) * scale
        return contrastive_loss(text_latents, speech_latents, scale)

    def score(self, text_tokens: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Rank candidates: the score of each row of ``codes`` (B, N) against its text, shape (B,).

        ``text_tokens`` is (1, T) — one text for every candidate, encoded once instead of B times —
        or (B, T), one text per candidate.  Equal to ``forward(text_tokens.expand(B, -1), codes)``.
        """
        if text_tokens.dim() != 2 or codes.dim() != 2:
            raise ValueError(f"expected 2-D text tokens and codes, got {tuple(text_tokens.shape)} "
                             f"and {tuple(codes.shape)}")
        if text_tokens.shape[0] not in (1, codes.shape[0]):
            raise ValueError(f"text batch {text_tokens.shape[0]} must be 1 or match the {codes.shape[0]} candidates")
        text_latents = self.embed_text(text_tokens)
        speech_latents = self.embed_speech(codes)
        return (text_latents * speech_latents).sum(dim=-1) * self.temperature.exp()
