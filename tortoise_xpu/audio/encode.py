"""Encoding audio into a file format's bytes: WAV, FLAC, OGG/Vorbis and MP3 (through libsndfile).

The interface (``FORMATS``, :func:`encode`, :func:`format_for_suffix`) is shared by the CLI (the
output's extension chooses the format) and the HTTP server (``response_format``).
"""

from __future__ import annotations

import io
from types import MappingProxyType
from typing import Mapping

import numpy as np
import torch

from tortoise_xpu.errors import TortoiseError, UserError

__all__ = ["FORMATS", "encode", "format_for_suffix"]

#: Format name -> media type.
FORMATS: Mapping[str, str] = MappingProxyType({
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "mp3": "audio/mpeg",
})

# libsndfile container and sample encoding per format.
_SOUNDFILE = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
              "mp3": ("MP3", "MPEG_LAYER_III")}
_ALIASES = {"wave": "wav", "oga": "ogg"}


def format_for_suffix(suffix: str) -> str:
    """The format of a file extension (``".wav"``, ``"FLAC"``, ``".mp3"``); UserError for any other."""
    key = suffix.lower().lstrip(".")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        shown = f"'{suffix}'" if suffix else "no extension"
        names = [f".{f}" for f in FORMATS]
        raise UserError(f"cannot tell the audio format from {shown}: end the output name with "
                        f"{', '.join(names[:-1])} or {names[-1]}")
    return key


def encode(wav: torch.Tensor | np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Mono audio in [-1, 1] (``(T)``, ``(1, T)`` or ``(1, 1, T)``) as the bytes of a ``fmt`` file.

    Samples are clipped to [-1, 1] (16-bit PCM and lossy codecs would wrap or distort beyond).
    Raises TortoiseError for NaN or infinite samples (a failure upstream) and UserError for an
    unknown format.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown audio format {fmt!r}; choose one of {', '.join(FORMATS)}")
    import soundfile as sf

    data = wav.detach().float().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav, np.float32)
    data = data.reshape(-1)
    if not np.isfinite(data).all():
        raise TortoiseError("refusing to encode audio holding NaN or infinite samples")
    container, subtype = _SOUNDFILE[fmt]
    buf = io.BytesIO()
    try:
        sf.write(buf, np.clip(data, -1.0, 1.0), int(sample_rate), format=container, subtype=subtype)
    except Exception as exc:  # soundfile.LibsndfileError: e.g. a libsndfile built without MP3
        raise TortoiseError(f"cannot encode {fmt}: {' '.join(str(exc).split()) or type(exc).__name__}") from exc
    return buf.getvalue()
