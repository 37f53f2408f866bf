"""One run's state: its settings, Policy, random generator, report, progress and cancellation.

Every stage of the pipeline (pipeline/conditioning.py ... pipeline/vocoding.py) takes the shared
:class:`~tortoise_xpu.pipeline.store.ModelStore` and a :class:`RunContext`; whatever a run
changes lives in its context, never on the store or on ``TextToSpeech``, so several runs can
share one store at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from tortoise_xpu.errors import Cancelled

__all__ = ["Cancelled", "Progress", "RunContext", "RunReport"]

# Progress callback: (stage, done, total).
Progress = Callable[[str, int, int], None]


@dataclass
class RunReport:
    """What one run did: per-stage seconds (device-synchronised), memory, sizes.

    While several runs share a device the stage times include waiting for it, and
    ``peak_memory_bytes`` is the device's peak over the run, others' allocations included."""

    seed: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    candidates: int = 0
    ar_steps: int = 0
    audio_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    #: The AR decode mode the run actually used (a failed graph capture falls back to ``static``)
    #: and the device graphs it captured.
    decode_mode: str | None = None
    graph_captures: int = 0

    @property
    def total_s(self) -> float:
        return sum(self.stages.values())


@dataclass
class RunContext:
    """The state of one run, handed to every stage with the store.

    Args:
        policy: this run's Policy (dtypes, AR batch, decode mode; ``TextToSpeech.policy(candidates)``).
        generator: the CPU generator every random draw of the run comes from, in stage order.
        backend: the Backend the run's stages synchronise with for timing (the store's).
        seed: the seed ``generator`` was seeded with (reported).
        settings: the resolved ``tts()`` settings (presets.resolve_settings), read by the stages.
        report: filled in as the run goes.
        progress: ``progress(stage, done, total)`` during long stages, or None.
        cancel: a ``threading.Event`` or a no-argument callable; when set / true, the run stops at
            the next step boundary of AR sampling or diffusion (or between stages) with
            :class:`~tortoise_xpu.errors.Cancelled`.
        plan: registry names of the models the rest of the run will use, in order; in per-stage
            mode the store prefetches the next one while a stage runs.
    """

    policy: Any
    generator: torch.Generator
    backend: Any = None
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    report: RunReport = field(default_factory=RunReport)
    progress: Progress | None = None
    cancel: threading.Event | Callable[[], bool] | None = None
    plan: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ cancellation and progress
    def cancelled(self) -> bool:
        """Whether the caller asked this run to stop."""
        if self.cancel is None:
            return False
        if isinstance(self.cancel, threading.Event):
            return self.cancel.is_set()
        return bool(self.cancel())

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` when the caller asked this run to stop (called at step boundaries)."""
        if self.cancelled():
            raise Cancelled("the run was cancelled")

    def step(self, stage: str, done: int, total: int) -> None:
        """A step boundary of a long stage: check for cancellation, then report progress."""
        self.check_cancelled()
        if self.progress is not None:
            self.progress(stage, done, total)

    # ------------------------------------------------------------------ per-stage prefetch plan
    def next_model(self, name: str) -> str | None:
        """Advance the plan past ``name``; the model the stage after it needs, if known."""
        plan = self.plan
        if name not in plan:
            return None
        del plan[:plan.index(name) + 1]
        return plan[0] if plan else None

    # ------------------------------------------------------------------ timing
    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time a stage into the report (device-synchronised), name it for the portability audit,
        and turn a device OOM or driver failure in it into one line naming the stage."""
        from tortoise_xpu.backends.markers import stage as audit_stage

        self.check_cancelled()
        sync = self.backend.synchronize if self.backend is not None else (lambda: None)
        sync()
        start = time.perf_counter()
        try:
            with audit_stage(stage):
                yield
            sync()
        except Exception as exc:
            # A device OOM outside the AR back-off, or a driver failure: one line naming the stage and
            # what to try, instead of a driver traceback.  Anything else (a bug) passes unchanged.
            from tortoise_xpu.backends.errors import user_facing_error

            clean = user_facing_error(exc, self.backend, stage) if self.backend is not None else None
            if clean is None:
                raise
            raise clean from exc
        finally:
            self.report.stages[stage] = self.report.stages.get(stage, 0.0) + time.perf_counter() - start
