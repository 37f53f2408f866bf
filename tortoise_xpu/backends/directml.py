"""DirectML (Windows, any DirectX 12 GPU) through the ``torch-directml`` package.

torch-directml is in maintenance mode and pins torch 2.4.1, so it lives in its
own environment.  Its devices are ``privateuseone:N``.  It reports no memory
figures, has no complex dtypes (so STFT must be real-valued or on the CPU), no
bf16, no autocast, and several ops that fall back to the CPU or are broken on
the device (DirectML issues #372, #437, #449, #431: multinomial, cumprod, repeat_interleave
with a tensor of repeats, eye); those are listed in :attr:`quirks` and its audit table.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
from typing import Any, ContextManager

import torch

from tortoise_xpu.backends.base import AuditRules, Backend, Capabilities, MemoryInfo, Quirks

__all__ = ["DirectMLBackend", "DML_CPU_OPS"]

#: Ops to run on the CPU under DirectML: no kernel (slow silent fallback) or a broken one
#: (``eye`` returns an empty tensor, ``repeat_interleave`` with a Tensor of repeats raises),
#: plus the complex FFT that STFT needs.
DML_CPU_OPS = frozenset({
    "aten::multinomial",
    "aten::cumprod",
    "aten::eye",
    "aten::repeat_interleave",
    "aten::_embedding_bag",
    "aten::normal",
    "aten::count_nonzero",
    "aten::_linalg_solve_ex",
    "aten::stft",
    "aten::_fft_r2c",
    "aten::_fft_c2r",
    "aten::_fft_c2c",
})


def _import_dml() -> tuple[Any, str | None]:
    """``(torch_directml module, None)``, or ``(None, reason)`` when it cannot be used."""
    try:
        return importlib.import_module("torch_directml"), None
    except ImportError:
        return None, ("torch-directml is not installed (Windows only: pip install torch-directml, "
                      "which pins torch 2.4.1)")
    except Exception as exc:  # e.g. a DLL load failure: a driver/runtime problem
        return None, f"torch-directml failed to load: {' '.join(str(exc).split())}"


_FALLBACK = "no DirectML kernel: silently falls back to the CPU (a host round trip per call)"


class DirectMLBackend(Backend):
    """``torch_directml``: DirectX 12 GPUs on Windows (AMD, Intel, NVIDIA, Qualcomm)."""

    name = "directml"
    aliases = ("dml",)
    device_type = "privateuseone"
    #: What must not run on a DirectML device (microsoft/DirectML issue numbers in the notes).
    audit_table = AuditRules(
        "directml",
        # No complex dtypes at all (#704, #421); float64 as the capabilities report it.
        forbidden_dtypes=frozenset({torch.complex64, torch.complex128, torch.float64}),
        fallback_ops={
            "aten::multinomial": f"{_FALLBACK} (#372)",
            "aten::cumprod": f"{_FALLBACK} (#437)",
            "aten::normal.Tensor_Tensor": f"{_FALLBACK} (#405)",
            "aten::_embedding_bag": f"{_FALLBACK} (#724)",
            "aten::count_nonzero": f"{_FALLBACK} (#665)",
            "aten::native_group_norm_backward": f"{_FALLBACK} (#678)",
            "aten::_linalg_solve_ex": f"{_FALLBACK} (#431)",
            "aten::to_sparse_csr": f"{_FALLBACK} (#414)",
        },
        broken_ops={
            "aten::eye": "broken on DirectML: returns an empty tensor (#431)",
            "aten::repeat_interleave.Tensor": "broken on DirectML: raises 'unbox expects Dml at::Tensor' (#449)",
            "aten::_thnn_fused_lstm_cell": "broken on DirectML: the fused LSTM cell crashes (#677)",
        },
        notes=("DirectML is in maintenance mode; torch-directml pins torch 2.4.1",))

    def _probe(self) -> str | None:
        dml, reason = _import_dml()
        if dml is None:
            return reason
        try:
            count = int(dml.device_count())
            available = bool(getattr(dml, "is_available", lambda: count > 0)())
        except Exception as exc:
            return f"DirectML driver error: {' '.join(str(exc).split())}"
        if count == 0 or not available:
            return "torch-directml found no DirectX 12 GPU"
        return None

    def device_count(self) -> int:
        dml, _ = _import_dml()
        if dml is None:
            return 0
        try:
            return int(dml.device_count())
        except Exception:
            return 0

    @property
    def device(self) -> torch.device:
        dml, _ = _import_dml()
        if dml is not None:
            with contextlib.suppress(Exception):
                return torch.device(dml.device(self.index))
        return torch.device(self.device_type, self.index)

    def device_names(self) -> list[str]:
        if self._probe() is not None:
            return []
        dml, _ = _import_dml()
        return [str(dml.device_name(i)) for i in range(self.device_count())]

    def runtime(self) -> str | None:
        return f"DirectML (torch {torch.__version__})"

    def memory(self) -> MemoryInfo:
        # torch-directml exposes only per-tile usage fractions, no free or total figure.
        return MemoryInfo(None, None)

    def capabilities(self) -> Capabilities:
        return Capabilities(backend=self.name, float16=True, bfloat16=False, float64=False, complex=False,
                            graphs=False, unified_memory=False, quirks=self.quirks)

    @property
    def quirks(self) -> Quirks:
        return Quirks(cpu_ops=DML_CPU_OPS, needs_real_stft=True, non_blocking_copies=False,
                      notes=("no complex dtypes: compute STFT without complex tensors or on the CPU",
                             "the device reports no memory figures; pass --batch-size to size batches"))

    def autocast(self, dtype: torch.dtype) -> ContextManager:
        # torch.autocast has no DirectML implementation; callers cast weights instead.
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        # No sync API: a device-to-host copy waits for the queue to drain.
        torch.zeros(1, device=self.device).cpu()

    def empty_cache(self) -> None:
        gc.collect()
