"""Ranking stage: CLVP (and optionally CVVP) scores of the candidates, and the best ``k``."""

from __future__ import annotations

from typing import Any

import torch

from tortoise_xpu.pipeline.store import weight_dtype

__all__ = ["rank"]


def rank(store: Any, ctx: Any, text: torch.Tensor, codes: torch.Tensor, k: int, cvvp_amount: float = 0.0,
         ar_mels: torch.Tensor | None = None, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (N,) of fixed candidates ``codes`` (N, L) against ``text``, and the indices of the best ``k``.

    ``cvvp_amount`` in [0, 1] mixes CVVP's voice-similarity score in (it needs the clips' AR mels,
    ``ar_mels`` (1, clips, 80, T)); both on the CPU.
    """
    dev = store.device
    scores = []
    with torch.no_grad():
        # Without voice clips (random voice, saved latents) CVVP has nothing to compare with:
        # CLVP alone ranks, whatever cvvp_amount says (the original crashed on cvvp_amount=1 there).
        if cvvp_amount < 1 or ar_mels is None:
            with store.on_device("clvp", ctx) as clvp:
                for i in range(0, codes.shape[0], batch):
                    scores.append(clvp.score(text.to(dev), codes[i:i + batch].to(dev)).float())
            clvp_scores = torch.cat(scores)
        if cvvp_amount > 0 and ar_mels is not None:
            with store.on_device("cvvp", ctx) as cvvp:
                mels = ar_mels[0].to(dev, weight_dtype(cvvp))  # (clips, 80, T)
                # CVVP.score averages over the clips, as the original's per-clip loop does
                cvvp_scores = torch.cat([cvvp.score(mels, codes[i:i + batch].to(dev)).float()
                                         for i in range(0, codes.shape[0], batch)])
            total = cvvp_scores if cvvp_amount >= 1 else cvvp_scores * cvvp_amount + clvp_scores * (1 - cvvp_amount)
        else:
            total = clvp_scores
    return total.cpu(), torch.topk(total, k=min(k, total.shape[0])).indices.cpu()
