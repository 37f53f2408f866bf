"""Generation presets: the original's four, plus the fast fork's ``single_sample`` and ``very_fast``."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from tortoise_xpu.errors import UserError

# The original's base settings, applied under every preset (tortoise/api.py tts_with_preset).
BASE_SETTINGS: Mapping[str, Any] = MappingProxyType({
    "temperature": 0.8,
    "length_penalty": 1.0,
    "repetition_penalty": 2.0,
    "top_p": 0.8,
    "cond_free_k": 2.0,
    "diffusion_temperature": 1.0,
})

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    # Original (neonbjb/tortoise-tts api.py).
    "ultra_fast": MappingProxyType({"num_autoregressive_samples": 16, "diffusion_iterations": 30, "cond_free": False}),
    "fast": MappingProxyType({"num_autoregressive_samples": 96, "diffusion_iterations": 80}),
    "standard": MappingProxyType({"num_autoregressive_samples": 256, "diffusion_iterations": 200}),
    "high_quality": MappingProxyType({"num_autoregressive_samples": 256, "diffusion_iterations": 400}),
    # From tortoise-tts-fast (its samplers; our base settings, not its temperature 0.2).
    "single_sample": MappingProxyType({"num_autoregressive_samples": 8, "diffusion_iterations": 10,
                                       "sampler": "ddim"}),
    "very_fast": MappingProxyType({"num_autoregressive_samples": 32, "diffusion_iterations": 30,
                                   "sampler": "dpm++2m"}),
})

# tts() defaults of the original for everything a preset does not set.
TTS_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "num_autoregressive_samples": 512,
    "temperature": 0.8,
    "length_penalty": 1.0,
    "repetition_penalty": 2.0,
    "top_p": 0.8,
    "top_k": 50,
    "typical_sampling": False,
    "typical_mass": 0.9,
    "max_mel_tokens": 500,
    "cvvp_amount": 0.0,
    "diffusion_iterations": 100,
    "cond_free": True,
    "cond_free_k": 2.0,
    "diffusion_temperature": 1.0,
    "sampler": "p",
})

DEFAULT_PRESET = "fast"


def preset_settings(preset: str, **overrides: Any) -> dict[str, Any]:
    """The full settings dict for ``preset``: tts() defaults < base settings < preset < overrides."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    settings = {**TTS_DEFAULTS, **BASE_SETTINGS, **PRESETS[preset]}
    unknown = set(overrides) - set(TTS_DEFAULTS)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(sorted(unknown))}; valid: {', '.join(TTS_DEFAULTS)}")
    from tortoise_xpu.pipeline.validate import check_settings

    settings.update(check_settings({k: v for k, v in overrides.items() if v is not None}))
    return settings


def resolve_settings(settings: Mapping[str, Any], force_tokens: int | None = None):
    """Merge ``settings`` over the tts() defaults and check them for the AR stage.

    Returns ``(settings dict, SamplingSettings, number of codes to generate)``; ``force_tokens``
    (a benchmark knob) replaces ``max_mel_tokens``.  Raises UserError for unknown keys and for values
    outside their range in :data:`tortoise_xpu.pipeline.validate.RANGES` (NaN and infinities included).
    """
    from tortoise_xpu.pipeline.sampling import SamplingSettings

    unknown = set(settings) - set(TTS_DEFAULTS)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(sorted(unknown))}; valid: {', '.join(TTS_DEFAULTS)}")
    from tortoise_xpu.pipeline.validate import check_setting, check_settings

    # every knob in its range and finite (pipeline/validate.py), before anything runs
    s = check_settings({**TTS_DEFAULTS, **{k: v for k, v in settings.items() if v is not None}})
    force_tokens = check_setting("force_tokens", force_tokens)
    max_tokens = int(force_tokens if force_tokens else s["max_mel_tokens"])
    try:
        sampling = SamplingSettings(temperature=s["temperature"], top_p=s["top_p"], top_k=s["top_k"],
                                    repetition_penalty=s["repetition_penalty"],
                                    typical_sampling=s["typical_sampling"], typical_mass=s["typical_mass"],
                                    length_penalty=s["length_penalty"])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return s, sampling, max_tokens
