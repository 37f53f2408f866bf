"""NVIDIA CUDA and AMD ROCm: one backend, because PyTorch exposes HIP through ``torch.cuda``.

A ROCm build of torch has ``torch.version.hip`` set and uses ``cuda``/``cuda:N``
device strings; the registry accepts ``rocm`` as an alias on such a build.
"""

from __future__ import annotations

from typing import Any

import torch

from tortoise_xpu.backends.base import Capabilities, DeviceModuleBackend, MemoryInfo, Quirks

__all__ = ["CUDABackend", "is_rocm_build"]


def is_rocm_build() -> bool:
    """True when this torch was built for ROCm/HIP (``torch.version.hip`` is set)."""
    return getattr(torch.version, "hip", None) is not None


class CUDABackend(DeviceModuleBackend):
    """``torch.cuda``: NVIDIA GPUs, and AMD GPUs on a ROCm build."""

    name = "cuda"
    aliases = ("rocm",)
    device_type = "cuda"
    # audit_table stays None: CUDA and ROCm run every op and dtype the pipeline uses.
    graph_class = "CUDAGraph"

    def _module(self) -> Any:
        return torch.cuda

    def _probe(self) -> str | None:
        if getattr(torch.version, "cuda", None) is None and not is_rocm_build():
            return (f"this torch build ({torch.__version__}) has no CUDA or ROCm support; "
                    "install a CUDA or ROCm build of torch")
        kind = "ROCm" if is_rocm_build() else "CUDA"
        # device_count() comes from NVML/HIP without creating a context; is_available() may
        # swallow a driver error and just return False, so ask for the count first.
        try:
            count = int(torch.cuda.device_count())
        except Exception as exc:
            return f"{kind} driver error: {' '.join(str(exc).split())}"
        if count == 0 or not torch.cuda.is_available():
            return f"no {kind} GPU found (is the {'amdgpu' if kind == 'ROCm' else 'NVIDIA'} driver loaded?)"
        return None

    def runtime(self) -> str | None:
        if is_rocm_build():
            return f"ROCm {torch.version.hip}"
        version = getattr(torch.version, "cuda", None)
        return f"CUDA {version}" if version else None

    def memory(self) -> MemoryInfo:
        total = free = None
        try:
            free, total = (int(v) for v in torch.cuda.mem_get_info(self.index))
        except Exception:
            try:
                total = int(self._properties().total_memory)
            except Exception:
                pass
        return MemoryInfo(total, free)

    def _bf16(self, props: Any) -> bool:
        if is_rocm_build():
            try:
                return bool(torch.cuda.is_bf16_supported())
            except Exception:
                return False
        # Native bf16 needs Ampere (sm_80) or newer; torch's is_bf16_supported() also counts
        # slow emulation on older cards, which we do not want to pick by default.
        major = getattr(props, "major", 0)
        return major >= 8

    def capabilities(self) -> Capabilities:
        try:
            props = self._properties()
        except Exception:
            props = None
        return Capabilities(
            backend=self.name,
            float16=True,
            bfloat16=self._bf16(props) if props is not None else False,
            float64=True,
            complex=True,
            graphs=hasattr(torch.cuda, "CUDAGraph"),
            unified_memory=bool(getattr(props, "is_integrated", False)),
            quirks=self.quirks,
        )

    @property
    def quirks(self) -> Quirks:
        if is_rocm_build():
            return Quirks(notes=("ROCm: HIP through the torch.cuda API",))
        return Quirks()

