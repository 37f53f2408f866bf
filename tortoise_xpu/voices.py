"""Voices: folders of reference clips, saved conditioning latents, random voices and ``a&b`` mixes.

A voice is found by name in the voice search path (``--voices-dir`` folders, then
``$TORTOISE_XPU_VOICES``, then the user data folder).  A voice folder holds either
audio clips (wav, flac, ogg, mp3 — whatever libsndfile reads) or exactly one ``.pth``
file with the tuple ``(ar_latent (1, 1024), diffusion_latent (1, 2048))`` written by
``tortoise-xpu latents``.  ``random`` asks the random-latent generators for a voice;
``a&b`` pools the clips of ``a`` and ``b`` (saved latents are averaged).  A path to a
folder or to clip files works wherever a name does.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from tortoise_xpu.errors import UserError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
LATENT_SUFFIXES = (".pth", ".pt")
RANDOM_VOICE = "random"
AR_LATENT_DIM = 1024
DIFFUSION_LATENT_DIM = 2048


@dataclass
class Voice:
    """A resolved voice: reference clips to encode and/or saved latents to average."""

    name: str
    clips: list[Path] = field(default_factory=list)
    latents: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    random: bool = False


def user_voices_dir() -> Path:
    """The per-user voices folder (``$XDG_DATA_HOME/tortoise-xpu/voices``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "tortoise-xpu" / "voices"


def voice_search_path(extra: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """Folders searched for voices, in order: ``extra``, ``$TORTOISE_XPU_VOICES`` (os.pathsep list), user dir."""
    dirs = [Path(d) for d in (extra or [])]
    env = os.environ.get("TORTOISE_XPU_VOICES")
    if env:
        dirs += [Path(d) for d in env.split(os.pathsep) if d]
    dirs.append(user_voices_dir())
    return dirs


def list_voices(dirs: Sequence[Path]) -> dict[str, Path]:
    """Every voice folder name found in ``dirs`` (first occurrence wins) → its path."""
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for sub in sorted(d.iterdir()):
            if sub.is_dir() and sub.name not in found and _voice_files(sub):
                found[sub.name] = sub
    return found


def _voice_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES + LATENT_SUFFIXES)


def load_latents(path: str | os.PathLike,
                 dims: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a conditioning-latents file safely (:func:`tortoise_xpu.safeload.load_torch`) and check its shapes.

    ``dims``: the expected (AR, diffusion) widths; None accepts any widths (the pipeline checks them
    against its models), and the official models' are (1024, 2048).
    """
    from tortoise_xpu import safeload

    path = Path(path)
    if not path.exists():
        raise UserError(f"latents file not found: {path}")
    try:
        # bounded, weights-only, memory-mapped; float dtypes only, finite values, no expanded views
        obj = safeload.load_torch(path, safeload.LATENTS, label=str(path))
    except safeload.CorruptFileError as exc:
        raise UserError(f"{path} is not a valid latents file ({exc.reason})") from None
    want = dims or (AR_LATENT_DIM, DIFFUSION_LATENT_DIM)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)):
        raise UserError(f"{path} must hold a tuple (ar_latent (1, {want[0]}), "
                        f"diffusion_latent (1, {want[1]})); found {type(obj).__name__}")
    shapes = [tuple(t.shape) for t in obj]
    ok = all(t.dim() == 1 or (t.dim() == 2 and t.shape[0] == 1) for t in obj) and all(t.numel() for t in obj)
    if ok:
        # a copy: the loaded tensors are mapped from the file, which may be replaced later
        ar, diff = (t.detach().to(torch.float32, copy=True).reshape(1, -1) for t in obj)
        ok = dims is None or (ar.shape[1], diff.shape[1]) == tuple(dims)
    if not ok:
        raise UserError(f"{path} has latents of shapes {shapes[0]} and {shapes[1]}; "
                        f"expected (1, {want[0]}) and (1, {want[1]})")
    return ar, diff


def average_latents(latents: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of several ``(ar, diffusion)`` latent pairs, per component (how ``a&b`` mixes voices)."""
    return (torch.stack([a for a, _ in latents]).mean(0), torch.stack([d for _, d in latents]).mean(0))


def save_latents(path: str | os.PathLike, ar: torch.Tensor, diffusion: torch.Tensor) -> None:
    """Write ``(ar, diffusion)`` latents atomically in the format ``load_latents`` reads."""
    from tortoise_xpu.fileio import atomic_path

    with atomic_path(path) as tmp:
        try:
            torch.save((ar.detach().float().cpu().reshape(1, -1), diffusion.detach().float().cpu().reshape(1, -1)),
                       tmp)
        except RuntimeError as exc:  # torch's zip writer reports a full disk as "unexpected pos ..."
            from tortoise_xpu.errors import TortoiseError
            from tortoise_xpu.fileio import write_failure_reason

            raise TortoiseError(f"cannot write {path}: {write_failure_reason(exc, tmp.parent, 1 << 16)}") from exc


def _from_folder(name: str, folder: Path) -> Voice:
    files = _voice_files(folder)
    latents = [p for p in files if p.suffix.lower() in LATENT_SUFFIXES]
    clips = [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES]
    if latents and not clips:
        if len(latents) > 1:
            raise UserError(f"voice folder {folder} holds {len(latents)} latents files; keep exactly one")
        return Voice(name, latents=[load_latents(latents[0])])
    if not clips:
        raise UserError(f"voice folder {folder} has no audio clips ({', '.join(AUDIO_SUFFIXES)}) "
                        f"and no latents file")
    # Clips win over a stray .pth (the original wrote raw clips into <voice>.pth, which is no latent).
    return Voice(name, clips=clips)


def resolve_voice(spec: str, dirs: Sequence[Path] | None = None) -> Voice:
    """Turn a voice spec (``name``, ``random``, ``a&b``, a folder, clip or latents path) into a ``Voice``."""
    if not spec or not spec.strip():
        raise UserError("empty voice name")
    dirs = list(dirs) if dirs is not None else voice_search_path()
    parts = [p.strip() for p in spec.split("&")]
    if any(not p for p in parts):
        raise UserError(f"bad voice combination {spec!r}: use names joined by '&', e.g. 'alice&bob'")
    voices = [_resolve_one(p, dirs) for p in parts]
    if len(voices) == 1:
        return voices[0]
    if any(v.random for v in voices):
        raise UserError("'random' cannot be combined with other voices")
    return Voice(spec, clips=[c for v in voices for c in v.clips], latents=[l for v in voices for l in v.latents])


def _resolve_one(spec: str, dirs: Sequence[Path]) -> Voice:
    if spec == RANDOM_VOICE:
        return Voice(RANDOM_VOICE, random=True)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_folder(path.name, path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in LATENT_SUFFIXES:
            return Voice(path.stem, latents=[load_latents(path)])
        return Voice(path.stem, clips=[path])
    if path.suffix.lower() in AUDIO_SUFFIXES + LATENT_SUFFIXES or os.sep in spec or "/" in spec:
        # Meant as a file or folder, not a voice name: say that it is missing.
        from tortoise_xpu.errors import AudioError

        kind = AudioError if path.suffix.lower() in AUDIO_SUFFIXES else UserError
        raise kind(f"{spec}: no such file or voice folder")
    known = list_voices(dirs)
    if spec in known:
        return _from_folder(spec, known[spec])
    near = difflib.get_close_matches(spec, list(known), n=5, cutoff=0.5)
    hint = (f"did you mean: {', '.join(near)}?" if near else
            f"known voices: {', '.join(sorted(known)[:20]) or 'none'}")
    where = ", ".join(str(d) for d in dirs)
    raise UserError(f"unknown voice {spec!r} ({hint}; searched {where}; 'random' needs no files)")


#: Voice clips are read up to this long: the AR encoder takes a random 6 s crop and the diffusion
#: encoder the first 4.3 s, so a 10-minute recording adds nothing but read time and memory.
CLIP_MAX_SECONDS = 30.0


def load_voice_clips(paths: Sequence[str | os.PathLike], sampling_rate: int = 22050,
                     max_seconds: float | None = CLIP_MAX_SECONDS) -> list[torch.Tensor]:
    """Read a voice's clips as (1, T) tensors, skipping unusable ones with a warning.

    Each clip goes through :func:`tortoise_xpu.audio.io.load_audio` (mono, resampled, at most
    ``max_seconds`` from its start).  A clip it refuses (unreadable, silent, NaN, too short) is
    skipped with an ``AudioWarning`` naming the reason when other clips are usable.

    Raises:
        AudioError: no clip is usable; the message lists every clip with its reason.
    """
    import warnings

    from tortoise_xpu.audio.io import AudioWarning, load_audio
    from tortoise_xpu.errors import AudioError

    clips, refused = [], []
    for p in paths:
        try:
            clips.append(load_audio(p, sampling_rate, max_seconds=max_seconds))
        except AudioError as exc:
            refused.append(str(exc))
    if not clips:
        if len(refused) == 1:
            raise AudioError(refused[0])
        raise AudioError(f"none of the {len(refused)} voice clips is usable: " + "; ".join(refused))
    for reason in refused:
        warnings.warn(f"skipping {reason}", AudioWarning, stacklevel=2)
    return clips
