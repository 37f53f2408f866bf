"""AR sampling stage: candidate code sequences from the autoregressive model.

Each candidate's uniforms are drawn up front from the run's generator, so a candidate's codes do
not depend on the batch size, on an out-of-memory back-off, nor on other runs sharing the store.
Batches run on a decode engine lent by the store (pipeline/decode.py); the run's context is
checked for cancellation at every step.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from tortoise_xpu.pipeline.store import weight_dtype
from tortoise_xpu.pipeline.sampling import SamplingSettings, uniforms

__all__ = ["sample_codes"]


def sample_codes(store: Any, ctx: Any, cond: torch.Tensor, text: torch.Tensor, num_samples: int,
                 settings: SamplingSettings, max_tokens: int, force: bool = False) -> torch.Tensor:
    """``num_samples`` candidate code sequences (num_samples, max_tokens), stop-padded, on the device.

    ``cond`` (1, D) AR voice latent, ``text`` (1, T) tokens; batches of ``ctx.policy.ar_batch_size``
    halve on out-of-memory errors.  ``force`` bans the stop token (benchmarks).  Fills the report's
    ``ar_steps``, ``decode_mode`` and ``graph_captures``.
    """
    from tortoise_xpu.backends.oom import run_with_backoff

    u = uniforms(ctx.generator, max_tokens, num_samples).t().contiguous()  # (num_samples, steps)
    dev = store.device
    with store.on_device("autoregressive", ctx) as ar, \
            store.decode_engine(ctx.policy, progress=lambda d, t: ctx.step("ar", d, t)) as engine:
        cond = cond.to(dev)
        text = text.to(dev)
        captures = engine.captures

        def work(ids: Sequence[int]) -> list[torch.Tensor]:
            rows = u[list(ids)]
            with torch.no_grad():
                # The cache must hold what the model computes (SDPA refuses mixed q/k dtypes): the
                # weights' dtype, whatever loaded or cast the model, rather than what the policy says.
                result = engine.decode(ar, cond, text, rows, settings, max_tokens, force,
                                       cache_dtype=weight_dtype(ar))
            ctx.report.ar_steps = max(ctx.report.ar_steps, result.steps)
            return list(result.codes.unbind(0))

        rows = run_with_backoff(work, list(range(num_samples)), ctx.policy.ar_batch_size, backend=store.backend)
        ctx.report.decode_mode = engine.mode
        ctx.report.graph_captures += engine.captures - captures
    return torch.stack(rows)
