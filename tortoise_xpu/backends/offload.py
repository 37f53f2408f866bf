"""Per-stage residency: a model on the device only for its stage, the next one copied in meanwhile.

:class:`ModelShuttle` moves a module's weights between the host and the device without
rebuilding it.  Inference never changes the weights, so the host copy is kept and
"moving back" is only dropping the device copy: no device-to-host transfer at all.
Where the backend has a side stream (``backend.side_stream()``) and asynchronous copies
are safe (``quirks.non_blocking_copies``), :meth:`ModelShuttle.prefetch` starts the copy
of the next stage's model while the current stage computes, from page-locked host memory
so that it really overlaps; elsewhere the copy happens when the model is needed.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["ModelShuttle"]


def _slots(module: nn.Module) -> Iterator[tuple[dict, str]]:
    """Every (owner dict, key) holding a parameter or buffer tensor, shared ones once."""
    seen: set[int] = set()
    for m in module.modules():
        for table in (m._parameters, m._buffers):
            for key, t in table.items():
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                yield table, key


def _swap(table: dict, key: str, data: torch.Tensor) -> None:
    t = table[key]
    if not isinstance(t, nn.Parameter):
        table[key] = data
    elif torch._has_compatible_shallow_copy_type(t, data):
        t.data = data  # keeps the Parameter object (and anything holding it) valid, as Module.to does
    else:  # e.g. to or from the meta device: a new Parameter, as Module.to does then too
        table[key] = nn.Parameter(data, requires_grad=t.requires_grad)


class ModelShuttle:
    """Moves models to the device for one stage and back, prefetching where the backend can.

    Args:
        backend: the Backend whose device the models run on.
        pin: keep the host copies in page-locked memory where the platform supports it
            (needed for copies that overlap with compute).
    """

    def __init__(self, backend: Any, pin: bool = True):
        self.backend = backend
        self.device = backend.device
        self.side = backend.side_stream() if backend.quirks.non_blocking_copies else None
        self.pin = pin and self.side is not None
        self._host: dict[int, list[torch.Tensor]] = {}
        self._pending: dict[int, tuple[Any, list[torch.Tensor]]] = {}

    # ------------------------------------------------------------------ host copies
    def _host_copies(self, module: nn.Module) -> list[torch.Tensor]:
        """The module's tensors on the host (pinned once, where asked and possible)."""
        key = id(module)
        if key not in self._host:
            host = []
            for table, name in _slots(module):
                t = table[name].data if isinstance(table[name], nn.Parameter) else table[name]
                if t.device.type != "cpu":  # already somewhere else: bring it home once
                    t = t.cpu()
                if self.pin:
                    with contextlib.suppress(Exception):  # pinning can fail (limits): plain memory then
                        t = t.pin_memory()
                host.append(t)
            self._host[key] = host
        return self._host[key]

    # ------------------------------------------------------------------ moves
    def prefetch(self, module: nn.Module) -> None:
        """Start copying ``module`` to the device on the side stream (no-op without one)."""
        key = id(module)
        if self.side is None or key in self._pending or self._on_device(module):
            return
        host = self._host_copies(module)
        with self.side.active() as event:
            copies = [t.to(self.device, non_blocking=True) for t in host]
        self._pending[key] = (event, copies)

    def to_device(self, module: nn.Module) -> nn.Module:
        """``module`` with its tensors on the device (finishing a prefetch if one was started)."""
        key = id(module)
        if self._on_device(module) and key not in self._pending:
            return module
        host = self._host_copies(module)
        pending = self._pending.pop(key, None)
        if pending is not None:
            event, copies = pending
            self.side.wait(event, copies)
        else:
            copies = [t.to(self.device, non_blocking=self.pin) for t in host]
        for (table, name), data in zip(list(_slots(module)), copies):
            _swap(table, name, data)
        return module

    def offload(self, module: nn.Module) -> nn.Module:
        """Point ``module`` back at its host copies; the device copies are freed when unused."""
        host = self._host_copies(module)
        for (table, name), data in zip(list(_slots(module)), host):
            _swap(table, name, data)
        self._pending.pop(id(module), None)
        return module

    def _on_device(self, module: nn.Module) -> bool:
        first = next(iter(_slots(module)), None)
        if first is None:
            return True
        table, name = first
        return table[name].device == self.device or (
            table[name].device.type == self.device.type and self.device.index is None)
