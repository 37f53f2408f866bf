"""Loaders for the small data assets of the original package.

Nothing of the original is shipped here: ``tokenizer.json`` and ``mel_norms.pth``
are obtained at run time into the models folder (``tortoise_xpu.assets``) and
read with the functions below.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tortoise_xpu.assets.catalogue import MEL_NORMS_FILE, N_MEL_NORMS, TOKENIZER_FILE
from tortoise_xpu.errors import ModelFileError

__all__ = ["MEL_NORMS_FILE", "TOKENIZER_FILE", "load_mel_norms"]


def load_mel_norms(path: str | os.PathLike) -> torch.Tensor:
    """The 80 per-band divisors of the AR conditioning mel, as a float32 CPU tensor ``(80,)``.

    Raises:
        ModelFileError: the file is missing, unreadable, or does not hold 80 finite non-zero values.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} not found; {MEL_NORMS_FILE} is the original tortoise-tts package's "
                             f"tortoise/data/{MEL_NORMS_FILE} and belongs in the models folder (--models-dir)")
    from tortoise_xpu import safeload

    try:  # bounded, weights-only, float dtypes and finite values only (safeload.py)
        norms = safeload.load_torch(path, safeload.MEL_NORMS, label=str(path))
    except safeload.CorruptFileError as exc:
        raise ModelFileError(f"{path} cannot be read as a torch file ({exc.reason})") from None
    except safeload.UnsafeFileError as exc:
        raise ModelFileError(str(exc)) from None
    if not isinstance(norms, torch.Tensor) or norms.shape != (N_MEL_NORMS,):
        shape = tuple(norms.shape) if isinstance(norms, torch.Tensor) else type(norms).__name__
        raise ModelFileError(f"{path} should hold {N_MEL_NORMS} mel band norms, found {shape}")
    norms = norms.to(torch.float32, copy=True)  # a copy: the loaded tensor is mapped from the file
    if not torch.isfinite(norms).all() or (norms == 0).any():
        raise ModelFileError(f"{path} holds non-finite or zero mel band norms")
    return norms
