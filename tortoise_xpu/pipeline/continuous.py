"""Continuous batching of AR decoding: sequences join and leave one running batch at step boundaries.

:class:`~tortoise_xpu.pipeline.decode.DecodeEngine` decodes one prompt's candidates together,
start to finish.  A server has many prompts arriving at any time; :class:`ContinuousDecoder`
keeps one KV cache of up to ``capacity`` rows, and each row is a sequence with its own prompt
(its own length), voice latent, sampling settings, uniforms and age:

* :meth:`ContinuousDecoder.join` runs the row's prompt alone (batch 1, so the prompt pass cannot
  depend on other rows), copies its keys/values into a free row of the shared cache and samples
  its first code.
* :meth:`ContinuousDecoder.step` feeds every active row's last code at that row's own mel position
  and cache slot (``UnifiedVoice.decode_rows``: per-row slots, per-row attention masks), then
  samples each row from its own pre-drawn uniforms, grouped by sampling settings.
* A row whose stop code came (or whose code budget ran out) is reported finished and
  :meth:`ContinuousDecoder.leave` frees it: the last active row is moved into its place, so the
  active rows stay packed at the front and a step only computes over them.

Same seed, same codes: a row's draws come from its own uniforms (drawn from the request's CPU
generator up front), its prompt pass is its own, and masked attention ignores other rows' slots,
so its codes do not depend on its neighbours (up to float rounding in batched matrix products,
which does not change a draw unless a uniform falls within rounding of a CDF step).

Out of memory: a step that runs out of memory is retried in halves
(:func:`tortoise_xpu.backends.oom.run_with_backoff`), and the smaller step size is kept; no row
loses its state (a failed step changes nothing but cache slots the retry rewrites).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tortoise_xpu.backends.oom import run_with_backoff
from tortoise_xpu.models.autoregressive import KVCache
from tortoise_xpu.pipeline.decode import PROMPT_PLACEHOLDER_ID, bucket_length
from tortoise_xpu.pipeline.sampling import SamplingSettings, draw, process_logits

__all__ = ["ContinuousDecoder", "RowSpec", "Row"]


@dataclass(eq=False)
class RowSpec:
    """One sequence to decode: the prompt, its draws and its limits.

    ``cond`` (1, D) AR voice latent; ``text`` (1, T) text tokens; ``u`` (max_tokens,) the row's
    uniforms (one per code); ``force`` bans the stop token (exactly ``max_tokens`` codes);
    ``tag`` is the caller's (the scheduler's request and candidate index).
    """

    cond: torch.Tensor
    text: torch.Tensor
    u: torch.Tensor
    settings: SamplingSettings
    max_tokens: int
    force: bool = False
    tag: Any = None


@dataclass(eq=False)
class Row:
    """An active sequence: its spec, where it sits in the batch, and how many codes it has."""

    spec: RowSpec
    index: int                 # row of the shared cache (changes when rows are packed)
    prompt_len: int
    count: int = 0             # codes sampled so far (the stop code included)
    finished: bool = False
    stopped: bool = False      # the stop code came (else the budget ran out)
    codes: list[int] = field(default_factory=list)


class ContinuousDecoder:
    """A running AR batch that rows join and leave between steps.

    Args:
        ar: the AR model (``UnifiedVoice``) on its device.
        capacity: most rows decoded together.
        cache_dtype: the KV cache dtype (the model's weight dtype: SDPA wants q and k alike).
        bucket: cache positions are allocated, and attention reads, in multiples of this.
        backend: its ``empty_cache()`` runs after an out-of-memory step (None: only gc).
    """

    def __init__(self, ar: torch.nn.Module, capacity: int, cache_dtype: torch.dtype | None = None,
                 bucket: int = 64, backend: Any = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.ar = ar
        self.capacity = int(capacity)
        self.bucket = max(1, int(bucket))
        self.backend = backend
        cfg = ar.config
        param = next(ar.parameters())
        self.device = param.device
        self.cache_dtype = cache_dtype or param.dtype
        self.stop_token = cfg.stop_mel_token
        self.vocab = cfg.number_mel_codes
        self.max_codes = cfg.mel_positions - 1
        self.rows: list[Row] = []
        #: Rows computed together per step: halved on out-of-memory and kept (``run_with_backoff``).
        self.step_rows = self.capacity
        self.backoffs = 0
        self._cache: KVCache | None = None
        cap = self.capacity
        dev = self.device
        self.tokens = torch.zeros(cap, dtype=torch.long, device=dev)
        self.seen = torch.zeros(cap, self.vocab, dtype=torch.bool, device=dev)
        self.hidden = torch.zeros(cap, self.max_codes, cfg.model_dim, dtype=torch.float32, device=dev)
        self.codes = torch.full((cap, self.max_codes), self.stop_token, dtype=torch.long, device=dev)

    # ----------------------------------------------------------------------------- public
    @property
    def free(self) -> int:
        """Rows that can still join."""
        return self.capacity - len(self.rows)

    def join(self, spec: RowSpec) -> Row:
        """Add a sequence: prompt pass alone, keys/values into a free row, first code sampled."""
        if not self.free:
            raise RuntimeError("the batch is full; wait for a row to leave")
        if not 1 <= spec.max_tokens <= self.max_codes:
            raise ValueError(f"max_tokens must be in 1..{self.max_codes}, got {spec.max_tokens}")
        prompt = self.ar.prompt_length(spec.text.shape[1])
        need = prompt + spec.max_tokens - 1  # the last code is never fed back
        self._ensure_length(need)
        tmp = self.ar.new_cache(1, prompt, dtype=self.cache_dtype, device=self.device)
        with torch.no_grad():
            logits, hidden = self.ar.prefill(spec.cond.to(self.device), spec.text.to(self.device), tmp)
        row = Row(spec=spec, index=len(self.rows), prompt_len=prompt)
        i = row.index
        self._cache.k[:, i, :, :prompt].copy_(tmp.k[:, 0])
        self._cache.v[:, i, :, :prompt].copy_(tmp.v[:, 0])
        self.seen[i].zero_()
        self.seen[i, PROMPT_PLACEHOLDER_ID] = True
        self.seen[i, self.ar.config.start_mel_token] = True
        self.codes[i].fill_(self.stop_token)
        self.rows.append(row)
        self._record([row], logits, hidden)
        return row

    def step(self) -> list[Row]:
        """One code for every active row that has not finished; returns the rows that finished now."""
        live = [r for r in self.rows if not r.finished]
        if not live:
            return []
        # Packed rows: the active ones are 0..n-1 (finished rows leave before the next step).
        n = len(self.rows)
        results = run_with_backoff(lambda idx: self._forward(list(idx)), list(range(n)), self.step_rows,
                                   backend=self.backend, on_backoff=self._on_backoff)
        logits = torch.stack([lg for lg, _ in results])
        hidden = torch.stack([h for _, h in results])
        rows = [r for r in self.rows if not r.finished]
        keep = torch.tensor([r.index for r in rows], dtype=torch.long, device=self.device)
        self._record(rows, logits.index_select(0, keep), hidden.index_select(0, keep))
        return [r for r in rows if r.finished]

    def leave(self, row: Row) -> None:
        """Free ``row``'s place (finished or cancelled): the last active row moves into it."""
        if not any(r is row for r in self.rows):
            return
        last = self.rows[-1]
        i, j = row.index, last.index
        if last is not row:
            c = self._cache
            c.k[:, i].copy_(c.k[:, j])
            c.v[:, i].copy_(c.v[:, j])
            for buf in (self.tokens, self.seen, self.hidden, self.codes):
                buf[i].copy_(buf[j])
            last.index = i
            self.rows[i] = last
        self.rows.pop()
        row.index = -1

    def hidden_of(self, row: Row, count: int | None = None) -> torch.Tensor:
        """A copy of the final-norm hidden states (1, count, D) behind ``row``'s first ``count`` codes."""
        n = row.count if count is None else count
        return self.hidden[row.index:row.index + 1, :n].clone()

    # ----------------------------------------------------------------------------- internals
    def _on_backoff(self, old: int, new: int) -> None:
        self.step_rows = new
        self.backoffs += 1

    def _ensure_length(self, need: int) -> None:
        length = -(-need // self.bucket) * self.bucket
        c = self._cache
        if c is not None and c.max_len >= length:
            return
        new = self.ar.new_cache(self.capacity, length, dtype=self.cache_dtype, device=self.device)
        if c is not None:  # grow: keep what the active rows have written
            new.k[:, :, :, :c.max_len].copy_(c.k)
            new.v[:, :, :, :c.max_len].copy_(c.v)
        self._cache = new

    def _forward(self, idx: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The model step over the contiguous rows ``idx`` (all active rows, or a piece after an OOM)."""
        lo, hi = idx[0], idx[-1] + 1
        rows = self.rows[lo:hi]
        positions = torch.tensor([r.count for r in rows], dtype=torch.long)
        slots = torch.tensor([r.prompt_len - 1 + r.count for r in rows], dtype=torch.long)
        c = self._cache
        length = bucket_length(int(slots.max()) + 1, self.bucket, c.max_len)
        view = KVCache(k=c.k[:, lo:hi, :, :length], v=c.v[:, lo:hi, :, :length], slot_offset=c.slot_offset,
                       slots=c.slots[:length], prompt_len=1)
        with torch.no_grad():
            logits, hidden = self.ar.decode_rows(self.tokens[lo:hi], positions.to(self.device),
                                                 slots.to(self.device), view)
        return list(zip(logits.unbind(0), hidden.unbind(0)))  # one result per row, as run_with_backoff wants

    def _record(self, rows: list[Row], logits: torch.Tensor, hidden: torch.Tensor) -> None:
        """Sample one code per row in ``rows`` (aligned with ``logits`` rows) and advance them."""
        logits = logits.float()
        idx = torch.tensor([r.index for r in rows], dtype=torch.long, device=self.device)
        toks = torch.empty(len(rows), dtype=torch.long, device=self.device)
        groups: dict[tuple[SamplingSettings, bool], list[int]] = {}
        for k, r in enumerate(rows):
            groups.setdefault((r.spec.settings, r.spec.force), []).append(k)
        for (settings, force), members in groups.items():
            sel = torch.tensor(members, dtype=torch.long, device=self.device)
            lg = logits.index_select(0, sel)
            if force:
                lg = lg.clone()
                lg[:, self.stop_token] = float("-inf")
            u = torch.stack([rows[k].spec.u[rows[k].count] for k in members]).to(self.device, torch.float32)
            toks[sel] = draw(process_logits(lg, self.seen.index_select(0, idx[sel]), settings), u)
        self.tokens.index_copy_(0, idx, toks)
        self.seen[idx, toks] = True
        counts = torch.tensor([r.count for r in rows], dtype=torch.long, device=self.device)
        with torch.no_grad():
            self.hidden[idx, counts] = hidden.float()
            self.codes[idx, counts] = toks
        host = toks.tolist()  # one sync per step: a server must know who stopped, and when to vocode
        for r, tok in zip(rows, host):
            r.codes.append(tok)
            r.count += 1
            if tok == self.stop_token:
                r.finished = r.stopped = True
            elif r.count >= r.spec.max_tokens:
                r.finished = True


def default_capacity(policy: Any, fallback: int = 16) -> int:
    """Rows per running batch from a Policy (its AR batch size), else ``fallback``."""
    size = getattr(policy, "ar_batch_size", None)
    return int(size) if size else fallback

