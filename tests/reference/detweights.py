"""Deterministic weights shared by the reference-golden scripts and our tests.

The golden files hold inputs and outputs only; both sides fill a model's
parameters with the same formula, so no state dict has to be committed.  This
module must import with torch alone: it runs in the original's venv too.

Each tensor ``name`` of the state dict, in sorted order, gets draws from one
CPU generator seeded with ``seed``:
  * 1-D ``*.weight`` / ``*.g`` / ``*.gamma`` (norm scales):  1 + 0.1 * N(0, 1)
  * other 1-D tensors (biases, scalars):                     0.1 * N(0, 1)
  * ≥ 2-D tensors:                                           N(0, 1) / sqrt(fan_in)
Integer buffers are left alone.  Buffers listed in ``skip`` are not touched
(e.g. fixed rotary frequencies).
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable

import torch


def _fan_in(shape: torch.Size) -> int:
    return max(1, math.prod(shape[1:]))


@torch.no_grad()
def fill_(model: torch.nn.Module, seed: int, skip: Iterable[str] = ()) -> torch.nn.Module:
    """Overwrite every floating-point tensor of ``model.state_dict()`` deterministically."""
    skip = set(skip)
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict(keep_vars=True)
    for name in sorted(sd):
        t = sd[name]
        if name in skip or not t.is_floating_point():
            continue
        draw = torch.randn(t.shape, generator=g, dtype=torch.float32)
        leaf = name.rsplit(".", 1)[-1]
        if t.dim() <= 1:
            if leaf in ("weight", "g", "gamma", "scale") and t.dim() == 1:
                value = 1.0 + 0.1 * draw
            else:
                value = 0.1 * draw
        else:
            value = draw / math.sqrt(_fan_in(t.shape))
        t.data.copy_(value.to(t.dtype))
    return model


def digest(model_or_sd) -> str:
    """sha256 over the sorted (name, shape, float32 bytes) of a state dict; equal digests, equal weights."""
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, torch.nn.Module) else model_or_sd
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.is_floating_point():
            t = t.float()
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()
