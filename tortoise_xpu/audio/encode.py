"""Audio encoding to bytes: WAV, FLAC, Ogg Opus, MP3 and raw PCM, through libsndfile.

One entry point, :func:`encode`, for every place that turns synthesised audio into a file or an
HTTP body (the CLI's ``-o`` and the server's ``response_format``), and :func:`format_for_suffix`
for picking the format from an output file's name.  Streaming helpers (:func:`wav_stream_header`,
:func:`pcm16`) serve formats that can be sent chunk by chunk as they are produced.

``pcm`` is what OpenAI's speech API calls pcm: raw signed 16-bit little-endian mono samples at
the output rate, no header.  Every format here is encoded by libsndfile (>= 1.1 has MP3 and Opus),
so no other dependency is needed; :func:`available_formats` says which this libsndfile can write.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np

from tortoise_xpu.errors import TortoiseError, UserError

__all__ = ["FORMATS", "CONTENT_TYPES", "encode", "format_for_suffix", "available_formats", "pcm16",
           "wav_stream_header", "to_mono_float"]

#: Format name -> (libsndfile container, subtype); ``pcm`` is written here without libsndfile.
FORMATS: dict[str, tuple[str, str] | None] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "pcm": None,
}

#: The HTTP Content-Type of each format.
CONTENT_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "opus": "audio/ogg",
    "mp3": "audio/mpeg",
    "pcm": "audio/pcm",
}

_SUFFIXES = {".wav": "wav", ".flac": "flac", ".ogg": "opus", ".opus": "opus", ".mp3": "mp3", ".pcm": "pcm"}
# Rates libopus accepts; libsndfile refuses any other for Ogg Opus.
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def format_for_suffix(suffix: str) -> str:
    """The format of an output file suffix (``.wav``, ``.flac``, ``.ogg``/``.opus``, ``.mp3``, ``.pcm``).

    Raises:
        UserError: an unknown suffix (the message lists the known ones).
    """
    key = suffix.lower() if suffix.startswith(".") else "." + suffix.lower()
    if key not in _SUFFIXES:
        shown = f"'{suffix}'" if suffix else "no extension"
        names = list(_SUFFIXES)
        raise UserError(f"cannot tell the audio format from {shown}: end the output name with "
                        f"{', '.join(names[:-1])} or {names[-1]}")
    return _SUFFIXES[key]


def available_formats() -> list[str]:
    """The formats this process can encode (libsndfile builds without MP3/Opus lack those)."""
    import soundfile as sf

    have = sf.available_formats()
    out = []
    for name, spec in FORMATS.items():
        if spec is None:
            out.append(name)
        elif spec[0] in have and spec[1] in sf.available_subtypes(spec[0]):
            out.append(name)
    return out


def to_mono_float(wav: Any) -> np.ndarray:
    """A tensor or array of any shape holding one channel → a 1-D float32 numpy array in [-1, 1]."""
    if hasattr(wav, "detach"):
        wav = wav.detach().float().cpu().numpy()
    arr = np.asarray(wav, dtype=np.float32).reshape(-1)
    return np.clip(np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)


def pcm16(wav: Any) -> bytes:
    """Signed 16-bit little-endian PCM bytes of a mono signal (the ``pcm`` format, and WAV's data)."""
    return (to_mono_float(wav) * 32767.0).round().astype("<i2").tobytes()


def wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length (RIFF and data sizes 0xFFFFFFFF).

    Players and soundfile read such a stream to its end; follow it with :func:`pcm16` chunks.
    """
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))


def encode(wav: Any, sample_rate: int, fmt: str) -> bytes:
    """The whole signal ``wav`` (Tensor or ndarray, one channel) as the bytes of a ``fmt`` file.

    Raises:
        UserError: an unknown format, a format this libsndfile cannot write, or an Opus rate
            libopus does not support.
    """
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown audio format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "pcm":
        return pcm16(wav)
    if fmt not in available_formats():
        raise UserError(f"this libsndfile cannot encode {fmt} (it needs libsndfile >= 1.1 built with it); "
                        f"use one of: {', '.join(available_formats())}")
    if fmt == "opus" and sample_rate not in _OPUS_RATES:
        raise UserError(f"Opus cannot carry {sample_rate} Hz audio; it takes {', '.join(map(str, _OPUS_RATES))}")
    import soundfile as sf

    if hasattr(wav, "detach") and not bool(wav.detach().isfinite().all()):
        # A failure upstream: refuse rather than write silence where the NaNs were.
        raise TortoiseError("refusing to encode audio holding NaN or infinite samples")
    container, subtype = FORMATS[fmt]  # type: ignore[misc]
    buf = io.BytesIO()
    sf.write(buf, to_mono_float(wav), int(sample_rate), format=container, subtype=subtype)
    return buf.getvalue()
