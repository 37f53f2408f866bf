"""Building blocks shared by several Tortoise networks.

Parameter names (``norm``, ``qkv``, ``proj_out``, ``relative_pos_embeddings.relative_attention_bias``)
follow the official checkpoints.  Two numerical habits of the original are kept on
purpose because the checkpoints were trained with them: attention masks are applied
*after* the softmax (multiplying the weights), and q and k are each scaled by
``ch ** -0.25`` before the product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (output convs that start as identity residuals)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (half-precision safe)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The affine parameters go to float32 too: a model cast to float16/bfloat16 holds them in
        # that dtype, and group_norm refuses mixed dtypes on the CPU (tests/parity found it).
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """The group count the original derives from the channel count: 32, or 16/8 for narrow layers."""
    groups = 8 if channels <= 16 else 16 if channels <= 64 else 32
    while channels % groups:
        groups //= 2
    if groups <= 2:
        raise ValueError(f"cannot build a GroupNorm for {channels} channels")
    return GroupNorm32(groups, channels)


class RelativePositionBias(nn.Module):
    """T5-style bucketed relative position bias added to attention logits."""

    def __init__(self, scale: float, causal: bool = False, num_buckets: int = 32, max_distance: int = 128,
                 heads: int = 8):
        super().__init__()
        self.scale = scale
        self.causal = causal
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)
        # (key, bias) of the last bias built: one (1, H, I, J) tensor, replaced whenever the length,
        # device, dtype or table (its in-place version counter) changes
        self._cached: tuple | None = None

    def bias(self, i: int, j: int, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The scaled bias for I queries and J keys, (1, H, I, J) contiguous, in ``dtype`` (default the table's).

        The bias depends on key - query only, so each head's (I, J) matrix is Toeplitz: it is built
        from the I + J - 1 diagonals (bucketed and looked up once) by a sliding window, with one
        write of the full tensor and no per-element gather (a gather over 4.7M pairs per layer was
        half of a 2,176-frame diffusion step on the CPU).  The table is scaled before rounding.
        Under ``no_grad`` the last result is kept and returned again for the same request (the
        denoising steps of one utterance all ask for the same length); callers must not modify it.
        """
        dtype = dtype or self.relative_attention_bias.weight.dtype
        key = (i, j, str(device), dtype, self.relative_attention_bias.weight._version)
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]  # a sampler's every step asks for the same length: built once
        rel = torch.arange(-(i - 1), j, device=device)  # key - query of each diagonal
        buckets = _relative_buckets(rel, self.num_buckets, self.max_distance, self.causal)
        table = self.relative_attention_bias.weight * self.scale  # (buckets, H)
        diagonals = table.to(dtype or table.dtype)[buckets].t().contiguous()  # (H, I + J - 1)
        # window a of the unfold is [h, a, k] = diagonals[h, a + k]; query q needs a = i - 1 - q
        out = diagonals.unfold(1, j, 1).flip(1).contiguous().unsqueeze(0)
        if not torch.is_grad_enabled():  # inference only: a cached tensor must not carry a graph
            self._cached = (key, out)
        return out

    def forward(self, qk: torch.Tensor) -> torch.Tensor:
        """``qk``: (B, H, I, J) attention logits; returns them with the bias added."""
        i, j = qk.shape[-2:]
        return qk + self.bias(i, j, qk.device, qk.dtype)


def _relative_buckets(rel: torch.Tensor, num_buckets: int, max_distance: int, causal: bool) -> torch.Tensor:
    """T5's bucketing of relative positions ``rel`` (key minus query)."""
    n = -rel
    buckets = num_buckets
    ret = torch.zeros_like(n)
    if causal:
        n = n.clamp(min=0)
    else:
        buckets //= 2
        ret = ret + (n < 0).long() * buckets
        n = n.abs()
    exact = buckets // 2
    # log-spaced buckets past `exact`; clamp n to 1 first so log() never sees 0 (those use the exact branch)
    large = exact + (torch.log(n.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                     * (buckets - exact)).long()
    large = large.clamp(max=buckets - 1)
    return ret + torch.where(n < exact, n, large)


#: Longest sequence :func:`qkv_attention` runs as explicit products when asked to (``matmul=True``):
#: past it writing and re-reading the (H, T, T) weights costs more than SDPA's fused kernels save
#: (a 6 s AR conditioning clip, 2 x 16 heads x 517 frames, float32: 33 ms explicit against 17 ms
#: for SDPA on a 2-core Xeon; at the diffusion's 174 frames the two are within 20 % either way).
MATMUL_ATTENTION_MAX_LEN = 256


def qkv_attention(qkv: torch.Tensor, n_heads: int, mask: torch.Tensor | None = None,
                  rel_pos: RelativePositionBias | None = None, matmul: bool = False) -> torch.Tensor:
    """Multi-head attention over a fused (B, H*3*C, T) qkv tensor (heads split before q/k/v).

    ``mask`` (B, T) multiplies the softmax weights, as the checkpoints were trained.  Without a
    mask (every caller but training) this is ``F.scaled_dot_product_attention`` with the relative
    position bias as an additive mask: the same softmax((q k^T) / sqrt(C) + bias) v as the original's
    einsum pair (which scaled q and k by C^-1/4 each), without materialising the (T, T) weights in
    memory where the backend has a fused kernel (a 2,176-frame diffusion step: 300 MB per layer).
    ``matmul``: up to :data:`MATMUL_ATTENTION_MAX_LEN` positions, two batched products and a float32
    softmax instead (the CPU: 0.79 ms against SDPA's 1.71 ms for 16 heads x 174 frames in bfloat16).
    """
    b, width, t = qkv.shape
    ch = width // (3 * n_heads)
    if mask is None:
        # (B, H, T, 3C) with unit-stride channels, so that fused kernels (the CPU's flash attention
        # included) run: they refuse anything else and fall back to the (T, T) math path.  A
        # channels-last qkv (channel stride 1) is that already, as a view; a plain one is copied once.
        heads_last = qkv.reshape(b, n_heads, ch * 3, t).transpose(-1, -2)
        channels_last = qkv.stride(1) == 1
        explicit = matmul and t <= MATMUL_ATTENTION_MAX_LEN
        # the explicit products want dense heads (a strided k^T is copied per product otherwise)
        q, k, v = (heads_last if channels_last and not explicit else heads_last.contiguous()).split(ch, dim=-1)
        bias = rel_pos.bias(t, t, qkv.device, q.dtype) if rel_pos is not None else None
        if explicit:
            w = torch.matmul(q * ch ** -0.5, k.transpose(-1, -2))
            if bias is not None:
                w = w + bias
            out = torch.matmul(torch.softmax(w.float(), dim=-1).to(v.dtype), v)
        else:
            out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=bias,
                                                 scale=ch ** -0.5)
        if channels_last:  # (B, H, T, C) -> (B, T, H*C) rows, seen as a channels-last (B, H*C, T)
            return out.permute(0, 2, 1, 3).reshape(b, t, -1).transpose(1, 2)
        return out.transpose(-1, -2).reshape(b, -1, t)
    q, k, v = qkv.reshape(b * n_heads, ch * 3, t).split(ch, dim=1)
    scale = ch ** -0.25
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    if rel_pos is not None:
        w = rel_pos(w.reshape(b, n_heads, t, t)).reshape(b * n_heads, t, t)
    w = torch.softmax(w.float(), dim=-1).type(w.dtype)
    if mask is not None:
        w = w * mask.repeat(n_heads, 1).unsqueeze(1).to(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, t)


class AttentionBlock(nn.Module):
    """Pre-norm self-attention over the last axis of a (B, C, ...) feature map, with a residual."""

    #: Attend with explicit products up to MATMUL_ATTENTION_MAX_LEN positions (the CPU's choice,
    #: set by ``DiffusionTts.use_packed_convs``); SDPA otherwise.
    matmul_attention: bool = False

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 do_checkpoint: bool = True, relative_pos_embeddings: bool = False):
        super().__init__()
        del do_checkpoint  # training-only in the original; kept for signature compatibility
        self.channels = channels
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))
        # The original sizes the bias table by the *constructor's* num_heads, not the derived one.
        self.relative_pos_embeddings = (
            RelativePositionBias(scale=(channels // self.num_heads) ** 0.5, causal=False, heads=num_heads,
                                 num_buckets=32, max_distance=64)
            if relative_pos_embeddings else None
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        if x.dim() == 4 and mask is None:
            # (B, C, 1, T) channels-last, the CPU's packed path (DiffusionTts.use_packed_convs): its
            # GroupNorm and convolutions keep that layout; a 3-D view of it would not.
            qkv = self.qkv(self.norm(x)).flatten(2)
            h = qkv_attention(qkv, self.num_heads, None, self.relative_pos_embeddings, matmul=self.matmul_attention)
            return x + self.proj_out(h.unsqueeze(2))
        x = x.reshape(b, c, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, mask, self.relative_pos_embeddings,
                          matmul=self.matmul_attention)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by ``factor``, optionally followed by a k=5 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None, factor: int = 4):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv1d(channels, out_channels or channels, 5, padding=2) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """Strided conv (or average pooling) downsampling by ``factor``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None, factor: int = 4,
                 ksize: int = 5, pad: int = 2):
        super().__init__()
        self.op = (nn.Conv1d(channels, out_channels or channels, ksize, stride=factor, padding=pad) if use_conv
                   else nn.AvgPool1d(kernel_size=factor, stride=factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def fold_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs in a state dict by the plain weight they stand for.

    ``torch.nn.utils.weight_norm`` stores ``X.weight_g`` (one gain per slice of dim 0) and
    ``X.weight_v`` (the direction); the newer parametrization stores the same two tensors as
    ``X.parametrizations.weight.original0`` / ``original1``.  Either becomes
    ``X.weight = g * v / ||v||`` with the norm taken over every dim but 0, computed in float32
    (then cast back) so half-precision checkpoints fold without losing digits.  Every other
    entry is passed through unchanged and the key order is kept.
    """
    pairs = {"weight_g": "weight_v", "parametrizations.weight.original0": "parametrizations.weight.original1"}

    def stem_of(key: str, suffix: str) -> str | None:
        # "conv.weight_g" -> "conv.", a top-level "weight_g" -> ""
        return key[: -len(suffix)] if key == suffix or key.endswith("." + suffix) else None

    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for g_suffix, v_suffix in pairs.items():
            stem = stem_of(key, g_suffix)
            if stem is not None and stem + v_suffix in state_dict:
                v = state_dict[stem + v_suffix]
                norm = torch.linalg.vector_norm(v.float(), dim=tuple(range(1, v.dim())), keepdim=True)
                out[stem + "weight"] = (v.float() * (value.float() / norm)).to(v.dtype)
                break
            stem = stem_of(key, v_suffix)
            if stem is not None and stem + g_suffix in state_dict:
                break  # folded together with its gain
        else:
            out[key] = value
    return out
