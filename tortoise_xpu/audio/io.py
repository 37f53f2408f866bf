"""Reading voice clips and writing results.

Reading goes through libsndfile (``soundfile``): WAV, FLAC, OGG/Vorbis, AIFF and,
with libsndfile >= 1.1, MP3.  Integer PCM is scaled to [-1, 1) (int16 / 2**15,
int32 / 2**31, as the original's scipy reader did), channels are averaged to mono
(the original kept only the first channel), the clip is resampled to the rate the
caller needs and clipped to [-1, 1].

Clips that cannot make a voice are refused with an :class:`AudioError` that says
what was found (no samples, NaN/inf, digital silence, shorter than
``MIN_SECONDS``); doubtful ones (clipped, very quiet, short, beyond full scale) pass
with an :class:`AudioWarning`.

Writing is atomic (temporary file + rename), 24 kHz 16-bit PCM by default.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from tortoise_xpu.audio.rates import SAMPLE_RATE
from tortoise_xpu.audio.resample import resample
from tortoise_xpu.errors import AudioError, TortoiseError

__all__ = ["AudioWarning", "load_audio", "save_wav", "audio_info", "check_audio_output", "write_audio", "STDOUT",
           "MIN_SECONDS", "SHORT_SECONDS"]

MIN_SECONDS = 0.25      # refused below this
SHORT_SECONDS = 2.0     # warned below this (voice clips work best at 6-10 s)
SILENT_PEAK = 1e-4      # -80 dBFS: refused at or below
QUIET_PEAK = 1e-2       # -40 dBFS: warned below
CLIP_LEVEL = 0.999      # a sample this close to full scale counts as clipped...
CLIPPED_FRACTION = 1e-3  # ...and more than 0.1 % of them is a warning
#: At most this many samples (frames x channels) are read from one file: 64 Mi float32 samples is
#: 256 MB, 20 minutes of 24 kHz stereo.  The header's counts are checked before anything is read, so a
#: small file that claims a huge rate, length or channel count cannot make the reader allocate them.
MAX_SAMPLES = 1 << 26
MAX_CHANNELS = 64


class AudioWarning(UserWarning):
    """A clip that is usable but likely to give a poor voice."""


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(sample_rate, frames, channels)`` of an audio file, without reading the samples."""
    import soundfile as sf

    path = _existing(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile.LibsndfileError / RuntimeError, by version
        raise AudioError(f"{path}: not a readable audio file ({_why(exc)})") from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def load_audio(path: str | os.PathLike, sampling_rate: int, *, max_seconds: float | None = None,
               check: bool = True) -> torch.Tensor:
    """Read an audio file as a mono float32 tensor ``(1, T)`` at ``sampling_rate``.

    Args:
        path: any file libsndfile reads (wav, flac, ogg, mp3 with libsndfile >= 1.1, ...).
        sampling_rate: rate of the returned samples; the file is resampled if it differs.
        max_seconds: read at most this many seconds from the start (long recordings are not
            read whole).  ``None`` reads everything.
        check: refuse unusable clips and warn about doubtful ones (see the module doc).
            ``False`` still refuses NaN/inf, which would poison every later stage.

    Raises:
        AudioError: missing/unreadable file, no samples, NaN/inf, silence, too short.
    """
    import soundfile as sf

    path = _existing(path)
    try:
        with sf.SoundFile(str(path)) as f:
            rate = int(f.samplerate)
            frames = -1 if max_seconds is None else max(1, math.ceil(max_seconds * rate))
            total = int(f.frames)
            _check_size(path, rate, total if frames < 0 else min(frames, total), int(f.channels))
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: not a readable audio file ({_why(exc)})") from None
    samples = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]))
    _inspect(samples, rate, path, check)
    if check and 0 <= frames < total:  # a long recording: only its start was read
        warnings.warn(f"{path}: only the first {max_seconds:g} s of {total / rate:.0f} s are used",
                      AudioWarning, stacklevel=2)
    if rate != sampling_rate:
        try:
            samples = resample(samples, rate, sampling_rate)
        except ValueError as exc:  # an odd or corrupt sample rate in the header
            raise AudioError(f"{path}: {exc}") from None
    return samples.clamp_(-1.0, 1.0).unsqueeze(0)


def _check_size(path: Path, rate: int, frames: int, channels: int) -> None:
    """Refuse, before reading, a file whose header promises more samples than :data:`MAX_SAMPLES`
    (or more channels than :data:`MAX_CHANNELS`, or no usable rate)."""
    if rate <= 0:
        raise AudioError(f"{path}: not a readable audio file (sample rate {rate} Hz)")
    if channels > MAX_CHANNELS:
        raise AudioError(f"{path}: {channels} channels; at most {MAX_CHANNELS} are read")
    if frames * channels > MAX_SAMPLES:
        raise AudioError(f"{path}: too long to read ({frames:,} frames x {channels} channels at {rate} Hz is more "
                         f"than {MAX_SAMPLES:,} samples); cut the part you need into its own file")


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file")
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes)")
    return path


def _why(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _inspect(samples: torch.Tensor, rate: int, path: Path, check: bool) -> None:
    """Refuse or warn about a clip, saying what was found."""
    n = samples.numel()
    if n == 0:
        raise AudioError(f"{path}: the file holds no samples")
    finite = torch.isfinite(samples)
    if not bool(finite.all()):
        bad = n - int(finite.sum())
        raise AudioError(f"{path}: {bad} of {n} samples are NaN or infinite")
    if not check:
        return
    seconds = n / rate
    peak = float(samples.abs().max())
    if peak <= SILENT_PEAK:
        level = "digital silence" if peak == 0 else f"peak {20 * math.log10(peak):.0f} dBFS"
        raise AudioError(f"{path}: the clip is silent ({level}); record the voice louder")
    if seconds < MIN_SECONDS:
        raise AudioError(f"{path}: the clip is only {seconds:.2f} s long; voice clips need at least "
                         f"{MIN_SECONDS} s (6-10 s of speech works best)")
    notes = []
    if seconds < SHORT_SECONDS:
        notes.append(f"only {seconds:.1f} s long (6-10 s of speech works best)")
    if peak < QUIET_PEAK:
        notes.append(f"very quiet (peak {20 * math.log10(peak):.0f} dBFS)")
    if peak > 1.0:
        notes.append(f"beyond full scale (peak {peak:.2f}); samples are clipped to [-1, 1]")
    clipped = int((samples.abs() >= CLIP_LEVEL).sum())
    if clipped > CLIPPED_FRACTION * n:
        notes.append(f"clipped ({clipped} samples, {100 * clipped / n:.1f} %, at full scale)")
    if notes:
        warnings.warn(f"{path}: " + "; ".join(notes), AudioWarning, stacklevel=3)


_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".aiff": "AIFF", ".aif": "AIFF", ".mp3": "MP3"}


def save_wav(path: str | os.PathLike, wav: torch.Tensor | np.ndarray, sr: int = SAMPLE_RATE,
             subtype: str = "PCM_16") -> Path:
    """Write audio to ``path`` atomically (temporary file in the same folder, then rename).

    Args:
        wav: ``(T)``, ``(1, T)``, ``(1, 1, T)`` (mono) or ``(C, T)`` samples in [-1, 1], any device.
        sr: sample rate (Tortoise's output is 24 kHz).
        subtype: ``"PCM_16"`` (default; samples are clipped to [-1, 1]) or ``"FLOAT"``
            (32-bit float, not clipped), or any other libsndfile subtype of the format.
            The container comes from the extension (.wav, .flac, .ogg, .aiff; WAV otherwise).

    Returns:
        The path written.

    Raises:
        TortoiseError: the audio holds NaN/inf (a failure upstream; nothing is written).
    """
    import soundfile as sf

    from tortoise_xpu.fileio import atomic_path, write_failure_reason

    data = wav.detach().float().cpu().numpy() if isinstance(wav, torch.Tensor) \
        else np.asarray(wav, dtype=np.float32)
    while data.ndim > 1 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        data = data.T  # soundfile wants (frames, channels)
    elif data.ndim != 1:
        raise ValueError(f"cannot write audio shaped {wav.shape}")
    if not np.isfinite(data).all():
        raise TortoiseError(f"refusing to write {path}: the audio holds NaN or infinite samples")
    if subtype.upper().startswith("PCM") or subtype.upper() in ("ULAW", "ALAW"):
        data = np.clip(data, -1.0, 1.0)  # libsndfile would wrap around, not clip
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower(), "WAV")
    with atomic_path(path) as tmp:
        try:
            sf.write(str(tmp), data, int(sr), subtype=subtype.upper(), format=fmt)
        except OSError:
            raise  # atomic_path turns it into a one-line error
        except Exception as exc:  # soundfile.LibsndfileError: its message is often empty on a full disk
            raise TortoiseError(f"cannot write {path}: {write_failure_reason(exc, tmp.parent, data.nbytes)}") \
                from exc
    return path


#: ``-o -``: write to standard output instead of a file.
STDOUT = "-"


def check_audio_output(target: str | os.PathLike) -> str:
    """Check an audio output up front, before any synthesis; returns its format name.

    ``-`` is standard output (WAV).  Otherwise the path must be writable as a regular file
    (:func:`tortoise_xpu.fileio.check_writable`: encodable name within NAME_MAX / PATH_MAX, no device
    node or FIFO replaced) and its extension must name a format of :mod:`tortoise_xpu.audio.encode`.
    """
    from tortoise_xpu.audio.encode import format_for_suffix
    from tortoise_xpu.fileio import check_writable

    if os.fspath(target) == STDOUT:
        return "wav"
    path = check_writable(target)
    return format_for_suffix(path.suffix)


def write_audio(target: str | os.PathLike, wav: torch.Tensor, sr: int = SAMPLE_RATE, *, float32: bool = False) -> str:
    """Write audio where :func:`check_audio_output` allowed: in the format the extension names,
    atomically, or as WAV bytes to standard output for ``-``.  ``float32`` writes 32-bit float WAV
    (other formats keep their own encoding).  Returns the target as a string."""
    import sys

    from tortoise_xpu.audio.encode import encode
    from tortoise_xpu.fileio import atomic_write_bytes

    fmt = check_audio_output(target)
    if os.fspath(target) == STDOUT:
        data = encode(wav, sr, fmt)
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return STDOUT
    if fmt == "wav":
        if not float32:
            wav = wav.clamp(-1.0, 1.0)  # 16-bit PCM would wrap beyond full scale
        save_wav(target, wav, sr, subtype="FLOAT" if float32 else "PCM_16")
    else:
        atomic_write_bytes(target, encode(wav, sr, fmt))  # clipped to full scale by the encoder
    return os.fspath(target)
