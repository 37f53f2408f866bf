"""Weights prepacked into oneDNN's blocked layout, for the CPU's matrix products and convolutions.

``F.linear`` and ``F.conv1d`` on a CPU hand a plain (out, in) weight to oneDNN, which re-lays it
into its blocked format on every call: for the few-row products of AR decoding that re-layout
costs as much as the product itself.  Packing once, at load time, and calling oneDNN's pointwise
primitives directly (the ops Inductor's CPU freezing pass uses, ``torch.ops.mkldnn``) measured on
a 2-core Zen 4 (docs/performance.md, a 1024 -> 4096 weight, 30 distinct weights so none stays in
cache): bfloat16 at 16 rows 0.46 ms against 0.91 ms for ``F.linear``; float32 at 16 rows 0.92 ms
against 1.66 ms for the weight-first product; at one row bfloat16 0.29 ms, as fast as the int8
weights of ``models.quant`` and exact to bfloat16 rounding.

* :class:`PackedLinear` replaces an ``nn.Linear``-like layer: same ``y = x W^T + b`` in the weight's
  dtype (inputs are cast to it, as autocast would), optionally with GELU fused as a post-op.
* :class:`PackedConv1d` replaces an ``nn.Conv1d`` (stride 1, any kernel, groups 1) the same way.

A packed weight is an opaque tensor: it has no storage Python can read, so a model holding one
cannot be deep-copied, saved or moved between devices, and ``Module.to(dtype)`` leaves a packed
layer as it is (its weight and bias are attributes, not parameters; inputs are cast to the
layer's dtype); pack after loading, on the CPU, as the last preparation step.
:func:`packing_available` says whether this torch has the ops.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["PackedConv1d", "PackedLinear", "packing_available"]


@functools.lru_cache(maxsize=None)
def packing_available() -> bool:
    """Whether this torch can prepack CPU weights (oneDNN built in and its pointwise ops present)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        ops = torch.ops.mkldnn
        for name in ("_reorder_linear_weight", "_linear_pointwise", "_reorder_convolution_weight",
                     "_convolution_pointwise"):
            getattr(ops, name)
        # one tiny call: an op can be registered and still refuse this build's CPU
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(2, 2), 1)
        torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), w, None, "none", [], "")
        return True
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """``y = x @ W^T + b`` (optionally ``gelu_tanh`` of it) with ``W`` prepacked for oneDNN.

    ``weight``: (out, in) float; it is cast to ``dtype`` and packed for products of about ``rows``
    rows (a hint to oneDNN's layout choice; any row count works).  The bias is kept in ``dtype``.
    Inputs of any float dtype and shape (..., in); the output is in ``dtype``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, rows: int = 1,
                 gelu_tanh: bool = False):
        super().__init__()
        if weight.dim() != 2:
            raise ValueError("PackedLinear needs an (out, in) weight")
        self.out_features, self.in_features = weight.shape
        self.dtype = dtype
        self.gelu_tanh = gelu_tanh
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype).contiguous(), max(1, rows))
        # a plain attribute, like the packed weight: ``Module.to(dtype)`` must not cast one without the other
        self.bias = None if bias is None else bias.detach().to(dtype).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(self.dtype).contiguous()
        attr, algorithm = ("gelu", "tanh") if self.gelu_tanh else ("none", "")
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, attr, [], algorithm)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        gelu = ", gelu_tanh fused" if self.gelu_tanh else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.dtype}, packed{gelu}"


class PackedConv1d(nn.Module):
    """An ``nn.Conv1d`` (stride 1, dilation 1, groups 1) with its weight prepacked for oneDNN.

    Runs as the 2-D convolution oneDNN implements (a (B, C, 1, T) view), in ``dtype``; inputs are
    cast to it.  ``length``: the expected number of frames (a layout hint; any length works).
    """

    def __init__(self, conv: nn.Conv1d, dtype: torch.dtype, length: int = 256):
        super().__init__()
        if conv.stride != (1,) or conv.dilation != (1,) or conv.groups != 1 or not isinstance(conv.padding, tuple):
            raise ValueError("PackedConv1d packs stride-1, undilated, ungrouped convolutions with numeric padding")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = conv.kernel_size[0]
        self.padding = [0, conv.padding[0]]
        self.dtype = dtype
        # A kernel-1 convolution is a matrix product over the frames of a channels-last input, and
        # runs as one: oneDNN's float32 1x1 convolution re-lays a prepacked weight on every call
        # when the frame count leaves the range it was packed for (2048 channels at 101 frames,
        # packed for 256: 108 ms against 3 ms, Xeon with AMX, docs/performance.md); its linear
        # product has no such cliff, and in bfloat16 it measured 10-20 % faster at 174 frames.
        self.linear = (PackedLinear(conv.weight.squeeze(2), conv.bias, dtype, rows=length)
                       if self.kernel_size == 1 and conv.padding[0] == 0 else None)
        if self.linear is None:
            weight = conv.weight.detach().to(dtype).unsqueeze(2).contiguous()  # (out, in, 1, k)
            self.packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight, self.padding, [1, 1], [1, 1], 1, [1, self.in_channels, 1, max(length, self.kernel_size)])
            self.bias = None if conv.bias is None else conv.bias.detach().to(dtype).clone()  # see PackedLinear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C', T), or (B, C, 1, T) -> (B, C', 1, T).

        The output is channels-last in memory (oneDNN's layout for these convolutions); a 4-D
        channels-last input is taken as it is, with no re-layout on the way in.
        """
        flat = x.dim() == 3
        x4 = (x.to(self.dtype).unsqueeze(2) if flat else x.to(self.dtype)).contiguous(memory_format=torch.channels_last)
        if self.linear is not None:
            # channels-last (B, C, 1, T) is (B, 1, T, C) in memory: the rows are a view, and the
            # (B, 1, T, C') product seen back as (B, C', 1, T) is channels-last again
            y = self.linear(x4.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        else:
            y = torch.ops.mkldnn._convolution_pointwise(x4, self.packed, self.bias, self.padding, [1, 1], [1, 1], 1,
                                                        "none", [], "")
        return y.squeeze(2) if flat else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding={self.padding[1]}, {self.dtype}, packed")
