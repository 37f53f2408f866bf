"""Time-stretching without a pitch change: WSOLA (waveform-similarity overlap-add), streaming.

Speech sped up or slowed down by ``speed`` (2.0 = half as long) keeps its pitch: the output is
built from windowed frames of the input taken every ``hop * speed`` input samples and laid
every ``hop`` output samples; each frame's start is moved by up to ``tolerance`` samples to the
place where it best continues the previous frame (highest cross-correlation with the input that
naturally followed it), so overlapping frames add in phase instead of beating.

:class:`TimeStretcher` takes the input in chunks (a stream's audio as it is produced) and returns
the output that is final so far.  The chunks joined have the length of the whole signal stretched
at once and the same frames, up to which of several near-equal correlation peaks a frame picks
(periodic sounds have one per pitch period, and float rounding of the correlation decides).
"""

from __future__ import annotations

import numpy as np

__all__ = ["TimeStretcher", "time_stretch", "MIN_SPEED", "MAX_SPEED"]

MIN_SPEED = 0.25
MAX_SPEED = 4.0


class TimeStretcher:
    """Streaming WSOLA at a fixed ``speed`` (output length ≈ input length / speed).

    Args:
        speed: 0.25..4.0; 1.0 passes the audio through unchanged.
        frame: analysis/synthesis frame in samples (1024 ≈ 43 ms at 24 kHz: a few pitch periods).
        tolerance: how far (samples) a frame's start may move to match the previous frame.
    """

    def __init__(self, speed: float, frame: int = 1024, tolerance: int = 256):
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be in {MIN_SPEED}..{MAX_SPEED}, got {speed}")
        self.speed = float(speed)
        self.frame = int(frame)
        self.hop = self.frame // 2
        self.tolerance = int(tolerance)
        n = np.arange(self.frame)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / self.frame)).astype(np.float64)  # periodic Hann
        self._inp = np.zeros(0, dtype=np.float64)
        self._base = 0             # input index of _inp[0] (input before it is no longer needed)
        self._acc = np.zeros(self.frame, dtype=np.float64)
        self._wacc = np.zeros(self.frame, dtype=np.float64)
        self._k = 0                # next output frame
        self._prev: int | None = None  # input start of the previous frame
        self._total_in = 0
        self._emitted = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add input samples; returns the output samples that are final now (float32)."""
        chunk = np.asarray(chunk, dtype=np.float64).reshape(-1)
        if self.speed == 1.0:
            self._emitted += chunk.size
            return chunk.astype(np.float32)
        self._inp = np.concatenate([self._inp, chunk])
        self._total_in += chunk.size
        return self._run(final=False)

    def flush(self) -> np.ndarray:
        """The rest of the output once the input has ended."""
        if self.speed == 1.0:
            return np.zeros(0, dtype=np.float32)
        return self._run(final=True)

    # ------------------------------------------------------------------------- internals
    def _slice(self, start: int, length: int) -> np.ndarray:
        """Input samples [start, start+length) (absolute indices), zeros past the end."""
        lo = start - self._base
        seg = self._inp[max(lo, 0):lo + length]
        if seg.size < length:
            seg = np.concatenate([seg, np.zeros(length - seg.size)])
        return seg

    def _run(self, final: bool) -> np.ndarray:
        out = []
        n, hop, tol = self.frame, self.hop, self.tolerance
        while True:
            nominal = int(round(self._k * hop * self.speed))
            if nominal >= self._total_in and (final or self._k > 0):
                break
            lo, hi = max(nominal - tol, 0), nominal + tol
            if not final and hi + n > self._total_in:
                break
            if self._prev is None:
                start = nominal
            else:
                template = self._slice(self._prev + hop, n)
                region = self._slice(lo, hi - lo + n)
                corr = np.correlate(region, template, mode="valid")
                start = lo + int(np.argmax(corr)) if np.any(template) else nominal
            self._acc += self._slice(start, n) * self.window
            self._wacc += self.window
            self._prev = start
            self._k += 1
            if final:
                hop_out = min(hop, max(int(round(self._total_in / self.speed)) - self._emitted, 0))
            else:
                hop_out = hop
            out.append(self._take(hop_out))
            # Input before the earliest place the next frames can read is no longer needed.
            keep_from = min(self._prev + hop, max(int(round(self._k * hop * self.speed)) - tol, 0))
            if keep_from - self._base > 4 * n:
                self._inp = self._inp[keep_from - self._base:]
                self._base = keep_from
        if final:
            want = int(round(self._total_in / self.speed))
            rest = max(want - self._emitted, 0)
            tail = self._take(min(rest, n))
            self._acc[:] = 0.0  # the input has ended: nothing more overlaps
            out.append(np.concatenate([tail, np.zeros(rest - tail.size, dtype=np.float32)]))
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, dtype=np.float32)

    def _take(self, count: int) -> np.ndarray:
        """Emit the first ``count`` accumulated samples (normalised by the window sum)."""
        w = self._wacc[:count]
        y = np.where(w > 1e-3, self._acc[:count] / np.maximum(w, 1e-3), 0.0)
        self._acc = np.concatenate([self._acc[count:], np.zeros(count)])
        self._wacc = np.concatenate([self._wacc[count:], np.zeros(count)])
        self._emitted += count
        return y.astype(np.float32)


def time_stretch(wav: np.ndarray, speed: float) -> np.ndarray:
    """The whole signal ``wav`` (1-D) stretched by ``speed`` (output ≈ len / speed samples)."""
    ts = TimeStretcher(speed)
    return np.concatenate([ts.push(wav), ts.flush()])
