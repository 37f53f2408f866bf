"""The ``Backend`` base class and the small frozen records it hands out.

A backend is one kind of device (the CPU, CUDA/ROCm, Intel XPU, Apple MPS,
DirectML).  Everything the rest of the package needs to know about a device
goes through one of these objects, so no code outside ``tortoise_xpu.backends``
ever compares device-type strings.

A ``Backend`` is cheap to build and never touches the device in ``__init__``:
detection happens in :meth:`Backend.is_available` /
:meth:`Backend.why_unavailable`, which read the torch module attributes at call
time (that is also what lets the tests simulate hardware by monkeypatching
``torch.xpu``, ``torch.cuda``, ``torch.backends.mps`` or ``torch_directml``).
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, ContextManager, Mapping, NamedTuple, TypeVar

import torch

__all__ = ["AuditRules", "Backend", "CPUFeatures", "Capabilities", "MemoryInfo", "Quirks", "dtype_name",
           "normalize_op_name"]

T = TypeVar("T")

#: The dtypes a backend can be asked about; the order is the order shown to users.
KNOWN_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                         torch.complex64)

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.float64: "float64", torch.complex64: "complex64", torch.complex128: "complex128"}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the spelling the CLI's ``--dtype`` takes)."""
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def normalize_op_name(op: Any) -> str:
    """Reduce an aten op to its overload-free schema name, e.g. ``"aten::multinomial"``.

    Accepts ``"aten::multinomial"``, ``"aten.multinomial.default"``, a bare
    ``"multinomial"`` or an ``OpOverload``/``OpOverloadPacket`` object (as a
    ``TorchDispatchMode`` sees them).
    """
    schema = getattr(op, "_schema", None)
    if schema is not None:
        return schema.name
    name = str(op)
    if "::" in name:
        return name.split(".")[0]
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "aten":
        return f"aten::{parts[1]}"
    return f"aten::{name}"


@dataclass(frozen=True)
class Quirks:
    """What must be done differently on a backend.

    ``cpu_ops`` are aten ops (schema names, ``"aten::multinomial"``) that have no
    kernel on the device, or a broken one, and so must be run on the CPU (or
    written another way) by the code that calls them.  ``needs_real_stft`` means
    complex tensors cannot be used, so STFT/mel features must be computed with a
    real-valued formulation or on the CPU.  ``non_blocking_copies`` is False
    where asynchronous host copies are known to be slower or unsafe.
    """

    cpu_ops: frozenset[str] = frozenset()
    needs_real_stft: bool = False
    non_blocking_copies: bool = True
    notes: tuple[str, ...] = ()

    def must_run_on_cpu(self, op: Any) -> bool:
        """True when ``op`` (any spelling :func:`normalize_op_name` accepts) is a CPU-only op here."""
        return normalize_op_name(op) in self.cpu_ops

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_ops": sorted(self.cpu_ops), "needs_real_stft": self.needs_real_stft,
                "non_blocking_copies": self.non_blocking_copies, "notes": list(self.notes)}


def _op_matches(pattern: str, op: str) -> bool:
    """``"aten::eye"`` matches every overload of eye; ``"aten::normal.Tensor_Tensor"`` just that one."""
    return pattern == op or pattern == op.split(".")[0]


@dataclass(frozen=True)
class AuditRules:
    """What must not run on one backend's device: the portability audit's rules (``backends/audit.py``).

    ``forbidden_dtypes``: tensors of these dtypes cannot live on the device.
    ``fallback_ops``: op pattern -> note; no device kernel, so the op silently runs on the
    CPU (a host round trip per call, e.g. inside the AR loop).  ``broken_ops``: op pattern
    -> note; the device kernel gives wrong results or crashes.  ``quirk_ops``: the schema
    names the backend's ``Quirks.cpu_ops`` route to the CPU (merged in by ``Backend.audit_rules``).
    Patterns are ``"aten::name"`` (every overload) or ``"aten::name.overload"``.
    """

    backend: str
    forbidden_dtypes: frozenset[torch.dtype] = frozenset()
    fallback_ops: Mapping[str, str] = field(default_factory=dict)
    broken_ops: Mapping[str, str] = field(default_factory=dict)
    quirk_ops: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()

    def with_quirks(self, quirks: Quirks) -> "AuditRules":
        """These rules plus the ops ``quirks`` say must run on the CPU."""
        return AuditRules(self.backend, self.forbidden_dtypes, self.fallback_ops, self.broken_ops,
                          self.quirk_ops | frozenset(quirks.cpu_ops), self.notes)

    def problems(self, op: str, dtypes: tuple[torch.dtype, ...]) -> list[tuple[str, str]]:
        """``(kind, why)`` for everything wrong with running ``op`` on ``dtypes`` on this device.

        Kinds: ``"dtype"``, ``"broken"``, ``"fallback"``, ``"quirk"``.  Empty when legal.
        """
        found: list[tuple[str, str]] = []
        bad = [dtype_name(d) for d in dict.fromkeys(dtypes) if d in self.forbidden_dtypes]
        if bad:
            found.append(("dtype", f"{', '.join(bad)} tensors on the device ({self.backend} has no {bad[0]})"))
        for kind, table in (("broken", self.broken_ops), ("fallback", self.fallback_ops)):
            for pattern, why in table.items():
                if _op_matches(pattern, op):
                    found.append((kind, why))
                    break
        if not any(k in ("broken", "fallback") for k, _ in found):
            if any(_op_matches(p, op) for p in self.quirk_ops):
                found.append(("quirk", f"{self.backend} quirks route this op to the CPU"))
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "forbidden_dtypes": sorted(dtype_name(d) for d in self.forbidden_dtypes),
                "fallback_ops": dict(self.fallback_ops), "broken_ops": dict(self.broken_ops),
                "quirk_ops": sorted(self.quirk_ops), "notes": list(self.notes)}


# ---------------------------------------------------------------------------------------------------
# CPU precision facts (the "perf" part: instruction sets and measured kernel speeds of the host CPU,
# from which policy.cpu_precision picks each stage's dtype and the AR's int8 weights)
# ---------------------------------------------------------------------------------------------------

#: Instruction-set features that decide a CPU's fast precisions (names as torch.cpu.get_capabilities()).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CPUFeatures:
    """What a CPU can do fast, as probed (``backends.cpu.cpu_features``) or simulated in tests.

    ``flags``: the relevant instruction-set features present (``avx2``, ``avx512_f``,
    ``avx512_bf16``, ``avx512_vnni``, ``avx_vnni``, ``amx_tile``, ``amx_bf16``, ``amx_int8``, ...).
    ``speedups``: measured speed of a kernel against its float32 version (> 1: faster), as
    ``(("bf16/ar_b1", 0.9), ("int8/ar_b1", 4.1), ...)``; keys are ``<kind>/<kernel>`` with kind
    ``bf16`` or ``int8`` and kernel ``ar_b1``/``ar_b16`` (an AR linear at 1 / 16 rows),
    ``diffusion`` (a 1024-channel conv over 174 frames), ``clvp`` (a 512-row transformer linear) or
    ``vocoder`` (a 128-channel dilated conv over 4096 frames).
    Empty when nothing was measured.  ``int8_kernel``: torch has the weight-only int8 product.
    ``packed_kernel``: torch can prepack weights for oneDNN (``models.packed``); then every kernel
    is measured, float32 included, the packed way, as the pipeline runs it.
    """

    flags: frozenset[str] = frozenset()
    speedups: tuple[tuple[str, float], ...] = ()
    int8_kernel: bool = False
    source: str = ""
    packed_kernel: bool = False

    @property
    def bf16(self) -> bool:
        """bfloat16 arithmetic in hardware (AVX-512 BF16 or AMX-BF16), not emulated."""
        return any(f in self.flags for f in BF16_FLAGS)

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags or "amx_int8" in self.flags

    @property
    def int8_dot(self) -> bool:
        """int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX-INT8)."""
        return any(f in self.flags for f in INT8_DOT_FLAGS)

    def speedup(self, key: str) -> float | None:
        """The measured speed-up of ``key`` (e.g. ``"bf16/diffusion"``), or None when not measured."""
        return dict(self.speedups).get(key)

    def to_dict(self) -> dict[str, Any]:
        return {"flags": sorted(self.flags), "bf16": self.bf16, "int8_dot": self.int8_dot, "amx": self.amx,
                "int8_kernel": self.int8_kernel,
                "packed_kernel": self.packed_kernel, "speedups": dict(self.speedups), "source": self.source}


@dataclass(frozen=True)
class Capabilities:
    """The facts about one device that the policy is computed from (see ``policy.make_policy``).

    Pure data, so policies can be computed for simulated or remote devices too.
    """

    backend: str
    float16: bool = False
    bfloat16: bool = False
    float64: bool = True
    complex: bool = True
    graphs: bool = False
    #: The device shares the host's RAM (Apple silicon, Intel iGPUs): moving a model
    #: "off" the device frees nothing, and free memory is not known to the driver.
    unified_memory: bool = False
    #: The host CPU itself: no transfers at all, and float32 is the fast dtype.
    is_cpu: bool = False
    #: Products with few rows (AR decoding: 16 rows against a 1024x3072 weight) run faster as
    #: ``weight @ x.T`` with the weight stored out-major than as ``x @ weight.T``.  True for MKL's
    #: float32 sgemm (the CPU: 1.6-2.1x at 16-32 rows, measured in docs/performance.md).
    weight_first_gemm: bool = False
    quirks: Quirks = field(default_factory=Quirks)
    #: The host CPU's precision facts (the CPU backend only; None elsewhere).
    cpu: CPUFeatures | None = None

    def supports(self, dtype: torch.dtype) -> bool:
        """Whether tensors of ``dtype`` can be computed with on this device."""
        if dtype == torch.float32:
            return True
        if dtype == torch.float16:
            return self.float16
        if dtype == torch.bfloat16:
            return self.bfloat16
        if dtype == torch.float64:
            return self.float64
        if dtype in (torch.complex64, torch.complex128):
            return self.complex and (dtype == torch.complex64 or self.float64)
        return True  # integer and bool tensors work everywhere we run

    def dtypes(self) -> list[str]:
        """Names of the supported floating/complex dtypes, for listings."""
        return [dtype_name(d) for d in KNOWN_DTYPES if self.supports(d)]


class MemoryInfo(NamedTuple):
    """Device memory in bytes; ``None`` where the platform cannot say."""

    total: int | None
    free: int | None


class Backend:
    """One device of one backend kind.

    Subclasses set the class attributes and override the ``_probe*`` hooks and
    whatever device calls differ.  The public surface (what the pipeline uses):

    ``name``, ``device``, ``index``, ``is_available()``, ``why_unavailable()``,
    ``device_count()``, ``device_names()``, ``device_name()``, ``memory()``,
    ``supports(dtype)``, ``supports_complex``, ``supports_float64``,
    ``autocast(dtype)``, ``synchronize()``, ``empty_cache()``,
    ``manual_seed(seed)``, ``peak_memory()``, ``reset_peak_memory()``,
    ``graphs``, ``quirks``, ``audit_rules``, ``capabilities()``, ``to_device(x)``,
    ``optimize(module, dtype)`` and ``describe()``.
    """

    #: Registry name (what ``--device`` takes, before any ``:N``).
    name: ClassVar[str] = ""
    #: Other names accepted for this backend by the registry.
    aliases: ClassVar[tuple[str, ...]] = ()
    #: torch device type of this backend's tensors.
    device_type: ClassVar[str] = ""
    #: Whether ``name:N`` is meaningful (several devices of this kind may exist).
    indexed: ClassVar[bool] = True
    #: What must not run on this backend's device (the portability audit); None: nothing.
    audit_table: ClassVar[AuditRules | None] = None

    def __init__(self, index: int = 0):
        if index < 0:
            raise ValueError(f"device index must be >= 0, got {index}")
        self.index = index

    # ------------------------------------------------------------------ detection
    def is_available(self) -> bool:
        """True when this backend can run tensors on device ``index`` right now."""
        return self.why_unavailable() is None

    def why_unavailable(self) -> str | None:
        """``None`` when available, else one sentence saying why not.

        The sentence names the cause: the package or torch build is missing, no
        device was found, or the driver reported an error (with its message).
        """
        try:
            reason = self._probe()
        except Exception as exc:  # a driver/runtime failure while probing
            return f"driver error while probing {self.name}: {_one_line(exc)}"
        if reason is None and self.index >= self.device_count():
            count = self.device_count()
            return f"{self.name}:{self.index} does not exist ({count} {self.name} device{'s' if count != 1 else ''})"
        return reason

    def _probe(self) -> str | None:
        """Backend-specific availability check; returns the reason when unavailable."""
        raise NotImplementedError

    def device_count(self) -> int:
        """How many devices of this kind are visible (0 when unavailable)."""
        return 1

    # ------------------------------------------------------------------ identity
    @property
    def device(self) -> torch.device:
        """The ``torch.device`` of the chosen index."""
        return torch.device(self.device_type, self.index)

    def device_names(self) -> list[str]:
        """Human-readable names of every visible device of this kind (empty when unavailable)."""
        return []

    def device_name(self) -> str | None:
        """Name of the chosen device, or ``None`` when unavailable."""
        names = self.device_names() if self.is_available() else []
        return names[self.index] if self.index < len(names) else None

    def runtime(self) -> str | None:
        """The compute runtime and version this torch build uses (e.g. ``"CUDA 12.8"``), if any."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(index={self.index})"

    # ------------------------------------------------------------------ memory
    def memory(self) -> MemoryInfo:
        """``(total, free)`` bytes of the chosen device; either may be ``None`` when unknown."""
        return MemoryInfo(None, None)

    def peak_memory(self) -> int | None:
        """Peak bytes allocated by this process on the device since the last reset, if known."""
        return None

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window (no-op where unknown)."""

    def empty_cache(self) -> None:
        """Return cached, unused device memory to the driver (and run the GC first)."""
        gc.collect()

    # ------------------------------------------------------------------ dtypes and features
    def capabilities(self) -> Capabilities:
        """The pure-data description of this device the policy is computed from."""
        return Capabilities(backend=self.name, quirks=self.quirks)

    def supports(self, dtype: torch.dtype) -> bool:
        """Whether ``dtype`` can be computed with on this device."""
        return self.capabilities().supports(dtype)

    @property
    def supports_complex(self) -> bool:
        return self.capabilities().complex

    @property
    def supports_float64(self) -> bool:
        return self.capabilities().float64

    @property
    def graphs(self) -> bool:
        """Whether this torch build can capture and replay device graphs here."""
        return self.capabilities().graphs

    @property
    def quirks(self) -> Quirks:
        return Quirks()

    @property
    def audit_rules(self) -> AuditRules:
        """The portability audit's rules for this device: :attr:`audit_table` plus the ops the
        :attr:`quirks` route to the CPU (they may depend on the installed torch)."""
        return (type(self).audit_table or AuditRules(self.name)).with_quirks(self.quirks)

    def autocast(self, dtype: torch.dtype) -> ContextManager:
        """A context that runs eligible ops in ``dtype``; a no-op context where unsupported.

        float32 always gives a no-op context.
        """
        if dtype == torch.float32 or not self.supports(dtype):
            return contextlib.nullcontext()
        return _autocast_or_null(self.device_type, dtype)

    def supports_autocast(self, dtype: torch.dtype) -> bool:
        """Whether ``autocast(dtype)`` really switches ops to ``dtype`` here (not a no-op context)."""
        return not isinstance(self.autocast(dtype), contextlib.nullcontext)

    # ------------------------------------------------------------------ execution
    def synchronize(self) -> None:
        """Wait until all queued work on the device has finished (for timing)."""

    def manual_seed(self, seed: int) -> None:
        """Seed torch's CPU generator and this device's generators."""
        torch.manual_seed(seed)

    def to_device(self, obj: T, non_blocking: bool | None = None) -> T:
        """Move a tensor or module to this device (modules in place, as ``Module.to`` does)."""
        if non_blocking is None:
            non_blocking = self.quirks.non_blocking_copies
        if isinstance(obj, torch.Tensor):
            return obj.to(self.device, non_blocking=non_blocking)
        return obj.to(self.device)

    def optimize(self, module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        """Backend-specific inference optimisation of a module (default: unchanged)."""
        return module

    # ------------------------------------------------------------------ graphs and streams
    def graph_runner(self) -> Any:
        """Device-graph capture and replay here (a ``backends.graphs.GraphRunner``), or ``None``."""
        return None

    def graph(self) -> Any:
        """A fresh, empty device graph (``torch.cuda.CUDAGraph()``-like), or ``None`` where unsupported."""
        runner = self.graph_runner()
        return runner.new_graph() if runner is not None else None

    def side_stream(self) -> Any:
        """A second device stream for overlapping copies (``backends.graphs.SideStream``), or ``None``."""
        return None

    # ------------------------------------------------------------------ reporting
    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary of this backend (what ``tortoise-xpu devices --json`` prints)."""
        reason = self.why_unavailable()
        available = reason is None
        info: dict[str, Any] = {
            "name": self.name,
            "available": available,
            "reason": reason,
            "device": str(self.device),
            "device_name": None,
            "device_names": [],
            "runtime": None,
            "total_memory": None,
            "free_memory": None,
            "dtypes": [],
            "graphs": False,
            "unified_memory": False,
            "quirks": None,
        }
        if not available:
            return info
        caps = self.capabilities()
        mem = self.memory()
        info.update(device_name=self.device_name(), device_names=self.device_names(), runtime=self.runtime(),
                    total_memory=mem.total, free_memory=mem.free, dtypes=caps.dtypes(), graphs=caps.graphs,
                    unified_memory=caps.unified_memory, quirks=caps.quirks.to_dict())
        return info


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _autocast_or_null(device_type: str, dtype: torch.dtype) -> ContextManager:
    """``torch.autocast(device_type, dtype)``, or a null context where torch cannot autocast there."""
    is_avail = getattr(getattr(torch, "amp", None), "is_autocast_available", None)
    if is_avail is not None:
        try:
            if not is_avail(device_type):
                return contextlib.nullcontext()
        except Exception:
            return contextlib.nullcontext()
    # torch warns and disables itself for an unsupported (device, dtype) pair; treat that as unsupported.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ctx = torch.autocast(device_type=device_type, dtype=dtype)
        except Exception:
            return contextlib.nullcontext()
    if caught or not getattr(ctx, "_enabled", True):
        return contextlib.nullcontext()
    return ctx


class DeviceModuleBackend(Backend):
    """A backend driven by a ``torch.<device>`` module with the CUDA-style API (cuda, xpu).

    Subclasses provide :meth:`_module`; the memory, seeding and sync calls here
    use the functions every such module has, each probed with ``getattr`` so an
    older torch without one simply reports ``None`` / does nothing.
    """

    #: Name of the module's graph class ("CUDAGraph", "XPUGraph"); empty: no graphs.
    graph_class: ClassVar[str] = ""

    def _module(self) -> Any:
        raise NotImplementedError

    def graph_runner(self) -> Any:
        if not self.graph_class or not self.is_available() or not self.graphs:
            return None
        from tortoise_xpu.backends.graphs import GraphRunner

        if getattr(self, "_graph_runner", None) is None:
            self._graph_runner = GraphRunner.probe(self._module(), self.graph_class, self.device)
        return self._graph_runner

    def side_stream(self) -> Any:
        if not self.is_available():
            return None
        from tortoise_xpu.backends.graphs import SideStream

        if getattr(self, "_side_stream", None) is None:
            self._side_stream = SideStream.probe(self._module(), self.device)
        return self._side_stream

    def _call(self, fn: str, *args: Any, default: Any = None) -> Any:
        func = getattr(self._module(), fn, None)
        if func is None:
            return default
        return func(*args)

    def device_count(self) -> int:
        try:
            return int(self._call("device_count", default=0))
        except Exception:
            return 0

    def device_names(self) -> list[str]:
        if self._probe() is not None:
            return []
        return [str(self._call("get_device_name", i, default=f"{self.name}:{i}")) for i in range(self.device_count())]

    def _properties(self) -> Any:
        return self._call("get_device_properties", self.index)

    def peak_memory(self) -> int | None:
        try:
            return int(self._call("max_memory_allocated", self.device))
        except Exception:
            return None

    def reset_peak_memory(self) -> None:
        with contextlib.suppress(Exception):
            self._call("reset_peak_memory_stats", self.device)

    def empty_cache(self) -> None:
        gc.collect()
        with contextlib.suppress(Exception):
            self._call("empty_cache")

    def synchronize(self) -> None:
        self._call("synchronize", self.device)

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)  # seeds every initialised device generator too
        with contextlib.suppress(Exception):
            self._call("manual_seed_all", seed)
