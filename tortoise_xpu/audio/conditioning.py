"""Reference clips -> the fixed-length waveforms the conditioning encoders were trained on.

AR model (and CVVP): 22.05 kHz clips of exactly ``AR_CLIP_SAMPLES`` (132300, 6 s);
shorter clips are zero-padded at the end, longer ones cropped at a random offset.
The original drew that offset from Python's ``random``; here it comes from the
``torch.Generator`` the caller passes, so one seed gives one crop on every device.

Diffusion model: the clip resampled 22.05 -> 24 kHz, then its *first*
``DIFFUSION_CLIP_SAMPLES`` (102400, 4.27 s), zero-padded if shorter.  No random crop.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from tortoise_xpu.audio.rates import AR_SAMPLE_RATE, DIFFUSION_SAMPLE_RATE
from tortoise_xpu.audio.resample import resample

__all__ = [
    "AR_CLIP_SAMPLES",
    "DIFFUSION_CLIP_SAMPLES",
    "AR_SAMPLE_RATE",
    "DIFFUSION_SAMPLE_RATE",
    "pad_or_truncate",
    "crop_ar_clip",
    "prepare_ar_clips",
    "prepare_diffusion_clip",
    "prepare_diffusion_clips",
]

AR_CLIP_SAMPLES = 132300
DIFFUSION_CLIP_SAMPLES = 102400


def _as_clip(clip: torch.Tensor) -> torch.Tensor:
    # Accept (T) or (1, T); work on (1, T).
    if clip.dim() == 1:
        return clip.unsqueeze(0)
    if clip.dim() == 2 and clip.shape[0] == 1:
        return clip
    raise ValueError(f"a voice clip must be shaped (T) or (1, T), got {tuple(clip.shape)}")


def pad_or_truncate(clip: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad the end of ``clip`` or cut it to ``length`` samples (last dimension)."""
    have = clip.shape[-1]
    if have < length:
        return F.pad(clip, (0, length - have))
    return clip[..., :length]


def crop_ar_clip(clip: torch.Tensor, generator: torch.Generator | None = None,
                 length: int = AR_CLIP_SAMPLES) -> torch.Tensor:
    """One clip ``(1, length)``: zero-padded if shorter, else a crop at an offset drawn
    uniformly from ``0 .. T - length`` (inclusive) with ``generator``."""
    clip = _as_clip(clip)
    gap = clip.shape[-1] - length
    if gap <= 0:
        return pad_or_truncate(clip, length)
    start = int(torch.randint(0, gap + 1, (1,), generator=generator).item())
    return clip[:, start:start + length]


def prepare_ar_clips(clips: Sequence[torch.Tensor] | torch.Tensor, generator: torch.Generator | None = None,
                     length: int = AR_CLIP_SAMPLES) -> list[torch.Tensor]:
    """AR conditioning clips: each 22.05 kHz clip as ``(1, length)``, crops drawn in list order.

    Feed each to :func:`tortoise_xpu.audio.mel.ar_mel` (``(1, 80, 517)``) and stack
    along dim 1 for ``UnifiedVoice.get_conditioning``: ``(1, n_clips, 80, 517)``.
    """
    if isinstance(clips, torch.Tensor):
        clips = [clips]
    return [crop_ar_clip(c, generator, length) for c in clips]


def prepare_diffusion_clip(clip: torch.Tensor, source_rate: int = AR_SAMPLE_RATE,
                           length: int = DIFFUSION_CLIP_SAMPLES) -> torch.Tensor:
    """One diffusion conditioning clip: resampled to 24 kHz, first ``length`` samples, ``(1, length)``."""
    clip = _as_clip(clip)
    if source_rate != DIFFUSION_SAMPLE_RATE:
        clip = resample(clip, source_rate, DIFFUSION_SAMPLE_RATE)
    return pad_or_truncate(clip, length)


def prepare_diffusion_clips(clips: Sequence[torch.Tensor] | torch.Tensor, source_rate: int = AR_SAMPLE_RATE,
                            length: int = DIFFUSION_CLIP_SAMPLES) -> list[torch.Tensor]:
    """Diffusion conditioning clips for a list of ``source_rate`` clips, each ``(1, length)`` at 24 kHz.

    Feed each to :func:`tortoise_xpu.audio.mel.univnet_mel` (``(1, 100, 401)``).
    """
    if isinstance(clips, torch.Tensor):
        clips = [clips]
    return [prepare_diffusion_clip(c, source_rate, length) for c in clips]
