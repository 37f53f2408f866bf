"""Turning device failures raised in the middle of a run into messages a user can act on.

A pipeline stage can fail on the device in two ways that are not bugs in our code:
it runs out of memory outside the AR back-off (diffusion, vocoder, CLVP), or the
driver/runtime reports an error (a lost device, an illegal access, a kernel that
does not exist for this GPU).  Both reach the user as a raw ``RuntimeError`` with
a multi-line driver message.  :func:`user_facing_error` recognises them and
returns a :class:`~tortoise_xpu.errors.TortoiseError` whose one-line message names
the stage, the device and what to try; anything else (a real bug) is left alone.

The device-error signatures are strings of each runtime's own messages, which is
why this lives in ``tortoise_xpu.backends``: nothing outside this package
matches device names.
"""

from __future__ import annotations

from typing import Any

import torch

from tortoise_xpu.backends.oom import is_oom_error
from tortoise_xpu.errors import OutOfMemory, TortoiseError

__all__ = ["DEVICE_ERROR_MARKERS", "DeviceError", "is_device_error", "user_facing_error"]

#: Lower-case substrings of driver/runtime error messages: CUDA, cuBLAS/cuDNN, ROCm/HIP,
#: Intel Level Zero / SYCL / Unified Runtime, Apple MPS/Metal, DirectML/DXGI.
DEVICE_ERROR_MARKERS: tuple[str, ...] = (
    "cuda error", "cublas_status", "cudnn_status", "cudnn error", "device-side assert",
    "illegal memory access", "unspecified launch failure", "no kernel image is available",
    "hip error", "hiperror", "rocm",
    "ur_result_error", "ur error", "level zero", "ze_result_error", "sycl", "xpu error",
    "mps backend", "mpsgraph", "metal",
    "directml", "dxgi_error", "device removed", "device lost", "device_lost", "gpu hang",
    "ecc error", "driver shutting down",
)


class DeviceError(TortoiseError):
    """The device or its driver failed during a stage (exit code 1)."""


def is_device_error(exc: BaseException) -> bool:
    """True when ``exc`` is a failure reported by a device runtime or driver (not an OOM, not a bug)."""
    accel = getattr(torch, "AcceleratorError", None)  # torch >= 2.8 raises it for CUDA runtime errors
    if isinstance(accel, type) and isinstance(exc, accel):
        return True
    if not isinstance(exc, RuntimeError) or is_oom_error(exc):
        return False
    message = str(exc).lower()
    return any(marker in message for marker in DEVICE_ERROR_MARKERS)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def user_facing_error(exc: BaseException, backend: Any = None, stage: str | None = None) -> TortoiseError | None:
    """A one-line ``TortoiseError`` for a device OOM or device failure, or None to let ``exc`` through.

    Args:
        exc: what the stage raised.  ``TortoiseError`` instances (already clear) give None.
        backend: the Backend the stage ran on (its ``name`` appears in the message).
        stage: the pipeline stage name (``ar``, ``diffusion``, ``vocoder``, ...).
    """
    if isinstance(exc, TortoiseError):
        return None
    where = f" on {getattr(backend, 'name', None) or 'the device'}"
    during = f" during the {stage} stage" if stage else ""
    if is_oom_error(exc):
        return OutOfMemory(
            f"out of memory{where}{during} ({_first_line(exc, 120)}); try --low-vram (one model on the device "
            "at a time), --dtype float16 or bfloat16, fewer --num-autoregressive-samples, or --device cpu")
    if is_device_error(exc):
        return DeviceError(
            f"the device failed{where}{during}: {_first_line(exc)}. Run again (the seed makes it repeatable); "
            "if it persists update the GPU driver, run `tortoise-xpu doctor`, or use --device cpu")
    return None
