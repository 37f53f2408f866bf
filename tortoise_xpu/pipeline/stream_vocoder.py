"""Streaming HiFi-GAN decoding over a bounded window: each chunk costs its own frames, not the whole sequence.

The original's stream (and ours before this module) decodes *every latent so far* at each chunk
and crossfades the new part in: at 200 codes and 40-code chunks that is 60 + 100 + 140 + 180 + 200
= 680 codes of HiFi-GAN work for 200 codes of audio, growing quadratically with the length.

:class:`StreamVocoder` decodes only a window: the frames it emits now plus the decoder's receptive
field on each side (``HifiganGenerator.receptive_field()``, derived from the config: 15 input frames
for the official decoder, 0.16 s of audio).  The decoder is a stack of non-causal convolutions, so
an output sample depends only on the input frames within that reach; a window with that much
context on both sides gives exactly the samples of the full decode (up to float summation order).
The interpolation from latents to frames is recomputed over all latents (cheap: no weights) and
only its *stable* frames are used: those that later latents can no longer change
(:func:`stable_frames`).

So each :meth:`StreamVocoder.push` emits the samples that are final (up to ``receptive_field`` +
a few interpolation frames before the current end) and holds back the rest until more latents come
or :meth:`StreamVocoder.finish` decodes the tail.  The emitted chunks joined are the full decode of
the final latent sequence (no crossfade needed, nothing provisional is ever played), at a cost of
about (new frames + 2 x receptive field) per chunk.

Windows come in a few fixed lengths (``windows``, by default the decoder's
``HifiganGenerator.WINDOW_FRAMES``): a window is widened to the next one with frames already there
(earlier ones, or later ones past the context, which cannot reach the emitted samples), and one
longer than the longest is cut into several.  The backend prepares its kernels per input length
(oneDNN on the CPU): on a 2-core Xeon a new window length cost 0.6-1.2 s against 0.12-0.14 s for
the same length again (docs/performance.md), so a stream of ever-new lengths spent most of its
vocoder time preparing.  With fixed lengths that happens once per length and process
(``HifiganGenerator.warm_up``, at load on the CPU).

Usage (any producer of AR latents)::

    voc = StreamVocoder(hifi, speaker_latent)
    for latents in new_latents_per_chunk:      # (1, k, 1024) each
        play(voc.push(latents))
    play(voc.finish())
"""

from __future__ import annotations

import math

import torch

from tortoise_xpu.models.hifigan import LATENT_TO_FRAMES, WINDOW_FRAMES

__all__ = ["StreamVocoder", "stable_frames", "frame_count"]


def _interp_stable(stable_in: int, in_len: int, scale: float) -> int:
    """Leading outputs of a ×``scale`` linear interpolation (align_corners=False, scale given) that
    read only the first ``stable_in`` of ``in_len`` inputs, with neither neighbour clamped at the end."""
    out_len = int(math.floor(in_len * scale))
    # output j reads inputs floor(src) and floor(src) + 1, src = (j + 0.5) / scale - 0.5 (clamped at 0)
    # -> need floor(src) + 1 <= min(stable_in, in_len) - 1
    limit = min(stable_in, in_len) - 2
    if limit < 0:
        return 0
    # largest j with (j + 0.5) / scale - 0.5 < limit + 1, minus one frame for float rounding in the kernel
    j = int(math.floor((limit + 1.5) * scale - 0.5))
    return max(0, min(out_len, j - 1))


def frame_count(codes: int) -> int:
    """Decoder input frames for ``codes`` latents: ``floor(floor(4 codes) * 24000/22050)``."""
    n = codes
    for scale in LATENT_TO_FRAMES:
        n = int(math.floor(n * scale))
    return n


def stable_frames(codes: int) -> int:
    """How many leading frames of ``latent_frames`` of ``codes`` latents equal those of any longer sequence."""
    stable, length = codes, codes
    for scale in LATENT_TO_FRAMES:
        stable = _interp_stable(stable, length, scale)
        length = int(math.floor(length * scale))
    return stable


class StreamVocoder:
    """Incremental HiFi-GAN decoding of a growing latent sequence (see the module docstring).

    Args:
        hifi: a ``HifiganGenerator`` (its ``latent_frames``, ``receptive_field`` and ``forward``).
        speaker: the AR voice latent (1, cond_channels) the decoder is conditioned on.
        context: frames of context on each side of a window (default: the decoder's receptive field).
        windows: the window lengths in frames, ascending (default ``WINDOW_FRAMES``; empty: every
            window exactly as long as it must be).

    :meth:`push` takes new latents (1, k, C) and returns the new final samples as a 1-D float32 CPU
    tensor (possibly empty); :meth:`finish` returns the rest.  ``emitted`` counts samples returned.
    """

    def __init__(self, hifi: torch.nn.Module, speaker: torch.Tensor, context: int | None = None,
                 windows: tuple[int, ...] | None = None):
        self.hifi = hifi
        self.context = int(hifi.receptive_field() if context is None else context)
        if self.context < 0:
            raise ValueError(f"context must be >= 0, got {self.context}")
        self.windows = tuple(sorted(WINDOW_FRAMES if windows is None else windows))
        if self.windows and self.windows[-1] <= 2 * self.context:
            raise ValueError(f"windows {self.windows} leave no room beside 2 x {self.context} frames of context")
        self.hop = int(hifi.config.hop_length)
        self._dtype = next(hifi.parameters()).dtype
        self._g = speaker.reshape(1, -1, 1).to(self._dtype) if speaker is not None else None
        self._latents: list[torch.Tensor] = []
        self.codes = 0            # latents received
        self.done_frames = 0      # frames whose samples were returned
        self.emitted = 0          # samples returned
        self.decoded_frames = 0   # frames run through the decoder in all (windows included): the work done
        self.window_lengths: list[int] = []  # the length of every window decoded, in order
        self.finished = False

    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """Add latents (1, k, C) (k may be 0); return the samples that no later latent can change."""
        if self.finished:
            raise RuntimeError("push() after finish()")
        if latents.numel():
            self._latents.append(latents.detach())
            self.codes += latents.shape[1]
        return self._decode(final=False)

    def finish(self) -> torch.Tensor:
        """The remaining samples, up to the end of the full decode of everything pushed."""
        out = self._decode(final=True)
        self.finished = True
        return out

    @torch.no_grad()
    def _decode(self, final: bool) -> torch.Tensor:
        empty = torch.zeros(0, dtype=torch.float32)
        if not self.codes:
            return empty
        total = frame_count(self.codes)
        end = total if final else max(self.done_frames, stable_frames(self.codes) - self.context)
        if end <= self.done_frames:
            return empty
        seq = torch.cat(self._latents, dim=1) if len(self._latents) > 1 else self._latents[0]
        self._latents = [seq]
        # The interpolation over all latents (no weights: negligible next to the convolutions).
        frames = self.hifi.latent_frames(seq.to(self._dtype))
        pieces = []
        for start, stop, lo, hi in self._windows(self.done_frames, end, total, final):
            wav = self.hifi(frames[:, :, lo:hi], self._g)
            self.decoded_frames += hi - lo
            self.window_lengths.append(hi - lo)
            pieces.append(wav.reshape(-1)[(start - lo) * self.hop:(stop - lo) * self.hop].float().cpu())
        out = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        self.done_frames = end
        self.emitted += out.numel()
        return out

    def _windows(self, start: int, end: int, total: int, final: bool) -> list[tuple[int, int, int, int]]:
        """``(start, stop, lo, hi)`` per decoder call: it emits frames [start, stop) from a window of
        frames [lo, hi), the frames to emit plus ``context`` on each side, widened to a length of
        ``windows`` where ``total`` frames allow it; the emitted ranges tile [start, end)."""
        ctx, out = self.context, []
        longest = self.windows[-1] - 2 * ctx if self.windows else end - start
        while start < end:
            stop = min(end, start + longest)
            lo = max(0, start - ctx)
            hi = total if final and stop == end else min(total, stop + ctx)
            length = next((w for w in self.windows if w >= hi - lo), None)
            if length is not None and length <= total:
                # widen with frames that exist: later ones first (past stop + context they cannot
                # reach the emitted samples), then earlier ones; a window ending at the true end
                # (hi == total) keeps it, as length >= total - lo there
                lo = min(lo, total - length)
                hi = lo + length
            out.append((start, stop, lo, hi))
            start = stop
        return out
