"""The AR decode engine: one sampling step as one static function, run eagerly or as device graphs.

A step is the whole of one generated code: the code embedding at its mel position, the 30
GPT-2 blocks against the KV cache, the mel head, the logit processors, the inverse-CDF draw,
writing the code and updating the repetition-penalty mask and the stop flags.  Every piece of
state lives in tensors allocated once per shape (:class:`DecodeState`), so the step needs no
host synchronisation: the host only asks "has every candidate stopped?" every
``stop_check_every`` steps, and never when the token count is forced.

Three modes, one set of semantics (same seed, same codes):

``eager``
    The mel position is a Python int; attention reads exactly the cache prefix written so far.
    Best where kernel launches are cheap (the CPU) or no graphs exist.
``static``
    The position is a 0-d device tensor updated in place, so every step has the same shapes.
    Attention reads a *bucket* of the cache: the prefix rounded up to a multiple of ``bucket``
    positions, masked past the live slot, so the step costs what the live prefix costs rather
    than the whole preallocated cache.
``graph``
    ``static`` with each bucket's step captured once as a device graph (a warm-up on a side
    stream first, as device graphs require) and replayed; the graphs are kept and reused by every
    later batch of the same shape.  Kernel launches, which dominate an eager step on a GPU, go away.

The run's Policy chooses the mode, the bucket length and whether the static step is wrapped in
``torch.compile`` (``Policy.decode_mode``, ``decode_bucket``, ``compile``; the environment switches
``TORTOISE_XPU_DECODE``, ``TORTOISE_XPU_DECODE_BUCKET`` and ``TORTOISE_XPU_COMPILE`` are read where
the Policy is made, backends/policy.py).  Compiling is off by default: measure it first
(docs/performance.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import torch

from tortoise_xpu.backends.oom import is_oom_error
from tortoise_xpu.backends.policy import DECODE_MODES, DEFAULT_DECODE_BUCKET, compile_backend
from tortoise_xpu.pipeline.sampling import SamplingSettings, draw, process_logits

__all__ = ["DecodeEngine", "DecodeResult", "DecodeState", "MODES", "bucket_length", "choose_mode"]

MODES = DECODE_MODES

#: Cache positions per bucket of the static path (the cache is also allocated in these units).
DEFAULT_BUCKET = DEFAULT_DECODE_BUCKET
STOP_CHECK_EVERY = 16
#: The largest KV cache (keys and values) an eager engine keeps for its next run of the same shape;
#: a larger one (long runs: 16 candidates x 500 codes in float32 is 2 GB) is freed after its run,
#: where its first-touch cost is small next to the run and the memory is wanted by later stages.
EAGER_KEEP_BYTES = 512 * 2**20
# Placeholder id of the prompt positions in the original's ``generate`` input; HF's repetition
# penalty sees it (and the start token) as already used, so ours does too.
PROMPT_PLACEHOLDER_ID = 1

def choose_mode(graphs: bool, has_runner: bool, forced: str | None = None) -> str:
    """The decode mode: ``forced`` if given, else graphs where the policy asks for them and the
    backend can capture, else eager.  A forced ``graph`` without a capable backend runs ``static``."""
    forced = forced or None
    if forced is not None and forced not in MODES:
        raise ValueError(f"unknown decode mode {forced!r}; choose one of {', '.join(MODES)}")
    mode = forced or ("graph" if graphs else "eager")
    if mode == "graph" and not has_runner:
        mode = "static"
    return mode


def bucket_length(live: int, bucket: int, limit: int) -> int:
    """``live`` cache positions rounded up to a multiple of ``bucket``, at most ``limit``."""
    return min(-(-live // bucket) * bucket, limit)


@dataclass
class DecodeResult:
    codes: torch.Tensor   # (B, max_tokens) long, on the device, stop-padded
    steps: int            # codes sampled per candidate before the loop ended


@dataclass
class DecodeState:
    """Everything one decode batch reads and writes, allocated once per shape and reused.

    ``tokens`` (B,) the last code; ``position`` 0-d, the mel position of ``tokens`` (= index of
    the code being sampled next); ``seen`` (B, V) ids used so far (repetition penalty);
    ``done`` (B,) candidates that emitted the stop token; ``codes`` (B, T) the output;
    ``u`` (B, T) the pre-drawn uniforms; ``stop_bias`` (V,) 0, or -inf at the stop token when
    the token count is forced; ``hidden`` (B, T, D) the final-norm hidden state that produced each
    code (the AR latents; streaming vocoders read them), or None when not asked for.
    """

    key: tuple
    cache: Any
    tokens: torch.Tensor
    position: torch.Tensor
    seen: torch.Tensor
    done: torch.Tensor
    codes: torch.Tensor
    u: torch.Tensor
    stop_bias: torch.Tensor
    settings: SamplingSettings
    stop_token: int
    hidden: torch.Tensor | None = None
    views: dict[int, Any] = field(default_factory=dict)
    steps: dict[int, Callable[[], None]] = field(default_factory=dict)
    graphs: dict[int, Any] = field(default_factory=dict)

    def snapshot(self) -> tuple[torch.Tensor, ...]:
        return tuple(t.clone() for t in (self.tokens, self.position, self.seen, self.done))

    def restore(self, saved: tuple[torch.Tensor, ...]) -> None:
        for dst, src in zip((self.tokens, self.position, self.seen, self.done), saved):
            dst.copy_(src)


class DecodeEngine:
    """Samples AR candidates for ``TextToSpeech``; keeps its buffers and graphs between batches.

    Args:
        backend: the Backend the model runs on (its ``graph_runner()`` captures graphs).
        mode: ``eager``, ``static`` or ``graph`` (see the module docstring); None: :func:`choose_mode`
            from ``graphs``.
        graphs: whether the Policy asks for graph capture (``policy.graph_capture``).
        bucket: cache positions per static-path bucket (default 64).
        stop_check_every: steps between the host checks for "every candidate has stopped".
        compile: wrap the static step in ``torch.compile``: True (inductor), a backend name, or
            None/False (off).
        graph_runner: overrides ``backend.graph_runner()`` (tests pass a stand-in).
        progress: ``progress(done, total)`` after each step (host-side only, no sync).
    """

    def __init__(self, backend: Any, *, mode: str | None = None, graphs: bool = False, bucket: int | None = None,
                 stop_check_every: int = STOP_CHECK_EVERY, compile: bool | str | None = None,
                 graph_runner: Any = None, progress: Callable[[int, int], None] | None = None):
        self.backend = backend
        self.graphs_requested = bool(graphs)
        forced = mode or None
        self.runner = graph_runner if graph_runner is not None else (
            backend.graph_runner() if (graphs or forced == "graph") else None)
        self.mode = choose_mode(graphs, self.runner is not None, forced)
        self.bucket = int(bucket or DEFAULT_BUCKET)
        if self.bucket < 1:
            raise ValueError(f"bucket must be >= 1, got {self.bucket}")
        self.stop_check_every = max(1, int(stop_check_every))
        self.compile = compile_backend(compile)
        self.progress = progress
        self._state: DecodeState | None = None
        self._running = 0  # iter_decode generators started and not yet finished or closed
        #: Graph captures made so far (a new shape, model or setting captures again).
        self.captures = 0

    @property
    def busy(self) -> bool:
        """True while an :meth:`iter_decode` is suspended mid-run: its buffers are in use, and a
        second decode of the same shape on this engine would overwrite them (use another engine)."""
        return self._running > 0

    # ----------------------------------------------------------------------------- public
    def release(self) -> None:
        """Drop the buffers, KV cache and graphs (low-VRAM mode calls this after the AR stage)."""
        self._state = None

    def decode(self, ar: torch.nn.Module, cond: torch.Tensor, text: torch.Tensor, u: torch.Tensor,
               settings: SamplingSettings, max_tokens: int, force: bool = False,
               cache_dtype: torch.dtype | None = None) -> DecodeResult:
        """Sample ``u.shape[0]`` candidates of ``max_tokens`` codes.

        cond (1, D) voice latent and text (1, T) tokens, on the model's device; ``u`` (B, >=
        max_tokens) float uniforms, one row per candidate (row i always gives candidate i the same
        codes, whatever the batch).  ``force`` bans the stop token (benchmarks).  Returns stop-padded
        codes (B, max_tokens) on the device and the number of steps run.
        """
        n, st = 0, None
        steps = self.iter_decode(ar, cond, text, u, settings, max_tokens, force, cache_dtype)
        try:
            for n, st in steps:
                self._tick(n, max_tokens)
                if self._should_stop(n, force, st.done):
                    break
        finally:
            steps.close()
        # A copy: the buffer is overwritten by the next batch of this shape.
        return DecodeResult(st.codes.clone(), n)

    def iter_decode(self, ar: torch.nn.Module, cond: torch.Tensor, text: torch.Tensor, u: torch.Tensor,
                    settings: SamplingSettings, max_tokens: int, force: bool = False,
                    cache_dtype: torch.dtype | None = None,
                    keep_hidden: bool = False) -> Iterator[tuple[int, DecodeState]]:
        """:meth:`decode` one code at a time: yields ``(n, state)`` after each step, n = 1..max_tokens.

        Nothing is read back to the host here: ``state.codes[:, :n]``, ``state.done`` and, with
        ``keep_hidden``, ``state.hidden[:, :n]`` are device buffers that the caller reads when it
        chooses (a streaming caller: once per chunk).  Stop iterating to end early.  The buffers
        belong to the engine and are overwritten by its next decode of the same shape.
        """
        cfg = ar.config
        if not 1 <= max_tokens <= cfg.mel_positions - 1:
            raise ValueError(f"max_tokens must be in 1..{cfg.mel_positions - 1}, got {max_tokens}")
        if self.busy and self.mode != "eager":
            raise RuntimeError("this DecodeEngine is already decoding (a suspended iter_decode); use another engine")
        self._running += 1
        try:
            yield from self._steps(ar, cond, text, u, settings, max_tokens, force, cache_dtype, keep_hidden)
        finally:
            self._running -= 1

    def _steps(self, ar, cond, text, u, settings, max_tokens, force, cache_dtype,
               keep_hidden) -> Iterator[tuple[int, DecodeState]]:
        cfg = ar.config
        b = u.shape[0]
        dev = cond.device
        prompt = ar.prompt_length(text.shape[1])
        if self.mode == "eager":
            # Slots for the prompt and every fed-back code; read up to the live slot, so no buckets.
            cache_len = prompt + max_tokens
            if self._running == 1:
                # Reuse the last run's buffers when the shape repeats: a fresh KV cache is written
                # into pages the OS must first map, and on a VM that first touch cost 0.2-0.4 s for
                # the 16-candidate cache of a 40-code run (a tenth of the AR stage, 2-core Xeon).
                st = self._state_for(ar, b, cache_len, max_tokens, settings, force, cache_dtype, dev, keep_hidden)
                if 2 * st.cache.k.numel() * st.cache.k.element_size() > EAGER_KEEP_BYTES:
                    self._state = None  # too big to hold between runs: this run's alone, freed after it
            else:  # a second, interleaved decode on this engine gets buffers of its own
                st = self._new_state(ar, None, b, cache_len, max_tokens, settings, force, cache_dtype, dev,
                                     keep_hidden)
        else:
            # Slots needed: the prompt, then one per fed-back code (the last code is never fed back).
            cache_len = -(-(prompt + max_tokens - 1) // self.bucket) * self.bucket
            st = self._state_for(ar, b, cache_len, max_tokens, settings, force, cache_dtype, dev, keep_hidden)
        logits, hidden = ar.prefill(cond, text, st.cache)
        for view in st.views.values():
            view.prompt_len = st.cache.prompt_len
        st.seen.copy_(self._initial_seen(b, st.seen.shape[1], cfg.start_mel_token, dev))
        st.done.zero_()
        st.codes.fill_(cfg.stop_mel_token)
        st.u.copy_(u[:, :max_tokens].to(dev, torch.float32))
        st.position.zero_()
        self._record(st, logits, hidden)  # code 0, from the prompt's logits
        n = 1
        yield n, st
        while n < max_tokens:
            if self.mode == "eager":
                logits, hidden = ar.decode_step(st.tokens, n, st.cache)
                self._record(st, logits, hidden)
            else:
                live = prompt + n  # slots 0..prompt-1+n once code n-1 is written at slot prompt-1+n
                self._run_bucket(ar, st, bucket_length(live, self.bucket, cache_len))
            n += 1
            yield n, st

    # ----------------------------------------------------------------------------- shared pieces
    @staticmethod
    def _sample(logits: torch.Tensor, seen: torch.Tensor, done: torch.Tensor, u: torch.Tensor,
                stop_bias: torch.Tensor | None, settings: SamplingSettings, stop_token: int) -> torch.Tensor:
        """One code per row from raw logits; finished rows keep emitting the stop token."""
        logits = logits.float()
        if stop_bias is not None:
            logits = logits + stop_bias  # adds 0 everywhere but -inf at the stop token: exact
        tok = draw(process_logits(logits, seen, settings), u)
        return tok.masked_fill(done, stop_token)

    def _tick(self, done_steps: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done_steps, total)

    def _should_stop(self, n: int, force: bool, done: torch.Tensor) -> bool:
        # The one host sync of the loop, every stop_check_every codes and never when forced.
        return not force and n % self.stop_check_every == 0 and bool(done.all())

    @staticmethod
    def _initial_seen(b: int, vocab: int, start_token: int, device: Any) -> torch.Tensor:
        seen = torch.zeros(b, vocab, dtype=torch.bool, device=device)
        seen[:, PROMPT_PLACEHOLDER_ID] = True
        seen[:, start_token] = True
        return seen

    @staticmethod
    def _stop_bias(vocab: int, stop_token: int, device: Any) -> torch.Tensor:
        bias = torch.zeros(vocab, dtype=torch.float32, device=device)
        bias[stop_token] = float("-inf")
        return bias

    # ----------------------------------------------------------------------------- static / graph
    def _state_for(self, ar, b: int, cache_len: int, max_tokens: int, settings: SamplingSettings, force: bool,
                   cache_dtype: torch.dtype | None, device: Any, keep_hidden: bool = False) -> DecodeState:
        """The buffers for this shape: reused when the shape, model weights and settings match."""
        params = tuple(p.data_ptr() for p in ar.parameters())
        key = (id(ar), hash(params), b, cache_len, max_tokens, settings, force, cache_dtype, str(device), keep_hidden)
        if self._state is not None and self._state.key == key:
            return self._state
        self._state = None  # free the old shape's cache and graphs before allocating the new ones
        self._state = self._new_state(ar, key, b, cache_len, max_tokens, settings, force, cache_dtype, device,
                                      keep_hidden)
        return self._state

    def _new_state(self, ar, key: Any, b: int, cache_len: int, max_tokens: int, settings: SamplingSettings,
                   force: bool, cache_dtype: torch.dtype | None, device: Any, keep_hidden: bool) -> DecodeState:
        cfg = ar.config
        cache = ar.new_cache(b, cache_len, dtype=cache_dtype, device=device)
        vocab = cfg.number_mel_codes
        return DecodeState(
            key=key, cache=cache,
            tokens=torch.zeros(b, dtype=torch.long, device=device),
            position=torch.zeros((), dtype=torch.long, device=device),
            seen=torch.zeros(b, vocab, dtype=torch.bool, device=device),
            done=torch.zeros(b, dtype=torch.bool, device=device),
            codes=torch.zeros(b, max_tokens, dtype=torch.long, device=device),
            u=torch.zeros(b, max_tokens, dtype=torch.float32, device=device),
            stop_bias=(self._stop_bias(vocab, cfg.stop_mel_token, device) if force
                       else torch.zeros(vocab, dtype=torch.float32, device=device)),
            settings=settings, stop_token=cfg.stop_mel_token,
            hidden=(torch.zeros(b, max_tokens, cfg.model_dim, dtype=cache.k.dtype, device=device)
                    if keep_hidden else None))

    def _record(self, st: DecodeState, logits: torch.Tensor, hidden: torch.Tensor | None = None) -> None:
        """Sample the code at ``st.position`` from ``logits`` and advance the state, all in place."""
        idx = st.position.reshape(1)
        if st.hidden is not None and hidden is not None:
            st.hidden.index_copy_(1, idx, hidden.unsqueeze(1).to(st.hidden.dtype))
        u = st.u.index_select(1, idx).squeeze(1)
        tok = self._sample(logits, st.seen, st.done, u, st.stop_bias, st.settings, st.stop_token)
        st.codes.index_copy_(1, idx, tok.unsqueeze(1))
        st.done.logical_or_(tok == st.stop_token)
        st.seen.scatter_(1, tok.unsqueeze(1), True)
        st.tokens.copy_(tok)
        st.position.add_(1)

    def _step_fn(self, ar, st: DecodeState, length: int) -> Callable[[], None]:
        """The static step for a cache bucket of ``length`` positions (cached per bucket)."""
        if length in st.steps:
            return st.steps[length]
        cache = st.cache
        view = replace(cache, k=cache.k[:, :, :, :length], v=cache.v[:, :, :, :length], slots=cache.slots[:length])
        st.views[length] = view

        def step() -> None:
            logits, hidden = ar.decode_step(st.tokens, st.position, view)
            self._record(st, logits, hidden)

        fn: Callable[[], None] = step
        if self.compile and hasattr(torch, "compile"):
            # One compiled function per bucket: each has its own static shapes (and dynamo cache).
            fn = self._compiled_or_plain(torch.compile(step, backend=self.compile, dynamic=False), step, st, length)
        st.steps[length] = fn
        return fn

    def _compiled_or_plain(self, compiled: Callable[[], None], plain: Callable[[], None], st: DecodeState,
                           length: int) -> Callable[[], None]:
        """``compiled``, or ``plain`` from its first call on when compiling fails there.

        torch.compile compiles on the first call, before the step runs, so a compiler failure
        (seen on an H200: Inductor could not generate the top-p cumulative sum) leaves the state
        untouched and the plain step can take over; out of memory is the back-off's to handle.
        """
        def first_call() -> None:
            try:
                compiled()
            except Exception as exc:
                if is_oom_error(exc):
                    raise
                warnings.warn(f"torch.compile of the decode step failed ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}); decoding without it", RuntimeWarning)
                st.steps[length] = plain
                plain()
                return
            st.steps[length] = compiled  # compiled fine: later calls go straight to it

        return first_call

    def _run_bucket(self, ar, st: DecodeState, length: int) -> None:
        fn = self._step_fn(ar, st, length)
        if self.mode != "graph":
            fn()
            return
        graph = st.graphs.get(length)
        if graph is None:
            saved = st.snapshot()
            try:
                graph = self.runner.capture(fn, restore=lambda: st.restore(saved))
            except Exception as exc:  # an op that cannot be captured here: keep going without graphs
                st.restore(saved)
                cause = exc.__cause__ or exc.__context__
                if is_oom_error(exc) or (cause is not None and is_oom_error(cause)):
                    raise  # out of memory is the OOM back-off's to handle (halve the batch), not a capture limit
                warnings.warn(f"decode-step graph capture failed ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}); decoding without graphs", RuntimeWarning)
                self.mode = "static"
                fn()
                return
            st.graphs[length] = graph
            self.captures += 1
        graph.replay()
