"""The shared pipeline: ``TextToSpeech``, its model store, run contexts and stages (presets, sampling,
long-form reading)."""

from tortoise_xpu.pipeline.context import RunContext, RunReport
from tortoise_xpu.pipeline.presets import PRESETS, preset_settings
from tortoise_xpu.pipeline.store import ModelStore
from tortoise_xpu.pipeline.tts import SAMPLE_RATE, TextToSpeech

__all__ = ["TextToSpeech", "ModelStore", "RunContext", "RunReport", "PRESETS", "preset_settings", "SAMPLE_RATE"]
