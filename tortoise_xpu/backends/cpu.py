"""The CPU backend: always available, float32 by default, memory from the OS."""

from __future__ import annotations

import os
import platform
import torch

from tortoise_xpu.backends.base import Backend, Capabilities, MemoryInfo, Quirks

__all__ = ["CPUBackend", "system_memory"]


def system_memory() -> MemoryInfo:
    """Total and available host RAM in bytes (``None`` where the OS will not say).

    Linux: ``/proc/meminfo`` (MemAvailable counts reclaimable page cache, unlike MemFree).
    Elsewhere: psutil when installed, else ``os.sysconf`` for the total only.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.strip()}
        total = fields.get("MemTotal")
        free = fields.get("MemAvailable", fields.get("MemFree"))
        if total:
            return MemoryInfo(total, free)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional; the usual answer on macOS and Windows

        vm = psutil.virtual_memory()
        return MemoryInfo(int(vm.total), int(vm.available))
    except Exception:
        pass
    try:
        return MemoryInfo(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None)
    except (ValueError, OSError, AttributeError):
        return MemoryInfo(None, None)


class CPUBackend(Backend):
    """The host CPU. Supports every dtype; float32 is the fast one on most CPUs."""

    name = "cpu"
    device_type = "cpu"
    indexed = False
    # audit_table stays None: the CPU runs every op and dtype.

    def _probe(self) -> str | None:
        return None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def device_names(self) -> list[str]:
        label = platform.processor() or platform.machine() or "CPU"
        return [f"{label} ({torch.get_num_threads()} threads)"]

    def runtime(self) -> str | None:
        return f"torch {torch.__version__}"

    def memory(self) -> MemoryInfo:
        return system_memory()

    def capabilities(self) -> Capabilities:
        return Capabilities(backend=self.name, float16=True, bfloat16=True, float64=True, complex=True,
                            graphs=False, unified_memory=True, is_cpu=True, weight_first_gemm=True,
                            quirks=self.quirks)

    @property
    def quirks(self) -> Quirks:
        return Quirks()

