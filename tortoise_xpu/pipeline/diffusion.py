"""Diffusion stage: from AR latents to a mel spectrogram (p / ddim / dpm++2m samplers)."""

from __future__ import annotations

from typing import Any

import torch

from tortoise_xpu.pipeline.store import weight_dtype

__all__ = ["latents_to_mel"]


def latents_to_mel(store: Any, ctx: Any, latents: torch.Tensor, diff_latent: torch.Tensor) -> torch.Tensor:
    """Diffusion from AR latents (1, S, 1024) to a denormalised log-mel (1, 100, L), float32.

    Reads ``ctx.settings`` (``diffusion_iterations``, ``sampler``, ``cond_free``, ``cond_free_k``,
    ``diffusion_temperature``); the noise comes from ``ctx.generator``; cancellation is checked
    at every sampler step.
    """
    from tortoise_xpu.diffusion.samplers import denormalize_mel, output_length, sample

    s = ctx.settings
    with torch.no_grad(), store.on_device("diffusion", ctx) as diffusion:
        dt = weight_dtype(diffusion)
        length = output_length(latents.shape[1])
        emb = diffusion.timestep_independent(latents.to(dt), diff_latent.to(dt), length, False)
        denoise = diffusion.denoiser(emb, True)

        def model_fn(x: torch.Tensor, t: torch.Tensor, want_uncond: bool):
            cond, uncond = denoise(x.to(dt), t, want_uncond)
            return cond.float(), (uncond.float() if uncond is not None else None)

        shape = (latents.shape[0], diffusion.in_channels, length)
        mel = sample(model_fn, shape, sampler=s["sampler"], steps=int(s["diffusion_iterations"]),
                     cond_free=bool(s["cond_free"]), cond_free_k=float(s["cond_free_k"]),
                     generator=ctx.generator, temperature=float(s["diffusion_temperature"]),
                     device=store.device, progress=lambda d, t: ctx.step("diffusion", d, t))
        return denormalize_mel(mel)[:, :, :length]
