"""The serving engine: admission, the AR scheduler, and the stages before and after it.

The HTTP layer only calls :meth:`Engine.submit` and reads the ticket's events; queueing,
continuous batching, back-off, deadlines, cancellation and draining all live here.

Threads (all daemon):

* ``prep`` — text tokens, voice latents and uniforms of each request (:meth:`PipelineRunner.prepare`);
* the AR scheduler (:mod:`tortoise_xpu.serve.scheduler`) — the continuous batch;
* ``stream`` — HiFi-GAN and time-stretch of streaming chunks, in arrival order (so in order per
  request): each request has its own windowed decoder (``StreamVocoder``), which decodes only a
  chunk's new frames plus the decoder's receptive field, so a chunk costs the same at the end of a
  long request as at its start, and needs no crossfade;
* ``finish`` — ranking, diffusion and vocoder of quality requests.

Torch releases the GIL inside its kernels, so these overlap on a multi-core CPU as on a GPU.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tortoise_xpu.errors import Cancelled as RunCancelled, TortoiseError
from tortoise_xpu.serve.jobs import Draining, EngineError, NotReady, QueueFull, SpeechJob, Ticket
from tortoise_xpu.serve.metrics import Metrics
from tortoise_xpu.serve.runner import SAMPLE_RATE, PipelineRunner
from tortoise_xpu.serve.scheduler import Active, Scheduler

__all__ = ["Engine", "EngineConfig"]


@dataclass
class EngineConfig:
    """Limits of one engine.

    ``max_queue``: requests accepted but not yet decoding before new ones get 429;
    ``max_batch``: AR rows per running batch (None: the Policy's AR batch size);
    ``deadline_s``: default per-request deadline (None: none); ``retry_after_s``: the
    ``Retry-After`` a 429 suggests.
    """

    max_queue: int = 32
    max_batch: int | None = None
    deadline_s: float | None = 600.0
    retry_after_s: float = 2.0


class _StreamState:
    """Per streaming request: its windowed HiFi-GAN decoder, the codes it has been given, and the
    time-stretch state of its chunks."""

    def __init__(self, vocoder: Any, speed: float):
        from tortoise_xpu.audio.stretch import TimeStretcher

        self.vocoder = vocoder
        self.pushed = 0  # codes whose hidden states went to the vocoder
        self.stretch = TimeStretcher(speed) if speed != 1.0 else None
        self.samples = 0


class Engine:
    """One engine per device process (see the module docstring)."""

    def __init__(self, runner: PipelineRunner, config: EngineConfig | None = None):
        self.runner = runner
        self.config = config or EngineConfig()
        self.metrics = Metrics()
        self._ready = threading.Event()
        self.load_error: BaseException | None = None
        self._draining = False
        self._lock = threading.Lock()
        self._in_flight: set[Ticket] = set()
        self._queued: set[Ticket] = set()  # accepted, no row in the AR batch yet: what --max-queue bounds
        self._prep = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tortoise-prep")
        self._chunks: queue.Queue = queue.Queue()  # (active, hidden so far, final) for the stream thread; None stops it
        self._stream = threading.Thread(target=self._stream_loop, name="tortoise-stream", daemon=True)
        self._stream.start()
        self._finish = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tortoise-finish")
        self.scheduler = Scheduler(self._make_decoder, runner.row_spec, self._on_chunk, self._on_codes, self.metrics,
                                   on_fail=lambda active, exc: self._settle(active.ticket, "error", exc),
                                   on_start=lambda active: self._leave_queue(active.ticket))

    # ----------------------------------------------------------------------------- life cycle
    def start(self, background: bool = True) -> None:
        """Load the models (in a thread when ``background``) and start the scheduler once loaded."""
        if background:
            threading.Thread(target=self._load, name="tortoise-load", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        try:
            self.runner.load()
            self.scheduler.start()
            self._ready.set()
        except BaseException as exc:  # reported by /health and every request
            self.load_error = exc

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self.scheduler.error is None

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def _make_decoder(self):
        return self.runner.make_decoder(self.config.max_batch or self.runner.capacity())

    def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting requests and wait for those in flight; True when all finished in time."""
        self._draining = True
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._in_flight:
                    return True
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the threads (after :meth:`drain`)."""
        self.scheduler.stop()
        self._chunks.put(None)
        for pool in (self._prep, self._finish):
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    # ----------------------------------------------------------------------------- requests
    def submit(self, job: SpeechJob, loop: asyncio.AbstractEventLoop | None = None) -> Ticket:
        """Accept ``job`` (or raise QueueFull / Draining / NotReady); events come on the ticket."""
        if self._draining:
            raise Draining("the server is shutting down and takes no new requests")
        if not self.ready:
            if self.load_error is not None or self.scheduler.error is not None:
                err = self.load_error or self.scheduler.error
                raise NotReady(f"the engine failed: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
            raise NotReady("the models are still loading; retry shortly", retry_after=5.0)
        if job.deadline_s is None:
            job.deadline_s = self.config.deadline_s
        with self._lock:
            if len(self._queued) >= self.config.max_queue:
                raise QueueFull(f"the queue is full ({self.config.max_queue} requests waiting); retry later",
                                retry_after=self.config.retry_after_s)
            ticket = Ticket(job, loop)
            self._queued.add(ticket)
            self._in_flight.add(ticket)
            self.metrics.set("queue_depth", len(self._queued))
            self.metrics.set("in_flight", len(self._in_flight))
        self._prep.submit(self._prepare, ticket)
        return ticket

    def _settle(self, ticket: Ticket, kind: str, payload: Any) -> None:
        """Post the last event of a ticket and forget it."""
        ticket.post(kind, payload)
        with self._lock:
            self._queued.discard(ticket)
            self._in_flight.discard(ticket)
            self.metrics.set("queue_depth", len(self._queued))
            self.metrics.set("in_flight", len(self._in_flight))
        if ticket.first_audio is not None and kind == "done":
            self.metrics.observe_ttfa(ticket.first_audio - ticket.submitted)

    def _leave_queue(self, ticket: Ticket) -> None:
        with self._lock:
            self._queued.discard(ticket)
            self.metrics.set("queue_depth", len(self._queued))

    @property
    def queued(self) -> int:
        """Requests accepted that have no row in the AR batch yet."""
        with self._lock:
            return len(self._queued)

    def _prepare(self, ticket: Ticket) -> None:
        job = ticket.job
        try:
            if ticket.cancelled.is_set() or ticket.expired():
                raise EngineError("cancelled or expired before it started")
            prep = self.runner.prepare(job.text, job.voice, job.settings, job.candidates, job.seed, job.quality,
                                       job.force_tokens, cancel=lambda: ticket.cancelled.is_set() or ticket.expired())
        except (TortoiseError, EngineError) as exc:
            self._settle(ticket, "error", exc)
            return
        except Exception as exc:  # a bug: a 500 with its one-line reason
            self._settle(ticket, "error", EngineError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"))
            return
        active = Active(ticket=ticket, prep=prep, candidates=job.candidates)
        active.stream_state = None if job.quality else _StreamState(self.runner.stream_vocoder(prep), job.speed)
        self.scheduler.submit(active)

    # ----------------------------------------------------------------------------- later stages
    def _on_chunk(self, active: Active, hidden: torch.Tensor, final: bool) -> None:
        self._chunks.put((active, hidden, final))

    def _stream_loop(self) -> None:
        """Vocode streaming chunks in arrival order (one request's chunks arrive in order)."""
        while True:
            item = self._chunks.get()
            if item is None:
                return
            active, hidden, final = item
            if not active.ticket.finished:  # cancelled, expired or failed: nothing to voice
                self._vocode(active, hidden, final)

    def _vocode(self, active: Active, hidden: torch.Tensor, final: bool) -> None:
        """Push one request's new hidden states to its decoder, time-stretch, and post the audio."""
        ticket = active.ticket
        st: _StreamState = active.stream_state
        codes = int(hidden.shape[1])
        try:
            with torch.no_grad():
                chunk = st.vocoder.push(hidden[:, st.pushed:])
                if final:
                    chunk = torch.cat([chunk, st.vocoder.finish()])
        except Exception as exc:
            self._settle(ticket, "error", exc if isinstance(exc, (TortoiseError, EngineError)) else
                         EngineError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"))
            return
        st.pushed = codes
        chunk = chunk.numpy()
        if st.stretch is not None:
            chunk = np.concatenate([st.stretch.push(chunk), st.stretch.flush() if final else np.zeros(0, np.float32)])
        if chunk.size:
            st.samples += chunk.size
            ticket.post("audio", chunk.astype(np.float32))
        if final:
            self._settle(ticket, "done", {"samples": st.samples, "sample_rate": SAMPLE_RATE, "codes": codes})

    def _on_codes(self, active: Active, codes: torch.Tensor) -> None:
        self._finish.submit(self._finish_quality, active, codes)

    def _finish_quality(self, active: Active, codes: torch.Tensor) -> None:
        ticket = active.ticket
        if ticket.finished:
            return
        try:
            if ticket.cancelled.is_set() or ticket.expired():
                from tortoise_xpu.serve.jobs import Cancelled, DeadlineExceeded

                raise (Cancelled("the client closed the connection") if ticket.cancelled.is_set()
                       else DeadlineExceeded("the request ran past its deadline"))
            wav = self.runner.finish(active.prep, codes).numpy()
            if ticket.job.speed != 1.0:
                from tortoise_xpu.audio.stretch import time_stretch

                wav = time_stretch(wav, ticket.job.speed)
            ticket.post("audio", wav.astype(np.float32))
            self._settle(ticket, "done", {"samples": int(wav.size), "sample_rate": SAMPLE_RATE})
        except RunCancelled:  # a stage saw the request's cancel check: the client left or the deadline passed
            from tortoise_xpu.serve.jobs import Cancelled, DeadlineExceeded

            self._settle(ticket, "error", Cancelled("the client closed the connection") if ticket.cancelled.is_set()
                         else DeadlineExceeded("the request ran past its deadline"))
        except Exception as exc:
            self._settle(ticket, "error", exc if isinstance(exc, (TortoiseError, EngineError)) else
                         EngineError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"))
