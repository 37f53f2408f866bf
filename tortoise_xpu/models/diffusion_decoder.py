"""The Tortoise diffusion decoder: AR latents + a voice latent -> 100-band mel (ε and variance).

The network predicts, for a noisy normalised mel ``x_t`` at diffusion step ``t``, the noise ε
(first ``in_channels`` outputs) and a variance interpolation value in [-1, 1] (the rest), the
"learned range" parameterisation.  What it is conditioned on:

* a **voice latent** (``get_conditioning``): the reference clips' 100-band mels run through
  ``contextual_embedder`` and averaged over clips and time; the 2·C vector is split into a scale
  and a shift for the aligned embedding;
* the **aligned conditioning** (``timestep_independent``): the autoregressive model's latents
  (``latent_conditioner``) or its discrete codes (``code_embedding`` + ``code_converter``),
  normalised, modulated by the voice latent and stretched to the mel length.  It does not depend on
  ``t``, so a sampler computes it once per utterance;
* or, for conditioning-free guidance, a single learned vector ``unconditioned_embedding``.

Parameter names and shapes equal the official ``diffusion_decoder.pth``.  Training-only behaviour
of the original (layer drop, random unconditioning, the zero-weighted "unused parameter" sum) is
left out: inference gives the same numbers without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tortoise_xpu.models.blocks import AttentionBlock, normalization

# (x, timesteps, want_unconditional) -> (conditional output, unconditional output or None): the
# callable ``tortoise_xpu.diffusion.sample`` takes (its ``Denoiser``).
Denoiser = Callable[[torch.Tensor, torch.Tensor, bool], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass(frozen=True)
class DiffusionConfig:
    """Constructor values of ``DiffusionTts``; the defaults are the official checkpoint's."""

    model_channels: int = 1024
    num_layers: int = 10
    in_channels: int = 100
    out_channels: int = 200  # ε and the variance value, in_channels each
    in_latent_channels: int = 1024  # the AR model's width
    in_tokens: int = 8193
    dropout: float = 0.0
    use_fp16: bool = False  # autocast every layer but the first, as the original's enable_fp16
    num_heads: int = 16
    layer_drop: float = 0.0  # training only
    unconditioned_percentage: float = 0.0  # training only

    @classmethod
    def tiny(cls, **overrides) -> "DiffusionConfig":
        """A ~0.9M-parameter model for tests (``in_latent_channels`` must match the AR model used)."""
        values = dict(model_channels=64, num_layers=2, in_latent_channels=64, in_tokens=256, num_heads=4)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> "DiffusionConfig":
        return dataclasses.replace(self, **changes)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): cosines of all frequencies, then sines.

    ``timesteps`` may be fractional (the dpm++ sampler evaluates between trained steps).
    """
    half = dim // 2
    # Float32 whatever the model dtype: t reaches 4000, fp16/bf16 would alias it.  The exponent is
    # rounded in the checkpoint's order ((-log P * i) / half): at t = 4000 a 1-ulp change in a
    # frequency moves the angle by ~2e-4 rad.
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(exponent)
    angles = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block whose second norm is scaled/shifted by the step embedding.

    Layer positions inside the Sequentials are those of the checkpoint (``in_layers.2``,
    ``emb_layers.1``, ``out_layers.0`` / ``out_layers.3``).
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv1d(channels, channels, 1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * channels))
        self.out_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv1d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        # (B, 2C) -> (B, 2C, 1) or (B, 2C, 1, 1): one value per channel, for 3-D or 4-D features
        scale, shift = self.emb_layers(emb).to(h.dtype).reshape(*emb.shape[:1], -1, *([1] * (h.dim() - 2))).chunk(2, dim=1)
        norm, rest = self.out_layers[0], self.out_layers[1:]
        h = rest(norm(h) * (1 + scale) + shift)
        return x + h


class DiffusionLayer(nn.Module):
    """A timestep residual block followed by self-attention with relative position bias."""

    def __init__(self, channels: int, dropout: float, num_heads: int):
        super().__init__()
        self.resblk = TimestepResBlock(channels, channels, dropout)
        self.attn = AttentionBlock(channels, num_heads, relative_pos_embeddings=True)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.resblk(x, emb))


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T) -> (B, C, 1, T) channels-last: the features of the packed per-step layers."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _attention_stack(channels: int, heads: int, depth: int) -> list[nn.Module]:
    return [AttentionBlock(channels, heads, relative_pos_embeddings=True) for _ in range(depth)]


class DiffusionTts(nn.Module):
    """The diffusion decoder; see the module docstring for what each part conditions on."""

    def __init__(self, config: DiffusionConfig | None = None):
        super().__init__()
        self.config = cfg = config or DiffusionConfig()
        c, heads = cfg.model_channels, cfg.num_heads
        self.model_channels = c
        self.in_channels = cfg.in_channels

        self.inp_block = nn.Conv1d(cfg.in_channels, c, 3, padding=1)
        self.time_embed = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))

        # Aligned conditioning: discrete codes or AR latents, both end as (B, C, S).
        self.code_embedding = nn.Embedding(cfg.in_tokens, c)
        self.code_converter = nn.Sequential(*_attention_stack(c, heads, 3))
        self.code_norm = normalization(c)
        self.latent_conditioner = nn.Sequential(nn.Conv1d(cfg.in_latent_channels, c, 3, padding=1),
                                                *_attention_stack(c, heads, 4))
        # Voice latent: two stride-2 convs to 2C channels, then attention over the clip.
        self.contextual_embedder = nn.Sequential(nn.Conv1d(cfg.in_channels, c, 3, padding=1, stride=2),
                                                 nn.Conv1d(c, 2 * c, 3, padding=1, stride=2),
                                                 *_attention_stack(2 * c, heads, 5))
        self.unconditioned_embedding = nn.Parameter(torch.randn(1, c, 1))
        self.conditioning_timestep_integrator = nn.ModuleList(
            DiffusionLayer(c, cfg.dropout, heads) for _ in range(3))

        self.integrating_conv = nn.Conv1d(2 * c, c, 1)
        self.mel_head = nn.Conv1d(c, cfg.in_channels, 3, padding=1)  # auxiliary code->mel prediction
        self.layers = nn.ModuleList([DiffusionLayer(c, cfg.dropout, heads) for _ in range(cfg.num_layers)]
                                    + [TimestepResBlock(c, c, cfg.dropout) for _ in range(3)])
        self.out = nn.Sequential(normalization(c), nn.SiLU(), nn.Conv1d(c, cfg.out_channels, 3, padding=1))

        # dtype for autocast around every main layer but the first (None: no autocast).
        self.layer_autocast_dtype: torch.dtype | None = torch.float16 if cfg.use_fp16 else None
        # The per-step layers run on (B, C, 1, T) channels-last features (set by use_packed_convs).
        self.channels_last = False
        # The first main layer and the step integrator autocast too (use_layer_autocast's option).
        self.autocast_every_step_layer = False

    @staticmethod
    def convert_state_dict(raw: dict) -> dict:
        """The checkpoint file is the plain state dict."""
        return raw

    @torch.no_grad()
    def use_layer_autocast(self, dtype: torch.dtype, every_step_layer: bool = False) -> "DiffusionTts":
        """Half precision the original's ``use_fp16`` way, with the autocast weights stored in ``dtype``.

        Every main layer but the first runs under ``torch.autocast(dtype)``; the rest of the network
        (conditioning, step embedding, first layer, output) stays float32.  Autocast would round the
        convolution and linear weights of those layers to ``dtype`` on every step; storing them
        rounded once gives the same numbers (tests/test_diffusion_model.py checks bit equality) with
        ~40 % of the weights at half size and no per-step casts.  Norms and position-bias tables
        stay float32 (GroupNorm32 reads them in float32).  Not reversible: the dropped bits are gone.

        ``every_step_layer``: the first main layer and the three ``conditioning_timestep_integrator``
        layers run under autocast too: every layer that runs at each denoising step but the
        output.  Those four layers are 4/13 of a step's work; on a CPU, where a float32 convolution
        is 3x slower than a bfloat16 one, they were a third of the step (docs/performance.md).  The
        error against float32 stays within the parity suite's bfloat16 tolerance (docs/parity.md).
        """
        self.layer_autocast_dtype = dtype
        self.autocast_every_step_layer = every_step_layer
        layers = list(self.layers) if every_step_layer else list(self.layers)[1:]
        if every_step_layer:
            layers += list(self.conditioning_timestep_integrator)
        for layer in layers:
            for module in layer.modules():
                if isinstance(module, (nn.Conv1d, nn.Linear)):
                    module.to(dtype)
                elif hasattr(module, "packed"):
                    raise RuntimeError("use_layer_autocast must come before use_packed_convs")
        return self

    @torch.no_grad()
    def use_packed_convs(self, frames: int = 256) -> "DiffusionTts":
        """Prepack the convolutions and linears that run at every denoising step for oneDNN (the CPU).

        Those of ``conditioning_timestep_integrator`` and ``layers`` become
        :class:`~tortoise_xpu.models.packed.PackedConv1d` / ``PackedLinear`` in their weight's dtype (the
        half dtype after :meth:`use_layer_autocast`: the same numbers autocast gives, up to oneDNN's
        choice of algorithm), and their attention runs as explicit products where short enough
        (``AttentionBlock.matmul_attention``).  The conditioning networks, run once per utterance,
        are left as they are, but for the voice-latent encoder's attention convolutions.  Pack after
        loading, on the CPU: packed weights cannot move or be saved.
        """
        from tortoise_xpu.models.packed import PackedConv1d, PackedLinear

        for block in self.modules():  # the conditioning networks' attention too (short clips)
            if isinstance(block, AttentionBlock):
                block.matmul_attention = True
        # The voice-latent encoder runs once per voice but in float32 at 2048 channels: its
        # attention convolutions were half of the conditioning stage, unpacked.
        for block in self.contextual_embedder:
            if isinstance(block, AttentionBlock):
                block.qkv = PackedConv1d(block.qkv, block.qkv.weight.dtype, frames)
                block.proj_out = PackedConv1d(block.proj_out, block.proj_out.weight.dtype, frames)
        for part in (self.conditioning_timestep_integrator, self.layers):
            targets = []
            for parent in part.modules():
                for name, child in parent.named_children():
                    if isinstance(child, (nn.Conv1d, nn.Linear)):
                        targets.append((parent, name, child))
            for parent, name, child in targets:
                dtype = child.weight.dtype
                if isinstance(child, nn.Conv1d):
                    setattr(parent, name, PackedConv1d(child, dtype, frames))
                else:
                    setattr(parent, name, PackedLinear(child.weight, child.bias, dtype, rows=1))
        self.channels_last = True
        return self

    # ------------------------------------------------------------------ conditioning
    def get_conditioning(self, mels: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Voice latent from reference mels (B, n_clips, 100, T) or (B, 100, T) -> (B, 2C).

        A sequence of (B, 100, T_j) tensors allows clips of different lengths.  The result is the
        mean over all clips' frames, as the original (which concatenates along time first).
        """
        if isinstance(mels, torch.Tensor):
            if mels.dim() == 3:
                mels = mels.unsqueeze(1)
            b, n, ch, t = mels.shape
            feats = self.contextual_embedder(mels.reshape(b * n, ch, t))  # clips are independent
            return feats.reshape(b, n, feats.shape[1], -1).transpose(1, 2).reshape(b, feats.shape[1], -1).mean(-1)
        feats = torch.cat([self.contextual_embedder(m) for m in mels], dim=-1)
        return feats.mean(-1)

    def timestep_independent(self, aligned_conditioning: torch.Tensor, conditioning_latent: torch.Tensor,
                             expected_seq_len: int, return_code_pred: bool = False):
        """The step-independent conditioning, stretched to ``expected_seq_len`` mel frames.

        ``aligned_conditioning``: AR latents (B, S, in_latent_channels) (floating point) or codes
        (B, S) (integer).  ``conditioning_latent``: (B, 2C) from ``get_conditioning``.  Returns
        (B, C, expected_seq_len), plus the auxiliary mel prediction when ``return_code_pred``.
        """
        if aligned_conditioning.is_floating_point():
            w = self.latent_conditioner[0].weight
            emb = self.latent_conditioner(aligned_conditioning.transpose(1, 2).to(w.dtype))
        else:
            emb = self.code_converter(self.code_embedding(aligned_conditioning).transpose(1, 2))
        scale, shift = conditioning_latent.to(emb.dtype).unsqueeze(-1).chunk(2, dim=1)
        emb = self.code_norm(emb) * (1 + scale) + shift
        emb = F.interpolate(emb, size=expected_seq_len, mode="nearest")
        if return_code_pred:
            return emb, self.mel_head(emb)
        return emb

    # ------------------------------------------------------------------ denoising
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, aligned_conditioning: torch.Tensor | None = None,
                conditioning_latent: torch.Tensor | None = None,
                precomputed_aligned_embeddings: torch.Tensor | None = None,
                conditioning_free: bool | torch.Tensor = False, return_code_pred: bool = False):
        """Predict (ε, variance value) for noisy mels ``x`` (B, in_channels, L) at ``timesteps`` (B,).

        Conditioning comes from ``precomputed_aligned_embeddings`` (``timestep_independent``'s
        output) or from ``aligned_conditioning`` + ``conditioning_latent``.  ``conditioning_free``:
        True replaces it by the learned unconditioned embedding for the whole batch; a (B,) bool
        tensor does so per sample, which lets a sampler run the conditional and unconditional passes
        of guidance as one batch.  Returns (B, out_channels, L) (and the code mel prediction when
        ``return_code_pred``).
        """
        if precomputed_aligned_embeddings is None and (aligned_conditioning is None or conditioning_latent is None):
            raise ValueError("give precomputed_aligned_embeddings, or aligned_conditioning and conditioning_latent")
        if return_code_pred and precomputed_aligned_embeddings is not None:
            raise ValueError("return_code_pred needs aligned_conditioning, not precomputed embeddings")
        b, _, length = x.shape
        uncond = self.unconditioned_embedding.expand(b, -1, length)
        mel_pred = None

        if conditioning_free is True:
            code_emb = uncond
        else:
            if precomputed_aligned_embeddings is not None:
                code_emb = precomputed_aligned_embeddings
            else:
                code_emb, mel_pred = self.timestep_independent(aligned_conditioning, conditioning_latent, length, True)
            if isinstance(conditioning_free, torch.Tensor):
                mask = conditioning_free.to(device=code_emb.device, dtype=torch.bool).view(b, 1, 1)
                code_emb = torch.where(mask, uncond.to(code_emb.dtype), code_emb)

        dtype = self.inp_block.weight.dtype
        time_emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        code_emb = code_emb.to(dtype)
        if self.channels_last:
            code_emb = _to_channels_last(code_emb)
        half = self.layer_autocast_dtype if self.autocast_every_step_layer else None
        with torch.autocast(code_emb.device.type, dtype=half) if half is not None else contextlib.nullcontext():
            for layer in self.conditioning_timestep_integrator:
                code_emb = layer(code_emb, time_emb)
        if self.channels_last:
            code_emb = code_emb.squeeze(2).contiguous()

        h = self.integrating_conv(torch.cat([self.inp_block(x.to(dtype)), code_emb], dim=1))
        if self.channels_last:
            h = _to_channels_last(h)
        for i, layer in enumerate(self.layers):
            if self.layer_autocast_dtype is not None and (i != 0 or self.autocast_every_step_layer):
                # Like the original's enable_fp16: the first (and the output) stay in full precision.
                with torch.autocast(h.device.type, dtype=self.layer_autocast_dtype):
                    h = layer(h, time_emb)
            else:
                h = layer(h, time_emb)
        if self.channels_last:
            h = h.squeeze(2).contiguous()
        out = self.out(h.to(self.out[-1].weight.dtype))
        return (out, mel_pred) if return_code_pred else out

    def denoiser(self, aligned_embeddings: torch.Tensor, batch_cond_free: bool = True) -> Denoiser:
        """A ``Denoiser`` for ``tortoise_xpu.diffusion.sample`` bound to one utterance's embeddings.

        When the sampler asks for the unconditional output as well, ``batch_cond_free=True`` runs
        both passes as one forward of batch 2B (a per-sample conditioning-free mask); otherwise two
        forwards.  Both give the same numbers up to float rounding.
        """

        def run(x: torch.Tensor, timesteps: torch.Tensor, want_uncond: bool):
            if not want_uncond:
                return self(x, timesteps, precomputed_aligned_embeddings=aligned_embeddings), None
            if not batch_cond_free:
                cond = self(x, timesteps, precomputed_aligned_embeddings=aligned_embeddings)
                return cond, self(x, timesteps, precomputed_aligned_embeddings=aligned_embeddings,
                                  conditioning_free=True)
            b = x.shape[0]
            mask = torch.arange(2 * b, device=x.device) >= b
            both = self(torch.cat([x, x]), torch.cat([timesteps, timesteps]),
                        precomputed_aligned_embeddings=torch.cat([aligned_embeddings, aligned_embeddings]),
                        conditioning_free=mask)
            return both[:b], both[b:]

        return run

