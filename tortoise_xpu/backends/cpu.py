"""The CPU backend: always available, memory from the OS, precisions from what the CPU can do.

Which dtype each stage runs in on a CPU is decided by ``policy.cpu_precision`` from a
:class:`~tortoise_xpu.backends.base.CPUFeatures`: the CPU's instruction sets (AVX-512 BF16,
AMX, VNNI, AVX2; torch's own probes first, ``/proc/cpuinfo`` where torch has none) and, where
they make a half type or int8 possible, a one-time micro-measurement of representative kernels
in each precision against float32 (one to three seconds, once per process and thread count; set
``TORTOISE_XPU_CPU_PROBE=0`` to decide from the flags alone).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Callable

import torch

from tortoise_xpu.backends.base import BF16_FLAGS, INT8_DOT_FLAGS, Backend, Capabilities, CPUFeatures, MemoryInfo, Quirks

__all__ = ["CPUBackend", "PROBE_ENV", "cpu_features", "cpu_flags", "measure_kernels", "system_memory"]

#: ``0`` (or off/false/no): decide the CPU's precisions from its flags only, measure nothing.
PROBE_ENV = "TORTOISE_XPU_CPU_PROBE"

#: Flags reported (the rest of the CPU's features do not decide anything here).
_RELEVANT = ("avx2", "avx512_f", "avx512_bw", "avx512_vl", *BF16_FLAGS, *INT8_DOT_FLAGS, "amx_tile", "amx_fp16",
             "avx512_fp16")
# /proc/cpuinfo spellings of the same features
_CPUINFO_NAMES = {"avx2": "avx2", "avx512f": "avx512_f", "avx512bw": "avx512_bw", "avx512vl": "avx512_vl",
                  "avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16", "avx512_vnni": "avx512_vnni",
                  "avx_vnni": "avx_vnni", "amx_int8": "amx_int8", "amx_tile": "amx_tile", "amx_fp16": "amx_fp16",
                  "avx512_fp16": "avx512_fp16"}


def cpu_flags() -> tuple[frozenset[str], str]:
    """The relevant instruction-set features of this CPU and where they were read from.

    ``torch.cpu.get_capabilities()`` (torch >= 2.9), else torch's ``torch.cpu._is_*_supported``
    probes (torch 2.4+: AVX2, AVX-512, AVX-512 BF16, VNNI, AMX tiles), completed from
    ``/proc/cpuinfo`` where it exists (Linux).
    """
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        try:
            caps = get()
            return frozenset(f for f in _RELEVANT if caps.get(f) is True), "torch.cpu.get_capabilities()"
        except Exception:
            pass
    flags: set[str] = set()
    sources = []
    probes = {"avx2": "_is_avx2_supported", "avx512_f": "_is_avx512_supported",
              "avx512_bf16": "_is_avx512_bf16_supported", "avx512_vnni": "_is_vnni_supported",
              "amx_tile": "_is_amx_tile_supported", "amx_fp16": "_is_amx_fp16_supported"}
    for flag, fn in probes.items():
        probe: Callable[[], bool] | None = getattr(torch.cpu, fn, None)
        if probe is not None:
            try:
                if probe():
                    flags.add(flag)
                sources.append("torch.cpu probes") if "torch.cpu probes" not in sources else None
            except Exception:
                pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags.update(_CPUINFO_NAMES[w] for w in line.split(":", 1)[1].split() if w in _CPUINFO_NAMES)
                    sources.append("/proc/cpuinfo")
                    break
    except OSError:
        pass
    return frozenset(flags), " + ".join(sources) or "nothing (no probe answered)"


def _speedup(base: Callable[[], object], other: Callable[[], object], rounds: int = 7) -> float:
    """Median over ``rounds`` of time(base) / time(other), the two timed back to back each round so
    that a neighbour's load, which changes from moment to moment, weighs on both alike.  (Three
    rounds and one warm-up call let one slow round decide: a 2-core VM's probe once measured
    bfloat16 at 0.8x and the next process at 1.9x.)"""
    for _ in range(2):  # first calls: kernel selection, weight packing, page faults
        base(), other()
    ratios = []
    for _ in range(rounds):
        start = time.perf_counter()
        base()
        mid = time.perf_counter()
        other()
        end = time.perf_counter()
        ratios.append((mid - start) / max(end - mid, 1e-9))
    return sorted(ratios)[len(ratios) // 2]


def _linear_kernel(weight: torch.Tensor, rows: int, dtype: torch.dtype, packed: bool) -> Callable[[torch.Tensor], object]:
    """``x -> x @ weight.T`` the way the pipeline runs it in ``dtype``: a prepacked oneDNN product
    where ``packed``, else float32 weight-first (``W @ x.T``) or ``F.linear`` for a half type."""
    if packed:
        from tortoise_xpu.models.packed import PackedLinear

        return PackedLinear(weight, None, dtype, rows)
    if dtype == torch.float32:
        return lambda x: torch.mm(weight, x.t())
    w = weight.to(dtype)
    return lambda x: torch.nn.functional.linear(x, w)


@torch.no_grad()
def measure_kernels(bf16: bool, int8: bool, packed: bool = False) -> tuple[tuple[str, float], ...]:
    """Time representative kernels of each stage in bfloat16 / int8 against float32 (this process's threads).

    * ``ar_b1``, ``ar_b16``: the AR model's widest linear (1024 -> 4096) at 1 and 16 rows, over four
      twelve distinct weights (192 MB in float32, 48 MB in int8: more than a CPU cache holds, as the
      1.7 GB model is; with fewer, int8 weights stayed in a 32 MB L3 and measured too fast);
      float32 and bfloat16 as the pipeline runs them (``packed``: prepacked oneDNN products, else
      float32 weight-first and bfloat16 ``F.linear``), int8 weights (``torch._weight_int8pack_mm``,
      bfloat16 activations) and, with several threads, the int8 product on one intra-op thread
      (``int8_1t``: on a busy machine it beat two threads).
    * ``diffusion``: a 1024 -> 1024 channel, kernel-3 convolution over 174 frames (the 40-code unit).
    * ``clvp``: a 768 -> 3072 linear over 512 rows.
    * ``vocoder``: a 128-channel, kernel-7, dilation-3 convolution over 4096 frames (HiFi-GAN's
      residual blocks).
    Returns ``(("bf16/ar_b1", speed-up), ...)``; speed-up = float32 time / other time.
    """
    if not (bf16 or int8):
        return ()
    g = torch.Generator().manual_seed(0)
    out: list[tuple[str, float]] = []
    ws = [torch.randn(4096, 1024, generator=g) * 0.02 for _ in range(12)]
    for rows, key in ((1, "ar_b1"), (16, "ar_b16")):
        x = torch.randn(rows, 1024, generator=g)
        xb = x.bfloat16()
        fp32 = [_linear_kernel(w, rows, torch.float32, packed) for w in ws]

        def base() -> None:
            for f in fp32:
                f(x)

        if bf16:
            half = [_linear_kernel(w, rows, torch.bfloat16, packed) for w in ws]
            out.append((f"bf16/{key}", _speedup(base, lambda: [f(xb) for f in half])))
            del half
        if int8 and hasattr(torch, "_weight_int8pack_mm"):
            from tortoise_xpu.models.quant import quantize_per_channel

            int8_weights = [(q, s.bfloat16()) for q, s in (quantize_per_channel(w) for w in ws)]
            out.append((f"int8/{key}", _speedup(base, lambda: [torch._weight_int8pack_mm(xb, q, s)
                                                                for q, s in int8_weights])))
            threads = torch.get_num_threads()
            if threads > 1:  # the same on one intra-op thread (Int8Linear.one_thread)

                def one_thread() -> None:
                    torch.set_num_threads(1)
                    try:
                        for q, s in int8_weights:
                            torch._weight_int8pack_mm(xb, q, s)
                    finally:
                        torch.set_num_threads(threads)

                out.append((f"int8_1t/{key}", _speedup(base, one_thread)))
        del fp32
    del ws
    if bf16:
        x = torch.randn(1, 1024, 174, generator=g)
        conv = torch.nn.Conv1d(1024, 1024, 3, padding=1)
        if packed:
            from tortoise_xpu.models.packed import PackedConv1d

            conv32, conv16 = PackedConv1d(conv, torch.float32, 174), PackedConv1d(conv, torch.bfloat16, 174)
        else:
            conv32, conv16 = conv, torch.nn.Conv1d(1024, 1024, 3, padding=1).bfloat16()
        xb = x.bfloat16()
        out.append(("bf16/diffusion", _speedup(lambda: conv32(x), lambda: conv16(xb))))
        # a HiFi-GAN residual-block convolution: 128 channels, kernel 7, over 0.17 s of 24 kHz audio
        x = torch.randn(1, 128, 4096, generator=g)
        w = torch.randn(128, 128, 7, generator=g) * 0.02
        xb, wb = x.bfloat16(), w.bfloat16()
        out.append(("bf16/vocoder", _speedup(lambda: torch.nn.functional.conv1d(x, w, padding=9, dilation=3),
                                             lambda: torch.nn.functional.conv1d(xb, wb, padding=9, dilation=3))))
        x = torch.randn(512, 768, generator=g)
        w = torch.randn(3072, 768, generator=g) * 0.02
        xb, wb = x.bfloat16(), w.bfloat16()
        out.append(("bf16/clvp", _speedup(lambda: torch.nn.functional.linear(x, w),
                                          lambda: torch.nn.functional.linear(xb, wb))))
    return tuple((k, round(v, 3)) for k, v in out)


@functools.lru_cache(maxsize=None)
def _probe(threads: int, measure: bool) -> CPUFeatures:
    flags, source = cpu_flags()
    bf16 = any(f in flags for f in BF16_FLAGS)
    int8 = any(f in flags for f in INT8_DOT_FLAGS)
    from tortoise_xpu.models.packed import packing_available

    packed = packing_available()
    speedups = measure_kernels(bf16, int8, packed) if measure else ()
    if speedups:
        source += f"; kernels measured at {threads} thread{'s' if threads != 1 else ''}"
    return CPUFeatures(flags=flags, speedups=speedups, int8_kernel=hasattr(torch, "_weight_int8pack_mm"),
                       source=source, packed_kernel=packed)


def _cpu_name() -> str | None:
    """The CPU's model name (torch's probe, else /proc/cpuinfo), or None."""
    get = getattr(torch.cpu, "get_capabilities", None)
    try:
        name = get().get("cpu_name") if get is not None else None
        if name:
            return str(name)
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return None


def cpu_features() -> CPUFeatures:
    """This CPU's :class:`CPUFeatures`: probed once per process and thread count (see the module docstring)."""
    measure = os.environ.get(PROBE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")
    return _probe(torch.get_num_threads(), measure)


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
        label = _cpu_name() or platform.processor() or platform.machine() or "CPU"
        return [f"{label} ({torch.get_num_threads()} threads)"]

    def runtime(self) -> str | None:
        return f"torch {torch.__version__}"

    def memory(self) -> MemoryInfo:
        return system_memory()

    def capabilities(self) -> Capabilities:
        return Capabilities(backend=self.name, float16=True, bfloat16=True, float64=True, complex=True,
                            graphs=False, unified_memory=True, is_cpu=True, weight_first_gemm=True,
                            quirks=self.quirks, cpu=cpu_features())

    def describe(self) -> dict:
        info = super().describe()
        if info["available"]:
            info["cpu_features"] = cpu_features().to_dict()
        return info

    @property
    def quirks(self) -> Quirks:
        return Quirks()

