"""Devices this machine does not have: one catalogue of simulated devices, and the CPU standing in for one.

:data:`SIM_DEVICES` is the one catalogue of simulated devices: the tests make the real detection
code see each of them (``tests/simdevices.py`` fakes ``torch.cuda`` / ``torch.xpu`` / ... from
these entries, and the policy table in docs/backends.md is generated from them), and
:data:`TYPICAL_DEVICES` picks one per backend for :class:`SimulatedBackend`, which ``doctor`` and
the portability audit run the pipeline on: tensors on the CPU, planned as for the target device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

import torch

from tortoise_xpu.backends.base import AuditRules, Capabilities, CPUFeatures, MemoryInfo, Quirks
from tortoise_xpu.backends.cpu import CPUBackend

__all__ = ["AVX2_CPU", "SIM_BY_KEY", "SIM_DEVICES", "SimDevice", "SimulatedBackend", "TYPICAL_DEVICES"]

GiB = 1 << 30

#: An AVX2-only CPU (AMD Zen 1): no bfloat16 or int8 dot-product instructions; the simulated CPU's default.
AVX2_CPU = CPUFeatures(flags=frozenset({"avx2"}), int8_kernel=True, source="simulated AVX2-only CPU")


@dataclass(frozen=True)
class SimDevice:
    """One simulated device: what its driver would report.

    ``total`` / ``free`` are bytes; ``free=None``: the driver cannot report free memory (and
    ``total=None``: not even the total).  ``cuda_major`` is the compute capability (cuda only),
    ``macos`` the macOS major version (mps only).
    """

    key: str
    label: str
    backend: str
    name: str
    total: int | None
    free: int | None
    fp16: bool = True
    bf16: bool = True
    fp64: bool = True
    complex: bool = True
    unified_memory: bool = False
    integrated: bool = False
    is_cpu: bool = False
    cuda_major: int = 8
    macos: int = 14
    cpu: CPUFeatures | None = None  # the host CPU's features (cpu only; None: an AVX2-only CPU)

    def capabilities(self) -> Capabilities:
        """What the policy sees of this device (graph capture off: nothing simulated can capture)."""
        return Capabilities(self.backend, float16=self.fp16, bfloat16=self.bf16, float64=self.fp64,
                            complex=self.complex, unified_memory=self.unified_memory, is_cpu=self.is_cpu,
                            weight_first_gemm=self.is_cpu, cpu=(self.cpu or AVX2_CPU) if self.is_cpu else None)

    def memory(self) -> MemoryInfo:
        return MemoryInfo(self.total, self.free)


SIM_DEVICES: tuple[SimDevice, ...] = (
    SimDevice("arc-a770", "Intel Arc A770 16 GB", "xpu", "Intel(R) Arc(TM) A770 Graphics",
              16_225_243_136, 15_900_000_000, fp64=False),
    SimDevice("arc-a750", "Intel Arc A750 8 GB", "xpu", "Intel(R) Arc(TM) A750 Graphics",
              8_096_681_984, 7_800_000_000, fp64=False),
    SimDevice("arc-a380", "Intel Arc A380 6 GB", "xpu", "Intel(R) Arc(TM) A380 Graphics",
              6_064_967_680, 5_800_000_000, fp64=False),
    SimDevice("meteor-lake", "Intel Meteor Lake iGPU (shared 16 GiB, mem_get_info raises)", "xpu",
              "Intel(R) Arc(TM) Graphics", 16 * GiB, None, fp64=False, unified_memory=True, integrated=True),
    SimDevice("rtx-3090", "NVIDIA RTX 3090 24 GB", "cuda", "NVIDIA GeForce RTX 3090",
              25_438_126_080, 24_900_000_000, cuda_major=8),
    SimDevice("gtx-1650", "NVIDIA GTX 1650 4 GB (fp16, no bf16)", "cuda", "NVIDIA GeForce GTX 1650",
              4_100_521_984, 3_700_000_000, bf16=False, cuda_major=7),
    SimDevice("h100", "NVIDIA H100 80 GB", "cuda", "NVIDIA H100 80GB HBM3",
              84_929_216_512, 84_300_000_000, cuda_major=9),
    SimDevice("apple-m2", "Apple M2 24 GB unified (Metal working set 16 GiB)", "mps", "Apple M2",
              16 * GiB, None, fp64=False, unified_memory=True),
    SimDevice("directml", "DirectML GPU (no memory figures)", "directml", "AMD Radeon RX 6600",
              None, None, bf16=False, fp64=False, complex=False),
    SimDevice("cpu", "CPU only, AVX2 (16 GiB RAM, 12 GiB available)", "cpu", "x86_64",
              16 * GiB, 12 * GiB, unified_memory=True, is_cpu=True),
)
SIM_BY_KEY: Mapping[str, SimDevice] = {d.key: d for d in SIM_DEVICES}

#: The device a simulated run of each backend plans for when the real one is absent.
TYPICAL_DEVICES: Mapping[str, SimDevice] = {
    "xpu": SIM_BY_KEY["arc-a770"], "directml": SIM_BY_KEY["directml"], "mps": SIM_BY_KEY["apple-m2"],
    "cuda": SIM_BY_KEY["rtx-3090"], "cpu": SIM_BY_KEY["cpu"],
}


class SimulatedBackend(CPUBackend):
    """The host CPU standing in for another backend's device.

    Tensors live on the CPU, but the capabilities, quirks and memory are the target's (a
    :data:`TYPICAL_DEVICES` entry unless given), so ``policy_for`` plans the run exactly as
    it would for that device: its dtypes per stage, the real-valued STFT where complex
    tensors are missing, its batch size and residency.  Pass it as ``device=`` to
    ``TextToSpeech`` and run under an audit ``Recorder`` to audit the target's code path.
    """

    name = "simulated"

    def __init__(self, target: str, capabilities: Capabilities | None = None, memory: MemoryInfo | None = None):
        from tortoise_xpu.backends import backend_class

        super().__init__(0)
        cls = backend_class(target)
        self.target = cls.name
        self._quirks = cls(0).quirks
        typical = TYPICAL_DEVICES[self.target]
        caps = capabilities or typical.capabilities()
        self._caps = dataclasses.replace(caps, graphs=False, quirks=self._quirks)
        self._memory = memory if memory is not None else typical.memory()
        self.label = typical.label if capabilities is None else f"{self.target} (given capabilities)"

    def __repr__(self) -> str:
        return f"SimulatedBackend({self.target!r})"

    def device_names(self) -> list[str]:
        return [f"{self.label}, simulated on the CPU"]

    def runtime(self) -> str | None:
        return f"torch {torch.__version__} (CPU, simulating {self.target})"

    def memory(self) -> MemoryInfo:
        return self._memory

    def capabilities(self) -> Capabilities:
        return self._caps

    @property
    def quirks(self) -> Quirks:
        return self._quirks

    @property
    def audit_rules(self) -> AuditRules:
        """The target's rules: a simulated run is judged as a run on the target device."""
        from tortoise_xpu.backends import backend_class

        return backend_class(self.target)(0).audit_rules

    def empty_cache(self) -> None:
        """Nothing to return to a driver (and no garbage collection: it would only slow the audit)."""

