"""Audio front end: file I/O, resampling, mel features and conditioning-clip preparation, in plain torch.

    >>> import torch
    >>> from tortoise_xpu.audio import ar_mel, univnet_mel, resample
    >>> clip = torch.randn(1, 22050) * 0.1
    >>> ar_mel(clip).shape, univnet_mel(resample(clip, 22050, 24000)).shape
    (torch.Size([1, 80, 87]), torch.Size([1, 100, 94]))
"""

from tortoise_xpu.audio.conditioning import (
    AR_CLIP_SAMPLES,
    DIFFUSION_CLIP_SAMPLES,
    crop_ar_clip,
    pad_or_truncate,
    prepare_ar_clips,
    prepare_diffusion_clip,
    prepare_diffusion_clips,
)
from tortoise_xpu.audio.io import AudioWarning, audio_info, load_audio, save_wav
from tortoise_xpu.audio.mel import AR_MEL, UNIVNET_MEL, MelSpec, ar_mel, load_mel_norms, log_mel, univnet_mel
from tortoise_xpu.audio.resample import resample

__all__ = [
    "load_audio", "save_wav", "audio_info", "AudioWarning", "resample",
    "ar_mel", "univnet_mel", "log_mel", "load_mel_norms", "MelSpec", "AR_MEL", "UNIVNET_MEL",
    "prepare_ar_clips", "prepare_diffusion_clips", "prepare_diffusion_clip", "crop_ar_clip", "pad_or_truncate",
    "AR_CLIP_SAMPLES", "DIFFUSION_CLIP_SAMPLES",
]
