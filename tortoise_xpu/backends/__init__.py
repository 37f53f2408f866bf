"""The device-backend layer: one module per backend, this registry, the policy and OOM back-off.

Usage::

    from tortoise_xpu.backends import policy_for, resolve, run_with_backoff

    backend = resolve("auto")          # or "cpu", "cuda:1", "rocm", "xpu:0", "mps", "dml:1", ...
    policy = policy_for(backend, candidates=96)
    model = backend.to_device(model.to(policy.ar_dtype))
    codes = run_with_backoff(sample_batch, candidates, policy.ar_batch_size, backend)

``auto`` picks the first available of cuda -> xpu -> mps -> directml -> cpu.
Nothing outside this package compares device-type strings: it asks the
``Backend`` (capabilities, memory, quirks) and the ``Policy`` (dtypes, batch
size, residency).
"""

from __future__ import annotations

import re

from tortoise_xpu.backends.base import Backend, Capabilities, MemoryInfo, Quirks, dtype_name
from tortoise_xpu.backends.cpu import CPUBackend
from tortoise_xpu.backends.cuda import CUDABackend, is_rocm_build
from tortoise_xpu.backends.directml import DirectMLBackend
from tortoise_xpu.backends.mps import MPSBackend
from tortoise_xpu.backends.oom import run_with_backoff
from tortoise_xpu.backends.policy import Overrides, Policy, make_policy, policy_for
from tortoise_xpu.backends.xpu import XPUBackend
from tortoise_xpu.errors import UserError

__all__ = [
    "AUTO_ORDER", "BACKENDS", "Backend", "Capabilities", "MemoryInfo", "Overrides", "Policy", "Quirks",
    "VALID_DEVICES", "backend_class", "dtype_name", "list_backends", "make_policy", "parse_device",
    "policy_for", "resolve", "run_with_backoff",
]

#: Every backend, by registry name, in the order ``auto`` tries them.
BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (CUDABackend, XPUBackend, MPSBackend, DirectMLBackend, CPUBackend)
}
AUTO_ORDER: tuple[str, ...] = tuple(BACKENDS)

_ALIASES: dict[str, str] = {alias: cls.name for cls in BACKENDS.values() for alias in cls.aliases}

#: What ``--device`` accepts, for help and error messages.
VALID_DEVICES = "auto, cpu, cuda, cuda:N, rocm, rocm:N, xpu, xpu:N, mps, directml, directml:N, dml, dml:N"

_DEVICE_RE = re.compile(r"^([a-z]+)(?::(\d+))?$")


def backend_class(name: str) -> type[Backend]:
    """The Backend class registered under ``name`` or one of its aliases."""
    key = _ALIASES.get(name, name)
    if key not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; valid: {', '.join(list(BACKENDS) + list(_ALIASES))}")
    return BACKENDS[key]


def parse_device(device: str) -> tuple[str, int | None]:
    """Split a device string into ``(backend name, index or None)`` without probing hardware.

    ``"auto"`` gives ``("auto", None)``; aliases are mapped (``"dml:1"`` -> ``("directml", 1)``).
    ``rocm`` is checked to be a ROCm build here, because it means a HIP device.
    Raises ``UserError`` listing the valid choices for anything else.
    """
    text = str(device).strip().lower()
    match = _DEVICE_RE.match(text)
    name = match.group(1) if match else None
    if match is None or (name not in BACKENDS and name not in _ALIASES and name != "auto"):
        raise UserError(f"unknown device {device!r}; valid: {VALID_DEVICES}")
    index = int(match.group(2)) if match.group(2) is not None else None
    if name == "auto":
        if index is not None:
            raise UserError(f"'auto' takes no index (got {device!r}); valid: {VALID_DEVICES}")
        return "auto", None
    if name == "rocm" and not is_rocm_build():
        raise UserError(f"device {device!r} needs a ROCm build of torch; this torch ({_torch_version()}) is not "
                        "one (on NVIDIA GPUs use 'cuda')")
    key = _ALIASES.get(name, name)
    if index is not None and not BACKENDS[key].indexed and index != 0:
        raise UserError(f"device {device!r}: {key} has a single device (use '{key}')")
    return key, index


def resolve(device: str | Backend = "auto") -> Backend:
    """The available Backend for a device string (``auto``, ``cpu``, ``cuda:1``, ``rocm``, ``dml:1``, ...).

    ``auto`` returns the first available of cuda -> xpu -> mps -> directml -> cpu.
    A named device that is not usable raises ``UserError`` with the reason
    (not installed / no device / driver error); a malformed string raises
    ``UserError`` listing the valid choices.
    """
    if isinstance(device, Backend):  # an already-built Backend (e.g. audit.SimulatedBackend) is used as is
        return device
    name, index = parse_device(device)
    if name == "auto":
        for key in AUTO_ORDER:
            backend = BACKENDS[key](0)
            if backend.is_available():
                return backend
        raise AssertionError("the CPU backend is always available")  # pragma: no cover
    backend = BACKENDS[name](index or 0)
    reason = backend.why_unavailable()
    if reason is not None:
        raise UserError(f"device {device!r} is not available: {reason}")
    return backend


def list_backends() -> list[Backend]:
    """One Backend (index 0) per registered backend, available or not, in ``auto`` order."""
    return [cls(0) for cls in BACKENDS.values()]


def _torch_version() -> str:
    import torch

    return torch.__version__
