"""Device graphs and side streams, for backends whose torch module has the CUDA-style API.

``torch.cuda`` (CUDA and ROCm) and, in recent torch builds, ``torch.xpu`` share one
API: ``<Module>Graph()``, ``graph(g, pool=..., stream=...)``, ``graph_pool_handle()``,
``Stream``, ``stream(s)``, ``current_stream()`` and ``Event``.  The two small classes
here wrap that API so the pipeline can capture a decode step, or copy the next model to
the device while the current one computes, without naming a device type:

* :class:`GraphRunner` (``backend.graph_runner()``): capture a function of static
  tensors into a graph after a warm-up on a side stream, as device graphs require,
  and replay it.
* :class:`SideStream` (``backend.side_stream()``): run work (host-to-device copies)
  on a second stream and make the compute stream wait for it later.

A backend without the API (the CPU, MPS, DirectML, an XPU build without graphs) hands
out ``None`` and callers run eagerly.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Callable, Iterator

import torch

__all__ = ["CapturedGraph", "GraphRunner", "SideStream"]


class CapturedGraph:
    """One captured graph; :meth:`replay` re-runs its kernels on the same memory."""

    def __init__(self, graph: Any):
        self.graph = graph

    def replay(self) -> None:
        self.graph.replay()


class GraphRunner:
    """Capture/replay of device graphs through a torch device module (``torch.cuda``, ``torch.xpu``).

    Args:
        module: the torch device module.
        graph_class: the name of its graph class (``"CUDAGraph"``, ``"XPUGraph"``).
        device: the device whose streams the capture uses.
    """

    def __init__(self, module: Any, graph_class: str, device: torch.device):
        self.module = module
        self.graph_class = getattr(module, graph_class)
        self.device = device
        self._pool: Any = None
        # One capture at a time: the captures share one memory pool, and a capture must not see
        # another thread's capture in flight on the same device.
        self._capturing = threading.Lock()

    @classmethod
    def probe(cls, module: Any, graph_class: str, device: torch.device) -> "GraphRunner | None":
        """A runner when ``module`` has every function capture needs, else ``None``."""
        needed = (graph_class, "graph", "Stream", "stream", "current_stream")
        if module is None or not all(hasattr(module, name) for name in needed):
            return None
        return cls(module, graph_class, device)

    def new_graph(self) -> Any:
        """A fresh, empty graph object of the device module (``torch.cuda.CUDAGraph()``-like)."""
        return self.graph_class()

    def shared_pool(self) -> Any:
        """One memory pool handle shared by every capture of this runner (None where unsupported).

        Sharing is safe for graphs that never run concurrently and keep their results only in
        tensors allocated outside the capture, which is how the decode engine uses them.
        """
        if self._pool is None and hasattr(self.module, "graph_pool_handle"):
            self._pool = self.module.graph_pool_handle()
        return self._pool

    def capture(self, fn: Callable[[], Any], *, warmup: int = 2,
                restore: Callable[[], None] | None = None) -> CapturedGraph:
        """Run ``fn`` ``warmup`` times on a side stream, then capture one call of it into a graph.

        ``restore`` is called after each warm-up call, so a step that updates its state in place
        can be warmed up without advancing that state.  Capturing runs nothing: after this call
        the state is as before, and ``replay()`` performs the captured work.
        """
        with self._capturing:
            side = self.module.Stream(device=self.device)
            side.wait_stream(self.module.current_stream(self.device))
            with self.module.stream(side):
                for _ in range(warmup):
                    fn()
                    if restore is not None:
                        restore()
            self.module.current_stream(self.device).wait_stream(side)
            graph = self.new_graph()
            with self.module.graph(graph, pool=self.shared_pool(), **self._capture_options()):
                fn()
        return CapturedGraph(graph)

    def _capture_options(self) -> dict[str, Any]:
        """``capture_error_mode="thread_local"`` where the module's ``graph`` takes it: runs of other
        threads sharing the device (a model store serving several callers) may allocate and
        synchronise while this thread captures; only this thread's own unsafe calls are errors."""
        try:
            params = inspect.signature(self.module.graph).parameters
        except (TypeError, ValueError):
            return {}
        return {"capture_error_mode": "thread_local"} if "capture_error_mode" in params else {}


class SideStream:
    """A second stream of the device for copies that overlap with compute on the current stream."""

    def __init__(self, module: Any, device: torch.device):
        self.module = module
        self.device = device
        self.stream = module.Stream(device=device)

    @classmethod
    def probe(cls, module: Any, device: torch.device) -> "SideStream | None":
        needed = ("Stream", "stream", "current_stream", "Event")
        if module is None or not all(hasattr(module, name) for name in needed):
            return None
        try:
            return cls(module, device)
        except Exception:  # no device / driver refused a stream: run synchronously instead
            return None

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        """Queue the work of the ``with`` body on the side stream; yields an event recorded at its end."""
        self.stream.wait_stream(self.module.current_stream(self.device))
        event = self.module.Event()
        with self.module.stream(self.stream):
            yield event
            event.record(self.stream)

    def wait(self, event: Any, tensors: Any = ()) -> None:
        """Make the current stream wait for ``event``; ``tensors`` made on the side stream are
        marked as used by the current stream, so the allocator does not reuse them too early."""
        current = self.module.current_stream(self.device)
        current.wait_event(event)
        for t in tensors:
            with contextlib.suppress(Exception):
                t.record_stream(current)
