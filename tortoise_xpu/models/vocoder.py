"""UnivNet: the mel-spectrogram → waveform vocoder of Tortoise (24 kHz, hop 256).

A noise sequence (one frame per mel frame) is widened by a conv and then upsampled by a
stack of blocks.  Each block upsamples with a transposed conv and refines the signal with
*location-variable convolutions* (LVC): a small "kernel predictor" network looks at the mel
spectrogram and emits, for every mel frame, the weights and bias of a k=3 convolution that is
applied only to the audio samples under that frame.  A gated activation (sigmoid · tanh) adds
the result back to the signal.

Module names mirror the official ``vocoder.pth`` (``res_stack.{i}.kernel_predictor...``,
``convt_pre.1``, ``conv_blocks.{j}.1``, ``conv_pre``, ``conv_post.1``).  The original trains
with weight norm on every conv; this module holds plain conv weights, and
:meth:`UnivNetGenerator.convert_state_dict` folds the checkpoint's ``weight_g``/``weight_v``
pairs into them.  Parameter counts therefore differ from the original's by one gain per
output slice of each conv: 14,789,153 here against 14,865,506 there (official config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import fold_weight_norm

# log(1e-5): the mel value of silence.  Padding frames with it lets the generator ring out
# past the end of the utterance; the samples under those frames are cut again.
MEL_SILENCE = -11.5129
PAD_FRAMES = 10


@dataclass(frozen=True)
class UnivNetConfig:
    """Constructor values of the generator; the defaults are the official ``vocoder.pth`` ones."""

    noise_dim: int = 64
    channel_size: int = 32
    dilations: tuple[int, ...] = (1, 3, 9, 27)
    strides: tuple[int, ...] = (8, 8, 4)
    lReLU_slope: float = 0.2
    kpnet_conv_size: int = 3
    hop_length: int = 256
    n_mel_channels: int = 100
    kpnet_hidden_channels: int = 64  # fixed in the original (not a constructor argument there)
    lvc_kernel_size: int = 3         # likewise

    def __post_init__(self):
        if math.prod(self.strides) != self.hop_length:
            raise ValueError(f"strides {self.strides} upsample by {math.prod(self.strides)}, "
                             f"not by hop_length {self.hop_length}")

    @classmethod
    def tiny(cls) -> "UnivNetConfig":
        """A few-thousand-parameter generator for tests (hop 8, 20 mel bands)."""
        return cls(noise_dim=16, channel_size=8, dilations=(1, 3, 9), strides=(4, 2), hop_length=8,
                   n_mel_channels=20, kpnet_hidden_channels=64)


class KernelPredictor(nn.Module):
    """Predicts per-frame LVC kernels and biases for every layer of one block from the mel."""

    def __init__(self, cond_channels: int, conv_in_channels: int, conv_out_channels: int, conv_layers: int,
                 conv_kernel_size: int = 3, hidden: int = 64, kpnet_conv_size: int = 3, slope: float = 0.1):
        super().__init__()
        self.conv_in_channels = conv_in_channels
        self.conv_out_channels = conv_out_channels
        self.conv_kernel_size = conv_kernel_size
        self.conv_layers = conv_layers
        pad = (kpnet_conv_size - 1) // 2
        # Index 0 of each residual Sequential is a (p=0) dropout in the original; the Identity keeps
        # the conv indices (.1 / .3) of the checkpoint names.
        self.input_conv = nn.Sequential(nn.Conv1d(cond_channels, hidden, 5, padding=2), nn.LeakyReLU(slope))
        self.residual_convs = nn.ModuleList(
            nn.Sequential(nn.Identity(),
                          nn.Conv1d(hidden, hidden, kpnet_conv_size, padding=pad), nn.LeakyReLU(slope),
                          nn.Conv1d(hidden, hidden, kpnet_conv_size, padding=pad), nn.LeakyReLU(slope))
            for _ in range(3))
        n_weights = conv_in_channels * conv_out_channels * conv_kernel_size * conv_layers
        self.kernel_conv = nn.Conv1d(hidden, n_weights, kpnet_conv_size, padding=pad)
        self.bias_conv = nn.Conv1d(hidden, conv_out_channels * conv_layers, kpnet_conv_size, padding=pad)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``c`` (B, mels, L) → kernels (B, layers, in, out, k, L) and biases (B, layers, out, L)."""
        b, _, frames = c.shape
        h = self.input_conv(c)
        for block in self.residual_convs:
            h = h + block(h)
        kernels = self.kernel_conv(h).view(b, self.conv_layers, self.conv_in_channels, self.conv_out_channels,
                                           self.conv_kernel_size, frames)
        bias = self.bias_conv(h).view(b, self.conv_layers, self.conv_out_channels, frames)
        return kernels, bias


def location_variable_conv(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor, hop: int) -> torch.Tensor:
    """Convolve each ``hop``-sample stretch of ``x`` with the kernel predicted for its frame.

    ``x`` (B, C_in, L*hop); ``kernel`` (B, C_in, C_out, k, L); ``bias`` (B, C_out, L) → (B, C_out, L*hop).
    Same-padded, dilation 1 (what the original uses at every call site).  Written as one batched
    matmul per (batch, frame): a (C_out × C_in·k) kernel times the (C_in·k × hop) im2col of the
    frame's samples and their k-1 neighbours, so the largest temporary is k copies of ``x``.
    """
    b, c_in, length = x.shape
    _, _, c_out, k, frames = kernel.shape
    if length != frames * hop:
        raise ValueError(f"LVC input has {length} samples, expected {frames} frames × {hop}")
    pad = (k - 1) // 2
    windows = F.pad(x, (pad, pad)).unfold(2, hop + 2 * pad, hop)           # (B, C_in, L, hop+2p), a view
    windows = windows.permute(0, 2, 1, 3).reshape(b * frames, c_in, hop + 2 * pad)
    cols = torch.stack([windows[..., j:j + hop] for j in range(k)], dim=2)  # (B*L, C_in, k, hop)
    cols = cols.reshape(b * frames, c_in * k, hop)
    weights = kernel.permute(0, 4, 2, 1, 3).reshape(b * frames, c_out, c_in * k)
    out = torch.baddbmm(bias.permute(0, 2, 1).reshape(b * frames, c_out, 1), weights, cols)
    return out.view(b, frames, c_out, hop).permute(0, 2, 1, 3).reshape(b, c_out, length)


class LVCBlock(nn.Module):
    """Upsample by ``stride``, then ``len(dilations)`` gated LVC residual layers."""

    def __init__(self, channels: int, cond_channels: int, stride: int, dilations: tuple[int, ...],
                 slope: float, cond_hop_length: int, kpnet_conv_size: int, kpnet_hidden: int, kernel_size: int):
        super().__init__()
        self.cond_hop_length = cond_hop_length
        self.kernel_predictor = KernelPredictor(cond_channels, channels, 2 * channels, len(dilations),
                                                kernel_size, kpnet_hidden, kpnet_conv_size, slope)
        # Kernel 2*stride with this padding gives exactly stride× the input length for odd strides too.
        self.convt_pre = nn.Sequential(
            nn.LeakyReLU(slope),
            nn.ConvTranspose1d(channels, channels, 2 * stride, stride=stride, padding=stride // 2 + stride % 2,
                               output_padding=stride % 2))
        self.conv_blocks = nn.ModuleList(
            nn.Sequential(nn.LeakyReLU(slope),
                          nn.Conv1d(channels, channels, kernel_size, padding=d * (kernel_size - 1) // 2, dilation=d),
                          nn.LeakyReLU(slope))
            for d in dilations)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = self.convt_pre(x)
        kernels, bias = self.kernel_predictor(c)
        for i, conv in enumerate(self.conv_blocks):
            y = location_variable_conv(conv(x), kernels[:, i], bias[:, i], self.cond_hop_length)
            x = x + torch.sigmoid(y[:, :channels]) * torch.tanh(y[:, channels:])
        return x


class ReflectConv1d(nn.Conv1d):
    """``nn.Conv1d`` with ``padding_mode="reflect"`` that also takes float16 input on torch < 2.5.

    Those releases have no float16 ``reflection_pad1d`` kernel on the CPU (``--dtype float16`` on a
    CPU would crash in the vocoder), so float16 input is padded in float32 and cast back: padding
    only copies values, so the numbers are the same.  Parameters and state dict are Conv1d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float16:
            return super().forward(x)
        p = self.padding[0]
        x = F.pad(x.float(), (p, p), mode=self.padding_mode).to(x.dtype)
        return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class UnivNetGenerator(nn.Module):
    """Mel spectrogram (B, mels, L) + noise (B, noise_dim, L) → waveform (B, 1, L * hop)."""

    def __init__(self, config: UnivNetConfig | None = None):
        super().__init__()
        self.config = cfg = config or UnivNetConfig()
        self.res_stack = nn.ModuleList()
        hop = 1
        for stride in cfg.strides:
            hop *= stride  # samples per mel frame at this block's output rate
            self.res_stack.append(LVCBlock(cfg.channel_size, cfg.n_mel_channels, stride, cfg.dilations,
                                           cfg.lReLU_slope, hop, cfg.kpnet_conv_size, cfg.kpnet_hidden_channels,
                                           cfg.lvc_kernel_size))
        self.conv_pre = ReflectConv1d(cfg.noise_dim, cfg.channel_size, 7, padding=3, padding_mode="reflect")
        self.conv_post = nn.Sequential(nn.LeakyReLU(cfg.lReLU_slope),
                                       ReflectConv1d(cfg.channel_size, 1, 7, padding=3, padding_mode="reflect"),
                                       nn.Tanh())

    @staticmethod
    def convert_state_dict(raw: dict) -> dict:
        """``vocoder.pth`` content → this module's state dict.

        The official file is ``{'model_g': state_dict}`` with weight-normed convs; a bare state
        dict is accepted too.  Weight-norm pairs are folded into plain weights.
        """
        sd = raw["model_g"] if "model_g" in raw and isinstance(raw["model_g"], dict) else raw
        return fold_weight_norm(sd)

    def forward(self, mel: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``mel`` (B, mels, L), ``z`` (B, noise_dim, L) → (B, 1, L * hop) in [-1, 1] (tanh)."""
        x = self.conv_pre(z)
        for block in self.res_stack:
            x = block(x, mel)
        return self.conv_post(x)

    @torch.no_grad()
    def inference(self, mel: torch.Tensor, z: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Vocode a mel spectrogram as the original does: (B, mels, L) → (B, 1, L * hop).

        Ten frames of silence are appended so the end of the utterance is not clipped by the
        generator's receptive field, and the samples under them are dropped afterwards.  The
        noise ``z`` (B, noise_dim, L + 10) is drawn, unless given, on the CPU from ``generator``
        (the global CPU generator when None) and then moved to ``mel``'s device, so one seed gives
        the same noise on every backend.  The output is clamped to [-1, 1].
        """
        cfg = self.config
        silence = torch.full((mel.shape[0], mel.shape[1], PAD_FRAMES), MEL_SILENCE, dtype=mel.dtype,
                             device=mel.device)
        mel = torch.cat((mel, silence), dim=2)
        if z is None:
            z = torch.randn(mel.shape[0], cfg.noise_dim, mel.shape[2], generator=generator)
        z = z.to(device=mel.device, dtype=mel.dtype)
        audio = self.forward(mel, z)[:, :, : -cfg.hop_length * PAD_FRAMES]
        return audio.clamp(-1.0, 1.0)
