"""Builders of hostile files for the safe-loader tests and the fuzz test (tests/test_safeload.py,
tests/test_fuzz.py): each is small on disk and would cost gigabytes, run code, or poison a run
if it were loaded naively."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch


class Evil:
    """Unpickling this would create ``marker`` (open(marker, "w"))."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def expanded_latents(path: Path, elements: int = 3 * 10**9) -> Path:
    """Latents whose AR tensor is 512 floats of storage (2 kB) viewed with stride 0 as ``elements``
    floats (12 GB by default): copying it (``.float()``, ``.reshape``, ``.contiguous``) would
    allocate all of it."""
    base = torch.zeros(512)
    ar = base.as_strided((1, elements), (0, 0))
    torch.save((ar, torch.zeros(1, 2048)), path)
    return path


def zip_bomb(path: Path, elements: int = 1 << 27) -> Path:
    """A torch archive of one float tensor (1, ``elements``) whose storage entry is deflated zeros:
    about 0.1 % of its unpacked size on disk (512 MB unpacked by default)."""
    marker = 123457  # a size no other field of the pickle has, replaced by ``elements`` below
    buf = io.BytesIO()
    torch.save(torch.zeros(1, marker), buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(struct.pack("<i", marker), struct.pack("<i", elements))
            if info.filename.endswith("/data/0"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with out.open(entry, "w", force_zip64=True) as f:
                    zeros = bytes(1 << 20)
                    for _ in range(elements * 4 // len(zeros)):
                        f.write(zeros)
                continue
            out.writestr(info.filename, data)
    return path


def pickle_payload(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A latents/checkpoint file whose pickle would call ``open(marker, "w")``."""
    payload = (torch.zeros(1, 64), Evil(str(marker)))
    if legacy:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    else:
        torch.save(payload, path)
    return path


def latents_of(path: Path, ar: torch.Tensor, diff: torch.Tensor | None = None) -> Path:
    """A latents file of the given tensors (int / bool / complex / NaN latents)."""
    torch.save((ar, diff if diff is not None else torch.zeros(1, 2048)), path)
    return path


def safetensors_with_header(path: Path, header: dict, data: bytes = b"") -> Path:
    """A safetensors file with a hand-written header (lying offsets, huge shapes, odd dtypes)."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path
