"""Apple silicon GPUs through Metal Performance Shaders (``mps``).

One device, memory shared with the host.  The driver reports no free memory;
the total is Metal's recommended working-set size when torch exposes it, else
the machine's RAM.  No float64; bf16 needs macOS 14.
"""

from __future__ import annotations

import contextlib
import gc
import platform
import subprocess
import sys
from typing import Any

import torch

from tortoise_xpu.backends.base import AuditRules, Backend, Capabilities, MemoryInfo, Quirks
from tortoise_xpu.backends.cpu import system_memory

__all__ = ["MPSBackend"]


def _mps_backend() -> Any:
    return getattr(torch.backends, "mps", None)


def _mps_module() -> Any:
    return getattr(torch, "mps", None)


def _macos_at_least(major: int) -> bool:
    probe = getattr(_mps_backend(), "is_macos_or_newer", None)
    if probe is not None:
        try:
            return bool(probe(major, 0))
        except Exception:
            pass
    release = platform.mac_ver()[0]
    try:
        return int(release.split(".")[0]) >= major
    except ValueError:
        return False


class MPSBackend(Backend):
    """``torch.backends.mps``: the GPU of an Apple-silicon Mac."""

    name = "mps"
    device_type = "mps"
    indexed = False
    #: Apple GPUs have no float64 (nor complex128): Metal has no 64-bit float type.
    audit_table = AuditRules("mps", forbidden_dtypes=frozenset({torch.float64, torch.complex128}),
                             notes=("MPS has no float64: Metal shaders have no 64-bit float type",))

    def _probe(self) -> str | None:
        mps = _mps_backend()
        if mps is None or not mps.is_built():
            return f"this torch build ({torch.__version__}) has no MPS support (MPS needs torch for macOS)"
        if not mps.is_available():
            if sys.platform != "darwin":
                return "MPS is only available on macOS"
            return "MPS is built but not available (needs macOS 12.3+ on Apple silicon)"
        return None

    def device_count(self) -> int:
        return 1 if self._probe() is None else 0

    @property
    def device(self) -> torch.device:
        return torch.device(self.device_type, self.index)

    def device_names(self) -> list[str]:
        if self._probe() is not None:
            return []
        chip = None
        if sys.platform == "darwin":
            with contextlib.suppress(Exception):
                chip = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                      text=True, timeout=2).stdout.strip() or None
        return [f"{chip or 'Apple'} GPU (MPS)"]

    def runtime(self) -> str | None:
        release = platform.mac_ver()[0]
        return f"Metal (macOS {release})" if release else "Metal"

    def memory(self) -> MemoryInfo:
        total = None
        recommended = getattr(_mps_module(), "recommended_max_memory", None)
        if recommended is not None:
            with contextlib.suppress(Exception):
                total = int(recommended())
        if total is None:
            total = system_memory().total
        return MemoryInfo(total, None)

    def capabilities(self) -> Capabilities:
        return Capabilities(backend=self.name, float16=True, bfloat16=_macos_at_least(14), float64=False,
                            complex=True, graphs=False, unified_memory=True, quirks=self.quirks)

    @property
    def quirks(self) -> Quirks:
        # Complex FFT support on MPS has varied across torch and macOS releases; the
        # real-valued STFT is exact and works everywhere, so it is used here.
        return Quirks(needs_real_stft=True, non_blocking_copies=False,
                      notes=("set PYTORCH_ENABLE_MPS_FALLBACK=1 to run ops without an MPS kernel on the CPU",))

    def synchronize(self) -> None:
        _mps_module().synchronize()

    def empty_cache(self) -> None:
        gc.collect()
        with contextlib.suppress(Exception):
            _mps_module().empty_cache()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        with contextlib.suppress(Exception):
            _mps_module().manual_seed(seed)

    def peak_memory(self) -> int | None:
        # torch.mps reports current allocations only; there is no peak counter.
        return None

