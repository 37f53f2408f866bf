"""One-dimensional convolutions run as 2-D channels-last ones, for the CPU's long, narrow signals.

A HiFi-GAN decodes 32 to 1024 channels over tens of thousands of samples.  Given a plain (B, C, T)
tensor, oneDNN re-lays input and output into its blocked layout around every convolution, and for
such shapes those copies cost more than the convolution: a 60-code window of the streaming decoder
in bfloat16 spent 225 ms in copies and 150 ms in convolutions (2-core Xeon with AMX,
docs/performance.md).  On (B, C, 1, T) tensors in ``torch.channels_last`` order, with the weights
stored the same way, oneDNN reads and writes them directly: the same window took 146 ms against
430 ms.

* :class:`ChannelsLastConv1d` replaces an ``nn.Conv1d`` (any stride, padding, dilation; groups 1);
* :class:`ChannelsLastConvTranspose1d` replaces an ``nn.ConvTranspose1d`` (no output padding).

Both take and return (B, C, 1, T) channels-last tensors, in the dtype given at construction
(inputs are cast to it).  Their weights are plain attributes in that layout, so the model's state
dict is not the checkpoint's any more: convert after loading, as the last preparation step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelsLastConv1d", "ChannelsLastConvTranspose1d", "to_channels_last_4d"]


def to_channels_last_4d(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T) -> (B, C, 1, T) in channels-last memory order."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _weight_4d(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return weight.detach().to(dtype).unsqueeze(2).contiguous(memory_format=torch.channels_last).clone()


def _bias(bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if bias is None else bias.detach().to(dtype).clone()


class ChannelsLastConv1d(nn.Module):
    """An ``nn.Conv1d`` as a (1, k) 2-D convolution over channels-last (B, C, 1, T) tensors."""

    def __init__(self, conv: nn.Conv1d, dtype: torch.dtype):
        super().__init__()
        if conv.groups != 1 or not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError("ChannelsLastConv1d converts ungrouped, zero- and numerically padded convolutions")
        self.in_channels, self.out_channels, self.dtype = conv.in_channels, conv.out_channels, dtype
        self.stride, self.padding, self.dilation = (1, conv.stride[0]), (0, conv.padding[0]), (1, conv.dilation[0])
        self.weight = _weight_4d(conv.weight, dtype)  # plain attributes: Module.to() must not re-lay them
        self.bias = _bias(conv.bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.to(self.dtype), self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.weight.shape[-1]}, stride={self.stride[1]}, "
                f"padding={self.padding[1]}, dilation={self.dilation[1]}, {self.dtype}, channels_last")


class ChannelsLastConvTranspose1d(nn.Module):
    """An ``nn.ConvTranspose1d`` as a (1, k) 2-D transposed convolution over channels-last tensors."""

    def __init__(self, conv: nn.ConvTranspose1d, dtype: torch.dtype):
        super().__init__()
        if conv.groups != 1 or conv.output_padding != (0,) or conv.dilation != (1,):
            raise ValueError("ChannelsLastConvTranspose1d converts ungrouped, undilated transposed convolutions "
                             "without output padding")
        self.in_channels, self.out_channels, self.dtype = conv.in_channels, conv.out_channels, dtype
        self.stride, self.padding = (1, conv.stride[0]), (0, conv.padding[0])
        self.weight = _weight_4d(conv.weight, dtype)  # (in, out, 1, k)
        self.bias = _bias(conv.bias, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x.to(self.dtype), self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.weight.shape[-1]}, stride={self.stride[1]}, "
                f"padding={self.padding[1]}, {self.dtype}, channels_last")
