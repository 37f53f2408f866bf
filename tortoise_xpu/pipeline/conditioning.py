"""Conditioning stage: the voice latents a run is conditioned on.

From reference clips (22.05 kHz): the AR latent (1, 1024) from the clips' AR mels, and the
diffusion latent (1, 2048) from their 24 kHz UnivNet mels; from saved latents (checked against
the loaded models' widths); or a random voice from the random-latent generators.  Each takes the
model store and the run's context; random draws come from ``ctx.generator`` in the original's order
(the AR clips' random crops first).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from tortoise_xpu.errors import UserError
from tortoise_xpu.pipeline.store import weight_dtype

__all__ = ["ar_conditioning", "check_latents", "conditioning_latents", "diffusion_conditioning", "random_latents"]


def _clips(voice_samples: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    clips = [voice_samples] if isinstance(voice_samples, torch.Tensor) else list(voice_samples)
    if not clips:
        raise UserError("no voice clips given")
    return clips


def ar_conditioning(store: Any, ctx: Any, voice_samples: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The AR voice latent (1, D) float32 and the AR conditioning mels (1, n, 80, T) of the clips.

    Each clip is padded or randomly cropped (from ``ctx.generator``) to 6 s."""
    from tortoise_xpu.audio.conditioning import prepare_ar_clips
    from tortoise_xpu.audio.mel import ar_mel

    clips = _clips(voice_samples)
    dev = store.device
    use_complex = ctx.policy.use_complex_stft
    with torch.no_grad():
        norms = store.mel_norms.to(dev)
        ar_mels = torch.stack([ar_mel(c.to(dev), norms, use_complex=use_complex)
                               for c in prepare_ar_clips(clips, ctx.generator)], dim=1)  # (1, n, 80, T)
        with store.on_device("autoregressive", ctx) as ar:
            latent = ar.get_conditioning(ar_mels.to(weight_dtype(ar))).float()
    return latent, ar_mels


def diffusion_conditioning(store: Any, ctx: Any, voice_samples: Sequence[torch.Tensor]) -> torch.Tensor:
    """The diffusion voice latent (1, 2 x channels) float32 from the first 102400 samples at 24 kHz
    of each clip; no random draws."""
    from tortoise_xpu.audio.conditioning import prepare_diffusion_clips
    from tortoise_xpu.audio.mel import univnet_mel

    clips = _clips(voice_samples)
    dev = store.device
    with torch.no_grad():
        mels = [univnet_mel(c.to(dev), use_complex=ctx.policy.use_complex_stft)
                for c in prepare_diffusion_clips(clips)]
        with store.on_device("diffusion", ctx) as diffusion:
            dt = weight_dtype(diffusion)
            return diffusion.get_conditioning([m.to(dt) for m in mels]).float()


def conditioning_latents(store: Any, ctx: Any,
                         voice_samples: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ar latent, diffusion latent, ar mels)`` of the clips: the AR half, then the diffusion half."""
    ar_latent, ar_mels = ar_conditioning(store, ctx, voice_samples)
    return ar_latent, diffusion_conditioning(store, ctx, voice_samples), ar_mels


def check_latents(store: Any, ctx: Any, latents: Any, *, ar_only: bool = False) -> tuple[torch.Tensor, ...]:
    """Saved latents as (1, D) float tensors, checked against the loaded models' widths.

    ``latents`` is ``(ar, diffusion)``; with ``ar_only`` (streaming) a lone AR latent is accepted too
    and only it is checked and returned (as a 1-tuple)."""
    if ar_only:
        ar = latents[0] if isinstance(latents, (tuple, list)) else latents
        ar = ar.detach().float().reshape(1, -1)
        width = store.model("autoregressive", ctx.policy).config.model_dim
        if ar.shape[1] != width:
            raise UserError(f"an AR conditioning latent of width {ar.shape[1]} does not fit this AR model "
                            f"({width}): it was made with other model files")
        return (ar,)
    ar, diff = (t.detach().float().reshape(1, -1) for t in latents)
    want = (store.model("autoregressive", ctx.policy).config.model_dim,
            2 * store.model("diffusion", ctx.policy).config.model_channels)
    if (ar.shape[1], diff.shape[1]) != want:
        raise UserError(f"conditioning latents of widths {ar.shape[1]} and {diff.shape[1]} do not fit these "
                        f"models ({want[0]} and {want[1]}): they were made with other model files")
    return ar, diff


def random_latents(store: Any, ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A random voice from the random-latent generators: ``(ar (1, 1024), diffusion (1, 2048))``."""
    ref = torch.zeros(1)
    with torch.no_grad(), store.on_device("rlg_auto", ctx) as rlg_a, store.on_device("rlg_diffuser", ctx) as rlg_d:
        return rlg_a(ref, generator=ctx.generator).float(), rlg_d(ref, generator=ctx.generator).float()
