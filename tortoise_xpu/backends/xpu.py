"""Intel GPUs through native ``torch.xpu`` (PyTorch >= 2.5; Arc, Core Ultra iGPUs, Data Center Max).

Intel Extension for PyTorch (IPEX) is archived (March 2026) and is never
imported unless asked for: set ``TORTOISE_XPU_USE_IPEX=1`` with IPEX installed
(the ``ipex`` extra) and this backend imports it before probing (old IPEX
releases provide ``torch.xpu`` themselves) and uses ``ipex.optimize`` in
:meth:`XPUBackend.optimize`.

Memory: ``torch.xpu.mem_get_info`` exists from torch 2.6, but raises on
integrated GPUs (Meteor/Lunar/Panther Lake lack the SYCL free-memory aspect),
so it is not called there and free memory is reported as unknown.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from tortoise_xpu.backends.base import AuditRules, Capabilities, DeviceModuleBackend, MemoryInfo, Quirks
from tortoise_xpu.errors import UserError

__all__ = ["XPUBackend", "ipex_requested", "IPEX_ENV"]

#: Environment variable that opts in to the legacy Intel Extension for PyTorch.
IPEX_ENV = "TORTOISE_XPU_USE_IPEX"

_FFT_OPS = frozenset({"aten::_fft_r2c", "aten::_fft_c2r", "aten::_fft_c2c"})


def ipex_requested() -> bool:
    """True when the user opted in to IPEX through ``TORTOISE_XPU_USE_IPEX``."""
    return os.environ.get(IPEX_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _torch_at_least(version: str) -> bool:
    try:
        return torch.torch_version.TorchVersion(torch.__version__) >= version
    except Exception:
        return True


class XPUBackend(DeviceModuleBackend):
    """``torch.xpu``: Intel discrete and integrated GPUs."""

    name = "xpu"
    device_type = "xpu"
    #: Arc A-series and Core Ultra iGPUs have no float64 hardware, so float64 (and complex128)
    #: tensors must stay on the host; the quirks' CPU ops (FFT before torch 2.8) are merged in
    #: by ``audit_rules``.
    audit_table = AuditRules(
        "xpu", forbidden_dtypes=frozenset({torch.float64, torch.complex128}),
        notes=("Arc A-series and Core Ultra iGPUs have no float64 hardware (has_fp64 is False)",))
    graph_class = "XPUGraph"  # torch.xpu has it in recent builds; graph_runner() probes for it

    def __init__(self, index: int = 0):
        super().__init__(index)
        self._ipex: Any = None

    def _module(self) -> Any:
        return getattr(torch, "xpu", None)

    def _load_ipex(self) -> str | None:
        """Import IPEX when asked for; returns a reason string when that fails."""
        if not ipex_requested() or self._ipex is not None:
            return None
        try:
            import intel_extension_for_pytorch as ipex  # noqa: F401  (legacy, opt-in)
        except ImportError:
            return (f"{IPEX_ENV} is set but intel_extension_for_pytorch is not installed "
                    "(pip install 'tortoise-xpu[ipex]', or unset it to use native torch.xpu)")
        except Exception as exc:
            return f"intel_extension_for_pytorch failed to import: {' '.join(str(exc).split())}"
        self._ipex = ipex
        return None

    def _probe(self) -> str | None:
        reason = self._load_ipex()
        if reason:
            return reason
        xpu = self._module()
        if xpu is None:
            return (f"this torch ({torch.__version__}) has no torch.xpu; Intel GPUs need torch >= 2.5 "
                    "from the PyTorch XPU wheel index")
        is_compiled = getattr(xpu, "_is_compiled", None)
        if callable(is_compiled) and not is_compiled():
            return (f"this torch build ({torch.__version__}) has no XPU support; install torch from "
                    "the PyTorch XPU wheel index")
        try:
            count = int(xpu.device_count())
        except Exception as exc:
            return f"XPU driver error: {' '.join(str(exc).split())}"
        if count == 0 or not xpu.is_available():
            return "no Intel GPU found (is the Intel GPU driver with Level Zero installed?)"
        return None

    def runtime(self) -> str | None:
        version = getattr(torch.version, "xpu", None)
        label = f"SYCL {version}" if version else "XPU"
        return f"{label} + IPEX" if self._ipex is not None else label

    def _integrated(self, props: Any) -> bool:
        return bool(getattr(props, "is_integrated_gpu", False))

    def memory(self) -> MemoryInfo:
        try:
            props = self._properties()
            total = int(props.total_memory)
        except Exception:
            return MemoryInfo(None, None)
        free = None
        mem_get_info = getattr(self._module(), "mem_get_info", None)
        # Integrated GPUs raise here (no ext_intel_free_memory aspect); don't even ask.
        if mem_get_info is not None and not self._integrated(props):
            try:
                free = int(mem_get_info(self.index)[0])
            except Exception:
                free = None
        return MemoryInfo(total, free)

    def _bf16(self, props: Any) -> bool:
        native = getattr(props, "has_bfloat16_conversions", None)
        if native is not None:
            return bool(native)
        probe = getattr(self._module(), "is_bf16_supported", None)
        if probe is None:
            return True  # every GPU torch.xpu supports can compute in bf16
        try:
            return bool(probe())
        except Exception:
            return False

    def capabilities(self) -> Capabilities:
        try:
            props = self._properties()
        except Exception:
            props = None
        xpu = self._module()
        return Capabilities(
            backend=self.name,
            float16=bool(getattr(props, "has_fp16", True)),
            bfloat16=self._bf16(props) if props is not None else False,
            # Arc A-series and Core Ultra iGPUs have no float64 hardware.
            float64=bool(getattr(props, "has_fp64", False)),
            complex=True,
            graphs=xpu is not None and hasattr(xpu, "XPUGraph"),
            unified_memory=self._integrated(props),
            quirks=self.quirks,
        )

    @property
    def quirks(self) -> Quirks:
        # Before torch 2.8 the XPU build had no STFT/FFT kernels: those ops fell back to the CPU.
        cpu_ops = frozenset() if _torch_at_least("2.8") else _FFT_OPS
        # Without FFT kernels the real-valued STFT keeps the mels on the device (found by the audit).
        return Quirks(cpu_ops=cpu_ops, needs_real_stft=bool(cpu_ops), non_blocking_copies=False,
                      notes=("non_blocking host copies are slower on Intel iGPUs",))

    def optimize(self, module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        """``ipex.optimize`` for inference when IPEX was asked for; unchanged otherwise."""
        if self._ipex is None:
            reason = self._load_ipex()
            if reason:
                raise UserError(reason)
        if self._ipex is None:
            return module
        return self._ipex.optimize(module.eval(), dtype=None if dtype == torch.float32 else dtype, inplace=True)

