"""Measuring an output against the CPU float32 reference, and the record each measurement leaves.

A :class:`Measurement` is one cell of the summary table (row: model/stage, column: backend and
precision); the plugin in ``tests/parity/plugin.py`` collects them and prints the table.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

from tests.parity.tolerances import TIE_WINDOW_FACTOR, Tolerance


@dataclass
class Measurement:
    """One output of one stage on one backend/precision, against the reference."""

    row: str                     # "autoregressive/decode[int]"
    column: str                  # "<device> <float32|float16|bfloat16|policy>"
    precision: str               # key of TOLERANCES actually used
    error: float                 # scaled max error (see tolerances.py)
    tol: float
    topk: float | None = None    # mean top-k overlap (logits only)
    k: int | None = None         # the k of that overlap
    min_topk: float | None = None
    top1: float | None = None    # fraction of rows whose arg-max agrees (ties excused)
    note: str = ""
    unit: str = ""               # set for counts ("mismatches"); empty for scaled errors
    failures: list[str] = field(default_factory=list)
    informational: bool = False  # shown in the table, never failed (the note says why)

    @property
    def ok(self) -> bool:
        return self.informational or not self.failures

    def as_information(self, why: str) -> "Measurement":
        """Keep the numbers for the table but assert nothing (``why`` goes into the note)."""
        self.informational = True
        self.failures.clear()
        self.note = f"{self.note}; {why}" if self.note else why
        return self

    def to_dict(self) -> dict:
        return {"row": self.row, "column": self.column, "precision": self.precision, "error": self.error,
                "tolerance": self.tol, "topk_overlap": self.topk, "min_topk": self.min_topk,
                "top1_agreement": self.top1, "note": self.note, "unit": self.unit,
                "informational": self.informational, "ok": self.ok, "failures": list(self.failures)}


def scaled_max_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max |ref|`` in float64 on the CPU (inf if shapes differ or values are not finite)."""
    out = out.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    if out.shape != ref.shape:
        return float("inf")
    if not bool(torch.isfinite(out).all()):
        return float("inf")
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    diff = float((out - ref).abs().max()) if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def tie_window(ref: torch.Tensor, tol: Tolerance) -> float:
    """Absolute logit gap under which two candidates count as tied at this precision."""
    return TIE_WINDOW_FACTOR * tol.rel * float(ref.detach().abs().max())


def top1_agreement(out: torch.Tensor, ref: torch.Tensor, window: float) -> float:
    """Fraction of rows (last axis = classes) whose arg-max is the reference's, or tied with it in ``ref``."""
    out = out.detach().to("cpu", torch.float64).reshape(-1, out.shape[-1])
    ref = ref.detach().to("cpu", torch.float64).reshape(-1, ref.shape[-1])
    pick = out.argmax(-1)
    best = ref.max(-1).values
    at_pick = ref.gather(-1, pick[:, None])[:, 0]
    return float(((best - at_pick) <= window).double().mean())


def topk_overlap(out: torch.Tensor, ref: torch.Tensor, k: int) -> float:
    """Mean over rows of |top-k(out) ∩ top-k(ref)| / k (last axis = classes)."""
    out = out.detach().to("cpu", torch.float64).reshape(-1, out.shape[-1])
    ref = ref.detach().to("cpu", torch.float64).reshape(-1, ref.shape[-1])
    k = min(k, out.shape[-1])
    a = out.topk(k, dim=-1).indices
    b = ref.topk(k, dim=-1).indices
    hits = (a[:, :, None] == b[:, None, :]).any(-1).double().sum(-1)
    return float((hits / k).mean())


def measure(row: str, column: str, precision: str, out: torch.Tensor, ref: torch.Tensor, tol: Tolerance,
            logits: bool = False, note: str = "") -> Measurement:
    """Compare ``out`` with ``ref``; logits are also checked by top-1 / top-k agreement."""
    m = Measurement(row, column, precision, scaled_max_error(out, ref), tol.rel, note=note)
    if tuple(out.shape) != tuple(ref.shape):
        m.failures.append(f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    elif m.error == float("inf"):
        m.failures.append("non-finite values")
    elif m.error > tol.rel:
        m.failures.append(f"scaled max error {m.error:.2e} > {tol.rel:.0e}")
    if logits and out.shape == ref.shape:
        m.k = min(tol.topk, out.shape[-1])
        m.topk, m.min_topk = topk_overlap(out, ref, tol.topk), tol.min_topk
        m.top1 = top1_agreement(out, ref, tie_window(ref, tol))
        if m.top1 < 1.0:
            m.failures.append(f"arg-max differs (not a tie) in {1 - m.top1:.1%} of rows")
        if m.topk < tol.min_topk:
            m.failures.append(f"top-{tol.topk} overlap {m.topk:.1%} < {tol.min_topk:.0%}")
    return m


def decisive_prefix(ref_logits: torch.Tensor, window: float) -> int:
    """Steps (leading axis) at whose every row the reference's top-1 leads the runner-up by more than ``window``.

    ``ref_logits``: (steps, B, V).  Greedy decodes must agree up to here; after a near-tie a
    lower precision may legitimately take the other branch.
    """
    top2 = ref_logits.detach().double().topk(2, dim=-1).values
    decided = ((top2[..., 0] - top2[..., 1]) > window).all(-1)
    undecided = (~decided).nonzero()
    return int(undecided[0, 0]) if undecided.numel() else int(decided.shape[0])


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """Float32 convolutions and matmuls without TF32 tensor cores, restored afterwards.

    cuDNN computes float32 convolutions in TF32 by default on NVIDIA Ampere and later; the
    float32 columns check float32 kernels, so that is switched off here (a no-op on machines
    without cuDNN).  The 'policy' columns keep torch's defaults, as the pipeline runs.
    """
    cudnn = getattr(torch.backends, "cudnn", None)
    saved_conv = getattr(cudnn, "allow_tf32", None)
    saved_matmul = torch.get_float32_matmul_precision()
    try:
        if saved_conv is not None:
            with contextlib.suppress(Exception):
                cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.set_float32_matmul_precision(saved_matmul)
        if saved_conv is not None:
            with contextlib.suppress(Exception):
                cudnn.allow_tf32 = saved_conv


_REDUCED: dict[str, bool] = {}


def reduced_float32(device: torch.device, is_cpu: bool) -> bool:
    """Whether float32 convolutions/matmuls on ``device`` run in reduced precision (TF32) right now.

    Measured rather than looked up, so it holds for any backend and any flag setting: a float32
    conv and matmul on the device against float64 on the CPU; float32 arithmetic lands ~1e-7 away,
    TF32 ~1e-3.  Cached per device and flag state.
    """
    if is_cpu:
        return False
    cudnn = getattr(torch.backends, "cudnn", None)
    key = f"{device}|{getattr(cudnn, 'allow_tf32', None)}|{torch.get_float32_matmul_precision()}"
    if key not in _REDUCED:
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(4, 64, 256, generator=g), torch.randn(64, 64, 3, generator=g)
        a, b = torch.randn(256, 256, generator=g), torch.randn(256, 256, generator=g)
        with torch.no_grad():
            conv = torch.nn.functional.conv1d(x.to(device), w.to(device), padding=1).cpu()
            mm = (a.to(device) @ b.to(device)).cpu()
            err = max(scaled_max_error(conv, torch.nn.functional.conv1d(x.double(), w.double(), padding=1)),
                      scaled_max_error(mm, a.double() @ b.double()))
        _REDUCED[key] = err > 1e-5
    return _REDUCED[key]
