"""The HiFi-GAN decoder of the original's fast/streaming API: AR latents → 24 kHz waveform.

``api_fast`` skips diffusion and the UnivNet vocoder: the autoregressive model's final hidden
states (one 1024-d vector per mel code, i.e. per 1024 samples at 22.05 kHz) are stretched in
time by linear interpolation to the 256-sample hop of a 24 kHz vocoder, then decoded by a
HiFi-GAN generator conditioned on the speaker's AR conditioning latent (added after the input
conv).  The generator is the classic one: transposed-conv upsampling, each stage followed by a
multi-receptive-field fusion of residual blocks (their outputs averaged), tanh at the end.

Module names mirror ``hifidecoder.pth`` (``conv_pre``, ``ups.{i}``, ``resblocks.{j}.convs1/2.{n}``,
``conv_post``, ``cond_layer``).  The original keeps weight norm on every conv except
``cond_layer``; here the convs hold plain weights and :meth:`HifiganGenerator.convert_state_dict`
folds ``weight_g``/``weight_v`` pairs.  Official config: 17,834,113 parameters here, 17,844,226 in
the weight-normed original (one gain per output slice of each normed conv).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import fold_weight_norm

LRELU_SLOPE = 0.1
# One AR code covers 1024 samples at 22.05 kHz; the decoder hops 256 samples at 24 kHz.
LATENT_TO_FRAMES = (1024 / 256, 24000 / 22050)
#: The streaming window lengths in input frames (HifiganGenerator.WINDOW_FRAMES).
WINDOW_FRAMES = (128, 256, 384, 512)


@dataclass(frozen=True)
class HifiGanConfig:
    """Constructor values of the decoder; the defaults are the official ``hifidecoder.pth`` ones."""

    in_channels: int = 1024
    out_channels: int = 1
    resblock_type: str = "1"
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    upsample_factors: tuple[int, ...] = (8, 8, 2, 2)
    cond_channels: int = 1024
    conv_post_bias: bool = True

    def __post_init__(self):
        if self.resblock_type not in ("1", "2"):
            raise ValueError(f"resblock_type must be '1' or '2', not {self.resblock_type!r}")
        if len(self.upsample_factors) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_factors and upsample_kernel_sizes differ in length")

    @property
    def hop_length(self) -> int:
        """Output samples per input frame."""
        hop = 1
        for f in self.upsample_factors:
            hop *= f
        return hop

    @classmethod
    def tiny(cls) -> "HifiGanConfig":
        """A small decoder for tests (32-d latents, two ×2 upsamplings)."""
        return cls(in_channels=32, resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)), resblock_kernel_sizes=(3, 5),
                   upsample_kernel_sizes=(4, 4), upsample_initial_channel=32, upsample_factors=(2, 2),
                   cond_channels=16)


def _same_padding(kernel: int, dilation: int) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Three (dilated conv → conv) residual pairs, each preceded by a leaky ReLU."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=_same_padding(kernel, d))
                                    for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=_same_padding(kernel, 1))
                                    for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """Residual dilated convs, one per dilation, each preceded by a leaky ReLU."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=_same_padding(kernel, d))
                                   for d in dilations[:2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


class HifiganGenerator(nn.Module):
    """Features (B, in_channels, T) [+ speaker vector] → waveform (B, out_channels, T * hop)."""

    #: Input lengths (frames) the streaming decoder cuts its windows to (``StreamVocoder``) and
    #: :meth:`warm_up` prepares: a 20-, 40- and 80-code chunk (87, 174, 348 frames) each fit one with
    #: their 2 x 15 frames of context.
    WINDOW_FRAMES = WINDOW_FRAMES

    def __init__(self, config: HifiGanConfig | None = None):
        super().__init__()
        self.config = cfg = config or HifiGanConfig()
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.in_channels, ch, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(ch // 2 ** i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_factors, cfg.upsample_kernel_sizes)))
        block = ResBlock1 if cfg.resblock_type == "1" else ResBlock2
        self.resblocks = nn.ModuleList(
            block(ch // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = nn.Conv1d(ch // 2 ** len(self.ups), cfg.out_channels, 7, padding=3, bias=cfg.conv_post_bias)
        self.cond_layer = nn.Conv1d(cfg.cond_channels, ch, 1) if cfg.cond_channels > 0 else None
        # Features run as (B, C, 1, T) channels-last tensors (set by use_channels_last: the CPU).
        self.channels_last = False

    @staticmethod
    def convert_state_dict(raw: dict) -> dict:
        """``hifidecoder.pth`` content → this module's state dict (weight-norm pairs folded)."""
        return fold_weight_norm(raw)

    @torch.no_grad()
    def use_channels_last(self, dtype: torch.dtype | None = None) -> "HifiganGenerator":
        """Run every convolution but ``cond_layer`` as a 2-D one over channels-last (B, C, 1, T)
        features, in ``dtype`` (default: the weights'), for oneDNN (the CPU): without it, the
        layout copies around each convolution cost more than the convolutions
        (:mod:`tortoise_xpu.models.channels_last`).  The output is the same up to the dtype's
        rounding; the state dict is not the checkpoint's any more (convert after loading)."""
        from tortoise_xpu.models.channels_last import ChannelsLastConv1d, ChannelsLastConvTranspose1d

        dtype = dtype or self.conv_pre.weight.dtype
        targets = [(parent, name, child) for parent in self.modules() for name, child in parent.named_children()
                   if isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)) and child is not self.cond_layer]
        for parent, name, child in targets:
            kind = ChannelsLastConvTranspose1d if isinstance(child, nn.ConvTranspose1d) else ChannelsLastConv1d
            setattr(parent, name, kind(child, dtype))
        self.channels_last = True
        return self

    @torch.no_grad()
    def warm_up(self, lengths: tuple[int, ...] = WINDOW_FRAMES) -> "HifiganGenerator":
        """Decode one window of each length in ``lengths`` (frames) of zeros, so that the backend's
        per-length preparation (oneDNN's on the CPU: 0.6-1.2 s for a new length on a 2-core Xeon)
        is done at load time, not when a stream's first audio is due."""
        w = self.conv_pre.weight  # converted or not, conv_pre has the decoder's dtype and device
        g = (torch.zeros(1, self.config.cond_channels, 1, dtype=w.dtype, device=w.device)
             if self.cond_layer is not None else None)
        for n in lengths:
            self.forward(torch.zeros(1, self.config.in_channels, n, dtype=w.dtype, device=w.device), g)
        return self

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, in_channels, T); ``g`` (B, cond_channels, 1) speaker vector, required when conditioned."""
        if self.channels_last:
            from tortoise_xpu.models.channels_last import to_channels_last_4d

            x = to_channels_last_4d(x)
        h = self.conv_pre(x)
        if self.cond_layer is not None:
            if g is None:
                raise ValueError("this decoder is speaker-conditioned: pass g")
            cond = self.cond_layer(g.to(self.cond_layer.weight.dtype))
            h = h + (cond.unsqueeze(2).to(h.dtype) if self.channels_last else cond)
        for i, up in enumerate(self.ups):
            h = up(F.leaky_relu(h, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            mrf = blocks[0](h)
            for block in blocks[1:]:
                mrf = mrf + block(h)
            h = mrf / self.num_kernels
        # The last activation uses torch's default slope (0.01), not LRELU_SLOPE, as trained.
        out = torch.tanh(self.conv_post(F.leaky_relu(h)))
        return out.squeeze(2) if self.channels_last else out

    @staticmethod
    def latent_frames(latents: torch.Tensor) -> torch.Tensor:
        """AR latents (B, T, C) → decoder input frames (B, C, floor(floor(4T) * 24000/22050)).

        Linear interpolation ×4 then ×24000/22050 with the scale factors given (not recomputed),
        so frame j depends only on the latents around j / 4.35, not on T, except within a few
        frames of the end (see ``pipeline.stream_vocoder.stable_frames``).
        """
        frames = latents.transpose(1, 2)
        for scale in LATENT_TO_FRAMES:
            frames = F.interpolate(frames, scale_factor=[scale], mode="linear")
        return frames

    def receptive_field(self) -> int:
        """Input frames on each side that can reach one output sample (an upper bound, from the config).

        conv_pre (kernel 7) reaches 3 frames; each transposed conv at most ``ceil(k / u)`` samples of
        its input rate; each multi-receptive-field fusion the reach of its widest residual block (the
        sum of its convs' half-widths, dilations included) at its output rate; conv_post 3 samples.
        A window decode with this many frames of context on each side equals the full decode.
        """
        cfg = self.config
        if cfg.resblock_type == "1":
            block_reach = max(sum((k - 1) * d // 2 + (k - 1) // 2 for d in dils)
                              for k, dils in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        else:
            block_reach = max(sum((k - 1) * d // 2 for d in dils[:2])
                              for k, dils in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        reach, rate = 3.0, 1  # in input frames; samples per input frame at the current stage
        for u, k in zip(cfg.upsample_factors, cfg.upsample_kernel_sizes):
            reach += -(-k // u) / rate
            rate *= u
            reach += block_reach / rate
        reach += 3 / rate
        return int(reach) + 1

    @torch.no_grad()
    def inference(self, latents: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """AR latents (B, T, in_channels) and speaker latent ``g`` (B or 1, cond_channels) → (B, 1, samples).

        The latents are linearly interpolated ×4 (AR code rate → 22.05 kHz hop-256 frames) and
        then ×24000/22050 (→ 24 kHz frames), with the same scale factors the original passes, so
        the frame count is ``floor(floor(4T) * 24000/22050)`` and the output is 24 kHz audio.
        """
        frames = self.latent_frames(latents)
        if g is not None:
            g = g.reshape(-1, g.shape[-1]).unsqueeze(-1).to(frames.dtype)
        return self.forward(frames, g)
