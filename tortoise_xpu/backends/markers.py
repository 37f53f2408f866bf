"""Markers the hot paths set for the portability audit: which pipeline stage runs, and which host work is deliberate.

``with stage("ar"):`` attributes the ops run inside to a pipeline stage; ``with cpu_route("why"):``
(or ``@cpu_route("why")``) declares the ops inside as host (CPU) work on purpose, e.g. float64
tables built on the host and cast to float32 before they reach a device.  Each only sets a
``ContextVar``: nothing else happens at run time.  :class:`~tortoise_xpu.backends.audit.Recorder`
reads them while an audit runs (:func:`current_stage`, :func:`current_route`).  This module imports
nothing heavy, so the code it marks stays light.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

__all__ = ["NO_STAGE", "cpu_route", "current_route", "current_stage", "stage"]

#: Stage name of ops run outside any ``stage()`` block.
NO_STAGE = "other"

_STAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("tortoise_xpu_audit_stage", default=None)
_ROUTE: contextvars.ContextVar[str | None] = contextvars.ContextVar("tortoise_xpu_audit_route", default=None)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Attribute the ops run inside to pipeline stage ``name`` (innermost stage wins)."""
    token = _STAGE.set(name)
    try:
        yield
    finally:
        _STAGE.reset(token)


def current_stage() -> str:
    """The innermost open :func:`stage`, or ``"other"``."""
    return _STAGE.get() or NO_STAGE


@contextlib.contextmanager
def cpu_route(reason: str) -> Iterator[None]:
    """Declare the ops run inside as deliberate host (CPU) work, for ``reason``.

    Use it (as a ``with`` block or a decorator) where code computes on the CPU on purpose,
    e.g. float64 tables built on the host and cast to float32 before they reach a device.
    It changes nothing at run time; an audit reports those ops as CPU routes instead of
    checking them against the device's rules.  The tensors must really be CPU tensors:
    on a real device run an op touching device tensors counts as device work regardless.
    """
    token = _ROUTE.set(reason)
    try:
        yield
    finally:
        _ROUTE.reset(token)


def current_route() -> str | None:
    """The reason of the innermost open :func:`cpu_route`, or ``None``."""
    return _ROUTE.get()
