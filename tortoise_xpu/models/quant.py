"""Weight-only int8 for the autoregressive model's linears (the Policy's ``ar_int8``).

A decode step of the AR model reads every GPT-2 weight once per generated code: at batch 1 its
speed is the speed of reading 1.44 GiB of float32 weights (30 blocks x 4 linears, plus the mel
head).  Stored as int8 with one float scale per output channel, the same step reads a quarter of
the bytes.  :func:`quantize_ar_int8` replaces each GPT-2 ``Conv1D`` and the mel head with an
:class:`Int8Linear`:

* weights: symmetric per-output-channel quantisation, ``q = round(w / s)``, ``s = max|w_row| / 127``
  (the rounding error of a weight is at most s/2, i.e. 0.4 % of its row's largest weight);
* product: ``torch._weight_int8pack_mm`` (int8 weights, bfloat16 activations, per-channel scales,
  converted in registers: nothing is dequantised in memory), the fastest of the int8 paths torch
  offers on the CPU here (docs/performance.md: quantize_dynamic, _int_mm with per-row activation
  scales and dequantise-then-matmul measured against it);
* everything else stays float32: embeddings, LayerNorms, the residual stream, attention and its
  KV cache, the conditioning encoder, the logit processing.

The error against float32 is measured by the parity test (tests/test_quant.py: greedy codes and
top-k overlap of the logits) and written down in docs/performance.md.  The state dict of a
quantised model is not the checkpoint's any more (``q``/``scale`` buffers): quantise after loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATION_DTYPE", "Int8Linear", "QuantReport", "int8_kernel_available", "quantize_ar_int8",
           "quantize_per_channel"]

#: Activations are cast to this dtype for the int8 product (the kernel's fast path on the CPU).
ACTIVATION_DTYPE = torch.bfloat16


def int8_kernel_available() -> bool:
    """Whether this torch has the weight-only int8 product (``torch._weight_int8pack_mm``, torch >= 2.3)."""
    return hasattr(torch, "_weight_int8pack_mm")


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (int8 (out, in), float32 scale (out,)), symmetric per output channel."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


class Int8Linear(nn.Module):
    """``y = x @ (q * scale).T + bias``: int8 weight (out, in), float scale per output channel.

    Inputs of any float dtype and shape (..., in); the output has the input's dtype.
    ``one_thread``: run the int8 product on one intra-op thread (torch's thread count is set to 1
    around the call and restored; 0.2 us).  On a busy 2-core machine the kernel ran 1.5-3x faster
    so than on two threads (docs/performance.md); the Policy measures which (``ar_int8_one_thread``).
    The switch is process-wide for that moment: other threads' torch ops see one thread meanwhile.
    """

    one_thread: bool = False

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if q.dtype != torch.int8 or q.dim() != 2 or scale.shape != (q.shape[0],):
            raise ValueError("Int8Linear needs an int8 (out, in) weight and one scale per output channel")
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("q", q.contiguous())
        self.register_buffer("scale", scale.float())
        # the kernel wants the scales in the activations' dtype; kept once, not cast per call
        self.register_buffer("scale_act", scale.to(ACTIVATION_DTYPE))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "Int8Linear":
        """Quantise a float (out, in) weight (``nn.Linear`` layout)."""
        q, scale = quantize_per_channel(weight)
        return cls(q.to(weight.device), scale.to(weight.device), bias)

    def dequantized(self) -> torch.Tensor:
        """The float32 (out, in) weight this layer computes with (for tests and error reports)."""
        return self.q.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if int8_kernel_available():
            act = rows.to(ACTIVATION_DTYPE).contiguous()
            threads = torch.get_num_threads() if self.one_thread else 1
            if threads > 1:
                torch.set_num_threads(1)
                try:
                    y = torch._weight_int8pack_mm(act, self.q, self.scale_act).float()
                finally:
                    torch.set_num_threads(threads)
            else:
                y = torch._weight_int8pack_mm(act, self.q, self.scale_act).float()
        else:  # an old torch: the same numbers from a float copy (slow, but right)
            y = F.linear(rows.float(), self.dequantized())
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


@dataclass(frozen=True)
class QuantReport:
    """What :func:`quantize_ar_int8` replaced: layer count and weight bytes before/after."""

    layers: int
    float_bytes: int
    int8_bytes: int


@torch.no_grad()
def quantize_ar_int8(model: nn.Module, one_thread: bool = False) -> QuantReport:
    """Replace the GPT-2 linears and the mel head of a ``UnifiedVoice`` by :class:`Int8Linear`, in place.

    The GPT-2 ``Conv1D`` weights are stored (in, out); they are quantised as (out, in).  Weight-first
    products are switched off first (an int8 layer has its own kernel).  ``one_thread``: see
    :class:`Int8Linear`.  Idempotent (a second call only sets ``one_thread``).
    """
    for m in model.modules():
        if isinstance(m, Int8Linear):
            m.one_thread = one_thread
    from tortoise_xpu.models.autoregressive import Conv1D

    if hasattr(model, "use_weight_first_linears"):
        model.use_weight_first_linears(False)
    layers, before, after = 0, 0, 0
    targets: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.gpt.modules():
        for name, child in parent.named_children():
            if isinstance(child, Conv1D):
                targets.append((parent, name, child))
    if isinstance(model.mel_head, nn.Linear):
        targets.append((model, "mel_head", model.mel_head))
    for parent, name, child in targets:
        weight = child.weight.t() if isinstance(child, Conv1D) else child.weight  # -> (out, in)
        new = Int8Linear.from_weight(weight, child.bias)
        new.one_thread = one_thread
        before += weight.numel() * weight.element_size()
        after += new.q.numel() + new.scale.numel() * 4
        setattr(parent, name, new)
        layers += 1
    return QuantReport(layers, before, after)
