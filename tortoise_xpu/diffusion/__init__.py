"""Gaussian diffusion for the Tortoise decoder: schedules, respacing and samplers (p, ddim, dpm++2m).

Typical use (what the pipeline does)::

    mel = latents_to_mel(diffusion_model, ar_latents, diffusion_conditioning, steps=80, sampler="p",
                         cond_free=True, cond_free_k=2.0, temperature=1.0, generator=cpu_generator)
"""

from tortoise_xpu.diffusion.samplers import (
    SAMPLERS,
    TACOTRON_MEL_MAX,
    TACOTRON_MEL_MIN,
    denormalize_mel,
    latents_to_mel,
    output_length,
    sample,
)
from tortoise_xpu.diffusion.schedule import TRAINED_STEPS, DiffusionSchedule, linear_betas, space_timesteps

__all__ = [
    "SAMPLERS",
    "TACOTRON_MEL_MAX",
    "TACOTRON_MEL_MIN",
    "TRAINED_STEPS",
    "DiffusionSchedule",
    "denormalize_mel",
    "latents_to_mel",
    "linear_betas",
    "output_length",
    "sample",
    "space_timesteps",
]
