"""Post-processing of sampled mel codes, with the original's semantics."""

from __future__ import annotations

import torch

CALM_TOKEN = 83  # the DVAE code for silence
END_CODES = (45, 45, 248)  # what the DVAE gives for a padded end; the diffusion model expects it
CALM_RUN_LIMIT = 8  # more than this many calm tokens in a row ends the speech


def fix_autoregressive_output(codes: torch.Tensor, stop_token: int) -> torch.Tensor:
    """Replace everything from the first stop token on with calm tokens and end on ``45, 45, 248``.

    ``codes`` is (B, N) or (N,); rows without a stop token are returned unchanged, as in
    the original.  Works on a copy.
    """
    squeeze = codes.dim() == 1
    codes = codes.clone().reshape(-1, codes.shape[-1])
    n = codes.shape[-1]
    is_stop = codes == stop_token
    has_stop = is_stop.any(-1)
    first = torch.where(has_stop, is_stop.int().argmax(-1), torch.full_like(has_stop, n, dtype=torch.long))
    pos = torch.arange(n, device=codes.device)
    after = pos.unsqueeze(0) >= first.unsqueeze(-1)
    codes = torch.where(after, torch.full_like(codes, CALM_TOKEN), codes)
    tail = torch.tensor(END_CODES, dtype=codes.dtype, device=codes.device)
    if n >= 3:
        codes[has_stop, -3:] = tail
    return codes.squeeze(0) if squeeze else codes


def trim_length(codes: torch.Tensor) -> int:
    """Number of latent frames to keep for one candidate's codes (N,).

    The original cuts at the index of the 9th consecutive calm token (">8 tokens gives the
    diffusion model breathing room"); without such a run all frames are kept.
    """
    run = 0
    for i, c in enumerate(codes.tolist()):
        run = run + 1 if c == CALM_TOKEN else 0
        if run > CALM_RUN_LIMIT:
            return i
    return codes.shape[-1]
