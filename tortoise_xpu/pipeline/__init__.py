"""The shared pipeline: ``TextToSpeech`` and its pieces (presets, sampling, long-form reading)."""

from tortoise_xpu.pipeline.presets import PRESETS, preset_settings
from tortoise_xpu.pipeline.tts import SAMPLE_RATE, RunReport, TextToSpeech

__all__ = ["TextToSpeech", "RunReport", "PRESETS", "preset_settings", "SAMPLE_RATE"]
