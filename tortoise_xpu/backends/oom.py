"""Out-of-memory back-off: halve the batch and retry, losing nothing already produced.

The policy sizes batches from an estimate; this is the safety net when the
estimate (or the driver's free-memory figure) is wrong.  Work is done batch by
batch; when a batch runs out of memory the device cache is emptied, the batch
size is halved, and only the failed batch is redone (in smaller pieces).  The
smaller size is kept for the rest of the items.  At batch size 1 it gives up
with :class:`~tortoise_xpu.errors.OutOfMemory` and a message saying what to try.
"""

from __future__ import annotations

import gc
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch

from tortoise_xpu.errors import OutOfMemory

__all__ = ["OOM_MESSAGES", "is_oom_error", "run_with_backoff"]

T = TypeVar("T")
R = TypeVar("R")

#: Substrings of RuntimeError messages that mean the allocator gave up: CUDA/HIP/XPU/MPS
#: (" out of memory") and the CPU allocator.
OOM_MESSAGES: tuple[str, ...] = (" out of memory", "can't allocate memory")


def _oom_types() -> tuple[type[BaseException], ...]:
    types = []
    for owner, name in ((torch, "OutOfMemoryError"), (getattr(torch, "cuda", None), "OutOfMemoryError")):
        cls = getattr(owner, name, None) if owner is not None else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            types.append(cls)
    return tuple(types)


def is_oom_error(exc: BaseException) -> bool:
    """True when ``exc`` is a device (or host) out-of-memory failure that a smaller batch may avoid."""
    oom_types = _oom_types()
    if oom_types and isinstance(exc, oom_types):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc).lower()
        return any(text in message for text in OOM_MESSAGES)
    return False


def _give_up_message(backend: Any, detail: str) -> str:
    where = f" on {getattr(backend, 'name', 'the device')}" if backend is not None else ""
    return (f"out of memory{where} even at batch size 1 ({detail}); try --low-vram (one model on the device "
            "at a time), --dtype float16 or bfloat16, a smaller --batch-size for the other stages, "
            "or --device cpu")


def run_with_backoff(work: Callable[[Sequence[T]], Iterable[R]], items: Sequence[T], batch_size: int,
                     backend: Any = None, on_progress: Callable[[int, int], None] | None = None,
                     on_backoff: Callable[[int, int], None] | None = None) -> list[R]:
    """Run ``work`` over ``items`` in batches, halving the batch on out-of-memory errors.

    Args:
        work: called with a slice of ``items``; returns one result per item, in order.
        items: everything to process.
        batch_size: the first batch size to try (e.g. ``policy.ar_batch_size``).
        backend: its ``empty_cache()`` is called after an OOM (``None``: only ``gc.collect``).
        on_progress: called as ``on_progress(done, total)`` after each finished batch.
        on_backoff: called as ``on_backoff(old_size, new_size)`` when the batch is halved.

    Returns:
        The results of every item, in the order of ``items``, each produced exactly once.

    Raises:
        OutOfMemory: a batch of one item still ran out of memory.
        ValueError: ``batch_size`` < 1, or ``work`` returned the wrong number of results.
        Any non-OOM exception from ``work`` unchanged.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = len(items)
    results: list[R] = []
    done = 0
    size = batch_size
    while done < total:
        batch = items[done:done + size]
        detail = None
        try:
            out = list(work(batch))
        except Exception as exc:
            if not is_oom_error(exc):
                raise
            if len(batch) <= 1:
                raise OutOfMemory(_give_up_message(backend, " ".join(str(exc).split())[:200])) from exc
            detail = str(exc)
        if detail is not None:
            # Outside the except block: the exception's traceback (and the tensors its frames
            # hold) is gone, so emptying the cache can actually return that memory.
            gc.collect()
            if backend is not None:
                backend.empty_cache()
            new_size = max(1, min(size, len(batch)) // 2)
            if on_backoff is not None:
                on_backoff(size, new_size)
            size = new_size
            continue
        if len(out) != len(batch):
            raise ValueError(f"work returned {len(out)} results for a batch of {len(batch)} items")
        results.extend(out)
        done += len(batch)
        if on_progress is not None:
            on_progress(done, total)
    return results
