"""Token sampling for the AR decode loop, kept on the device and free of host syncs.

The logit processing follows what the original got from Hugging Face ``generate``
(transformers 4.31) with its arguments: repetition penalty over every id seen so far
(the prompt's placeholder id 1 and the start token included), optional typical
sampling, then temperature, top-k (HF's default 50) and top-p.  The draw itself is
an inverse-CDF lookup against uniforms drawn up front from a CPU generator, so one
seed gives the same tokens on every backend (up to floating point) and the loop
never waits on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingSettings:
    """Knobs of the AR sampler; defaults are the original's ``tts()`` defaults."""

    temperature: float = 0.8
    top_p: float = 0.8
    top_k: int = 50
    repetition_penalty: float = 2.0
    typical_sampling: bool = False
    typical_mass: float = 0.9
    # Accepted for API compatibility: with sampling and one beam it has no effect (as in the original).
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not 0 < self.typical_mass <= 1:
            raise ValueError(f"typical_mass must be in (0, 1], got {self.typical_mass}")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive / multiply negative logits of every id marked in ``seen`` (B, V) by ``penalty``."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def apply_typical(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2022): keep the tokens closest to the entropy."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    entropy = -(logp * p).nansum(-1, keepdim=True)
    shifted = (-logp - entropy).abs()
    sorted_scores, order = torch.sort(shifted, dim=-1)
    cum = logits.gather(-1, order).softmax(-1).cumsum(-1)
    last = (cum < mass).sum(-1, keepdim=True)
    remove_sorted = sorted_scores > sorted_scores.gather(-1, last.clamp(max=logits.shape[-1] - 1))
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits per row (``k`` = 0 keeps all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: drop the least likely tokens whose total mass is at most ``1 - p``."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending, as HF does
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove_sorted = cum <= (1 - p)
    remove_sorted[..., -1] = False  # always keep the most likely token
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, NEG_INF)


def process_logits(logits: torch.Tensor, seen: torch.Tensor, s: SamplingSettings) -> torch.Tensor:
    """The full processor chain on float32 logits (B, V); ``seen`` (B, V) marks ids already in the sequence."""
    logits = apply_repetition_penalty(logits.float(), seen, s.repetition_penalty)
    if s.typical_sampling:
        logits = apply_typical(logits, s.typical_mass)
    logits = logits / s.temperature
    logits = apply_top_k(logits, s.top_k)
    return apply_top_p(logits, s.top_p)


def draw(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample one id per row of processed ``logits`` by inverse CDF at uniforms ``u`` (B,) in [0, 1).

    Filtered (-inf) ids have zero mass and are never chosen; counting instead of
    searchsorted keeps the op set small for backends with gaps (DirectML).
    """
    probs = torch.softmax(logits, dim=-1)
    cdf = probs.cumsum(-1)
    target = u.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
    idx = (cdf <= target).sum(-1)
    # Guard against landing past the last kept id through rounding in the cumulative sum.
    idx = idx.clamp(max=logits.shape[-1] - 1)
    kept = torch.isfinite(logits).gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    return torch.where(kept, idx, logits.argmax(-1))


def uniforms(generator: torch.Generator, steps: int, batch: int) -> torch.Tensor:
    """All the uniforms a decode run needs, drawn at once on the CPU: (steps, batch) float64→float32."""
    return torch.rand(steps, batch, generator=generator, dtype=torch.float32)
