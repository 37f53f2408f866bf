"""The bidirectional transformer encoder used inside CLVP and CVVP.

The original builds these encoders from a vendored copy of lucidrains' *x-transformers* with a
handful of options switched on: rotary position embeddings, RMS norm, a GELU-gated (GLU)
feed-forward and pre-norm residuals, followed by a final ``LayerNorm``.  Only that subset is
written here.  Module nesting mirrors the original so the checkpoint names line up::

    attn_layers.layers.{2i}.0.0.g              RMS norm scale before attention i
    attn_layers.layers.{2i}.1[.wrap].to_q/to_k/to_v/to_out
    attn_layers.layers.{2i+1}.0.0.g            RMS norm scale before feed-forward i
    attn_layers.layers.{2i+1}.1[.wrap].net.0.proj / net.3
    attn_layers.rotary_pos_emb.inv_freq        (a persistent buffer, present in the checkpoints)
    norm.weight / norm.bias

CLVP's original wraps every block in a gradient-checkpointing shim, which adds a ``.wrap``
level to the names; ``wrap_blocks=True`` reproduces that level (it does nothing at run time).

Numerical habits kept from the original because the weights were trained with them:
  * RMS norm is ``x / clamp(||x|| * dim**-0.5, min=eps) * g`` (eps clamps the norm, it is not added).
  * The rotary rotation covers the first ``max(dim_head // 2, 32)`` channels of each head, and is
    applied to the values as well as to the queries and keys.
  * Attention is plain softmax(q k^T / sqrt(dim_head)) v; it is computed with
    ``scaled_dot_product_attention``, which is the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIM_HEAD = 64  # the original's default head width; no Tortoise model overrides it


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned per-channel gain ``g``."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.scale = dim ** -0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / rms.clamp(min=self.eps) * self.g


class RotaryEmbedding(nn.Module):
    """Rotary position angles for the first ``dim`` channels of every head.

    ``inv_freq`` is registered as a persistent buffer because the official checkpoints store it.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        # Computed on the CPU and moved to the ambient device (torch.device(...) context): on the meta
        # device, where checkpoints are loaded, the arithmetic would import torch._dynamo (~2 s).
        ambient = torch.empty(0).device
        self.register_buffer("inv_freq", self._frequencies(dim, torch.device("cpu")).to(ambient))

    @staticmethod
    def _frequencies(dim: int, device: torch.device | None) -> torch.Tensor:
        return 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device).float() / dim))

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each (seq_len, dim), for positions 0 .. seq_len-1, computed in float32.

        The angles are always float32, whatever dtype the model was cast to: bfloat16 cannot hold
        positions above 256 exactly, and an angle of hundreds of radians would be off by whole radians.
        The frequencies are the stored buffer's formula, recomputed so a cast buffer loses nothing.
        """
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        angles = torch.outer(pos, self._frequencies(self.dim, device))
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the leading ``cos.shape[-1]`` channels of ``t`` (..., T, D); the rest pass through."""
    width = cos.shape[-1]
    head, tail = t[..., :width], t[..., width:]
    first, second = head.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    head = head * cos.to(t.dtype) + rotated * sin.to(t.dtype)
    return torch.cat((head, tail), dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and an optional key-padding mask."""

    def __init__(self, dim: int, heads: int, dim_head: int = DIM_HEAD, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, T, D); ``key_mask`` (B, T) bool, True where a token may be attended to."""
        b, t, _ = x.shape

        def heads(proj: nn.Linear) -> torch.Tensor:
            return _rotate(proj(x).view(b, t, self.heads, -1).transpose(1, 2), *rotary)

        q, k, v = heads(self.to_q), heads(self.to_k), heads(self.to_v)
        # Masking keys only is enough: the original also masks padded *queries*, but those rows
        # never reach an unpadded output (they are masked as keys and dropped by the pooling).
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, t, -1))


class GEGLUProjection(nn.Module):
    """Linear to twice the width, then ``value * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class GLUFeedForward(nn.Module):
    """The gated feed-forward; ``net`` indices 0 and 3 carry the weights, as in the checkpoints."""

    def __init__(self, dim: int, mult: float, dropout: float = 0.0):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(GEGLUProjection(dim, inner), nn.Identity(), nn.Dropout(dropout),
                                 nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Wrapped(nn.Module):
    """Adds the ``.wrap`` name level of the original's checkpointing shim; a pass-through."""

    def __init__(self, wrap: nn.Module):
        super().__init__()
        self.wrap = wrap

    def forward(self, *args, **kwargs):
        return self.wrap(*args, **kwargs)


class EncoderLayers(nn.Module):
    """``depth`` pre-norm (attention, feed-forward) residual pairs sharing one rotary table."""

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: float, dropout: float = 0.0,
                 dim_head: int = DIM_HEAD, wrap_blocks: bool = False):
        super().__init__()
        self.rotary_pos_emb = RotaryEmbedding(max(dim_head // 2, 32))
        self.layers = nn.ModuleList()
        for _ in range(depth):
            for block in (SelfAttention(dim, heads, dim_head, dropout), GLUFeedForward(dim, ff_mult, dropout)):
                # [norms, block]: the original's third entry (the residual add) has no weights, and its
                # norm list holds two more (unused) slots that are None, so neither shows in the state dict.
                self.layers.append(nn.ModuleList([nn.ModuleList([RMSNorm(dim)]),
                                                  _Wrapped(block) if wrap_blocks else block]))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        rotary = self.rotary_pos_emb(x.shape[1], x.device)
        for norms, block in self.layers:
            block = block.wrap if isinstance(block, _Wrapped) else block
            h = norms[0](x)
            x = x + (block(h, rotary, key_mask) if isinstance(block, SelfAttention) else block(h))
        return x


class XEncoder(nn.Module):
    """Encoder layers followed by a final ``LayerNorm``: (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: float, dropout: float = 0.0,
                 dim_head: int = DIM_HEAD, wrap_blocks: bool = False):
        super().__init__()
        self.attn_layers = EncoderLayers(dim, depth, heads, ff_mult, dropout, dim_head, wrap_blocks)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_mask`` (B, T) bool, True for real tokens; None attends everywhere (the inference path)."""
        return self.norm(self.attn_layers(x, key_mask))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` (B, T, D) over T, counting only positions where ``mask`` (B, T) is True."""
    if mask is None:
        return x.mean(dim=1)
    # masked_fill rather than a multiply: padded rows may hold anything, even non-finite values
    total = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).to(x.dtype)


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss of matched rows of unit latents ``a`` and ``b`` (B, D) at logit ``scale``."""
    sim = a @ b.t() * scale
    labels = torch.arange(sim.shape[0], device=sim.device)
    return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2
