"""What a speech request is inside the engine: the job, its ticket (events out, cancellation in), and
the engine's errors with the HTTP status and OpenAI error fields each maps to."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SpeechJob", "Ticket", "EngineError", "QueueFull", "Draining", "NotReady", "DeadlineExceeded",
           "Cancelled"]

_ids = itertools.count(1)


@dataclass
class SpeechJob:
    """One request, validated by the HTTP layer.

    ``quality``: the diffusion path (CLVP-ranked candidates, diffusion, vocoder); else the streaming
    path (one candidate, HiFi-GAN as codes arrive).  ``settings``: tts() knobs; ``speed``: time
    stretch; the chunk fields: the streaming schedule (as ``tts_stream``'s arguments).
    """

    text: str
    voice: str
    quality: bool
    settings: dict[str, Any]
    seed: int
    candidates: int = 1
    speed: float = 1.0
    stream_chunk_size: int = 20  # pipeline/stream.py's CHUNK_SIZE and FIRST_BUFFER
    first_buffer: int = 20
    overlap_wav_len: int = 1024
    force_tokens: int | None = None
    deadline_s: float | None = None


class EngineError(Exception):
    """A request the engine refused or could not finish; ``status`` and the OpenAI error fields."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(EngineError):
    status, type, code = 429, "rate_limit_error", "queue_full"


class Draining(EngineError):
    status, type, code = 503, "server_error", "shutting_down"


class NotReady(EngineError):
    status, type, code = 503, "server_error", "not_ready"


class DeadlineExceeded(EngineError):
    status, type, code = 504, "timeout_error", "deadline_exceeded"


class Cancelled(EngineError):
    status, type, code = 499, "cancelled", "client_closed"


@dataclass(eq=False)
class Ticket:
    """A submitted job's handle: the engine's threads post events, the HTTP side awaits them.

    Events: ``("audio", float32 ndarray)``, ``("done", info dict)``, ``("error", EngineError or
    TortoiseError)``; ``done`` or ``error`` comes exactly once, last.
    """

    job: SpeechJob
    loop: asyncio.AbstractEventLoop | None
    id: int = field(default_factory=lambda: next(_ids))
    submitted: float = field(default_factory=time.monotonic)
    first_audio: float | None = None
    finished: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    events: Any = None

    def __post_init__(self) -> None:
        import queue

        # An asyncio queue for the server; a plain thread queue for callers without a loop (tests, benches).
        self.events = asyncio.Queue() if self.loop is not None else queue.Queue()

    @property
    def deadline(self) -> float | None:
        return None if self.job.deadline_s is None else self.submitted + self.job.deadline_s

    def expired(self, now: float | None = None) -> bool:
        d = self.deadline
        return d is not None and (now if now is not None else time.monotonic()) > d

    def post(self, kind: str, payload: Any) -> None:
        """Called from the engine's threads; thread-safe; nothing is posted after the last event."""
        if self.finished:
            return
        if kind == "audio" and self.first_audio is None:
            self.first_audio = time.monotonic()
        if kind in ("done", "error"):
            self.finished = True
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass
        else:
            self.events.put((kind, payload))

    def cancel(self) -> None:
        """The client went away: the engine frees the request's rows at its next step."""
        self.cancelled.set()

    async def next_event(self) -> tuple[str, Any]:
        return await self.events.get()

    def next_event_blocking(self, timeout: float | None = None) -> tuple[str, Any]:
        return self.events.get(timeout=timeout)
