"""The AR scheduler: one thread that runs the continuous batch, rows joining and leaving per step.

Requests arrive prepared (tokens, voice latents, uniforms); each becomes one row per AR candidate.
Every loop: drop the rows of cancelled or expired requests, let waiting rows join while the
batch has room (first come, first served), run one step, then hand work to the later stages:
a streaming request's hidden states at each chunk boundary (HiFi-GAN), a quality request's codes
once all its candidates have stopped (ranking, diffusion, vocoder).  The later stages run on
other threads (``Engine``), so vocoding never waits behind the AR loop, nor the other way round.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from tortoise_xpu.serve.jobs import Cancelled, DeadlineExceeded, Ticket
from tortoise_xpu.serve.metrics import Metrics

if TYPE_CHECKING:  # the decoder and its rows come from the runner (serve/runner.py)
    from tortoise_xpu.pipeline.continuous import ContinuousDecoder, Row

__all__ = ["Scheduler", "Active"]


@dataclass(eq=False)
class Active:
    """A request in the AR stage: its ticket, prepared inputs and the state of its rows."""

    ticket: Ticket
    prep: Any                      # runner.Prepared
    candidates: int
    codes: dict[int, list[int]] = field(default_factory=dict)   # finished candidates' codes
    rows: list["Row"] = field(default_factory=list)               # rows in the batch now
    waiting: int = 0                                             # candidates not yet joined
    next_chunk: int = 0                                          # code count of the next stream chunk
    failed: bool = False
    stream_state: Any = None                                     # the engine's stream decoder/stretch state


class Scheduler:
    """The continuous-batching AR loop (see the module docstring).

    Args:
        make_decoder: builds the ``ContinuousDecoder`` (called on the scheduler's thread).
        make_row: ``make_row(prep, candidate, tag)``: the decoder's row spec of one candidate.
        on_chunk: ``on_chunk(active, hidden (1, n, D), final)``: a streaming request's hidden
            states up to its latest chunk boundary; runs on the scheduler thread, must not block.
        on_codes: ``on_codes(active, codes (N, T))``: a quality request's candidates, all stopped.
        on_fail: ``on_fail(active, exc)``: a request ended early (cancelled, expired, engine failure);
            default: post ``exc`` on its ticket.
        on_start: ``on_start(active)``: a request's first row joined the batch (it left the queue).
        metrics: where step counts and occupancy go.
    """

    def __init__(self, make_decoder: Callable[[], "ContinuousDecoder"], make_row: Callable[[Any, int, Any], Any],
                 on_chunk: Callable[[Active, torch.Tensor, bool], None],
                 on_codes: Callable[[Active, torch.Tensor], None], metrics: Metrics,
                 on_fail: Callable[[Active, BaseException], None] | None = None,
                 on_start: Callable[[Active], None] | None = None):
        self.make_decoder = make_decoder
        self.make_row = make_row
        self.on_chunk = on_chunk
        self.on_codes = on_codes
        self.metrics = metrics
        self.on_fail = on_fail or (lambda active, exc: active.ticket.post("error", exc))
        self.on_start = on_start or (lambda active: None)
        self.inbox: queue.Queue[Active] = queue.Queue()
        self.pending: collections.deque[tuple[Active, int]] = collections.deque()  # (request, candidate)
        self.decoder: "ContinuousDecoder | None" = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tortoise-ar-scheduler", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def submit(self, active: Active) -> None:
        """Queue a prepared request; its rows join at the next step boundaries with room."""
        self.inbox.put(active)

    def waiting_requests(self) -> int:
        """Requests whose first row has not joined yet."""
        seen = {id(a) for a, _ in self.pending if not a.rows and not a.codes}
        return len(seen) + self.inbox.qsize()

    # ----------------------------------------------------------------------------- the loop
    def _run(self) -> None:
        try:
            self.decoder = self.make_decoder()
            self.metrics.set("capacity", self.decoder.capacity)
            while not self._stop.is_set():
                self._take_inbox(block=not self.decoder.rows and not self.pending)
                self._drop_dead()
                self._join()
                self.metrics.set("active_rows", len(self.decoder.rows))
                if not self.decoder.rows:
                    continue
                start = time.perf_counter()
                live = sum(1 for r in self.decoder.rows if not r.finished)
                before = self.decoder.backoffs
                try:
                    self.decoder.step()
                except Exception as exc:  # out of memory at one row, or a device failure: these requests end
                    self._fail_batch(exc)
                    continue
                self.metrics.observe_step(len(self.decoder.rows), live, time.perf_counter() - start)
                if self.decoder.backoffs != before:
                    self.metrics.add("oom_backoffs", self.decoder.backoffs - before)
                self._after_step()
        except BaseException as exc:  # a bug or a device failure: fail every request, keep the reason
            self.error = exc
            self._fail_all(exc)

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=0.05) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            item.waiting = item.candidates
            item.next_chunk = max(item.ticket.job.stream_chunk_size, item.ticket.job.first_buffer) \
                if item.ticket.job.stream_chunk_size > 0 else 0
            for c in range(item.candidates):
                self.pending.append((item, c))
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _join(self) -> None:
        dec = self.decoder
        while self.pending and dec.free:
            active, cand = self.pending.popleft()
            if active.failed:
                continue
            spec = self.make_row(active.prep, cand, (active, cand))
            try:
                row = dec.join(spec)
            except Exception as exc:  # this request's prompt cannot run (too long, out of memory): it alone fails
                self.fail(active, _engine_error(exc))
                continue
            if not active.rows and not active.codes:
                self.on_start(active)
            active.rows.append(row)
            active.waiting -= 1
            self._handle(active, row)

    def _after_step(self) -> None:
        for row in list(self.decoder.rows):
            active, _ = row.spec.tag
            self._handle(active, row)

    def _handle(self, active: Active, row: "Row") -> None:
        """After a row's newest code: stream chunks that are due, collect finished candidates."""
        job = active.ticket.job
        if not job.quality:
            due = active.next_chunk
            if row.finished or (due and row.count >= due):
                # The stop code has no hidden state of its own worth voicing: up to it, inclusive, as tts_stream.
                self.on_chunk(active, self.decoder.hidden_of(row), row.finished)
                active.next_chunk = row.count + job.stream_chunk_size if job.stream_chunk_size > 0 else 0
        if row.finished:
            _, cand = row.spec.tag
            active.codes[cand] = list(row.codes)
            active.rows.remove(row)
            self.decoder.leave(row)
            if job.quality and len(active.codes) == active.candidates:
                stop = self.decoder.stop_token
                width = active.prep.max_tokens
                codes = torch.full((active.candidates, width), stop, dtype=torch.long)
                for c, seq in active.codes.items():
                    codes[c, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                self.on_codes(active, codes)

    def _drop_dead(self) -> None:
        """Rows of cancelled or expired requests leave now (their slots free for this step)."""
        now = time.monotonic()
        doomed: dict[int, tuple[Active, Exception]] = {}
        for row in self.decoder.rows:
            active, _ = row.spec.tag
            if active.ticket.cancelled.is_set():
                doomed[id(active)] = (active, Cancelled("the client closed the connection"))
            elif active.ticket.expired(now):
                doomed[id(active)] = (active, DeadlineExceeded("the request ran past its deadline"))
        for active, _ in self.pending:
            if active.ticket.cancelled.is_set():
                doomed[id(active)] = (active, Cancelled("the client closed the connection"))
            elif active.ticket.expired(now):
                doomed[id(active)] = (active, DeadlineExceeded("the request ran past its deadline in the queue"))
        for active, exc in doomed.values():
            self.fail(active, exc)

    def fail(self, active: Active, exc: BaseException) -> None:
        """End a request with ``exc``: its rows leave the batch, its waiting rows are dropped."""
        if active.failed:
            return
        active.failed = True
        for row in list(active.rows):
            self.decoder.leave(row)
        active.rows.clear()
        if isinstance(exc, Cancelled):
            self.metrics.add("cancelled")
        self.on_fail(active, exc)

    def _fail_batch(self, exc: BaseException) -> None:
        """A step failed for good: every request with a row in the batch ends with the reason."""
        err = _engine_error(exc)
        for active in {id(r.spec.tag[0]): r.spec.tag[0] for r in self.decoder.rows}.values():
            self.fail(active, err)

    def _fail_all(self, exc: BaseException) -> None:
        from tortoise_xpu.serve.jobs import EngineError

        err = EngineError(f"the AR engine stopped: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        seen = set()
        for active, _ in list(self.pending):
            if id(active) not in seen:
                seen.add(id(active))
                self.on_fail(active, err)
        if self.decoder is not None:
            for row in self.decoder.rows:
                if id(row.spec.tag[0]) not in seen:
                    seen.add(id(row.spec.tag[0]))
                    self.on_fail(row.spec.tag[0], err)


def _engine_error(exc: BaseException) -> BaseException:
    """Pipeline errors (one-line, user-facing) pass as they are; anything else becomes a one-line EngineError."""
    from tortoise_xpu.errors import TortoiseError
    from tortoise_xpu.serve.jobs import EngineError

    if isinstance(exc, (TortoiseError, EngineError)):
        return exc
    return EngineError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
