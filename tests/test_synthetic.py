"""The synthetic voice that ``bench`` and ``doctor`` use: fixed by its seed, voice-like lengths and levels."""

from __future__ import annotations

import torch

from tortoise_xpu.audio.rates import AR_SAMPLE_RATE as VOICE_RATE
from tortoise_xpu.audio.synthetic import VOICE_SECONDS, synthetic_clip, synthetic_voice


def test_synthetic_voice_is_fixed():
    a, b = synthetic_voice(), synthetic_voice()
    assert [c.shape for c in a] == [(1, int(s * VOICE_RATE)) for s in VOICE_SECONDS]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(abs(float(c.abs().max()) - 0.5) < 1e-6 for c in a)
    assert not torch.equal(synthetic_voice(1)[0], a[0])


def test_one_clip_is_the_first_clip_of_the_voice():
    assert torch.equal(synthetic_clip(2.0, 24000, seed=3), synthetic_voice(3, (2.0,), 24000)[0])
    assert synthetic_clip().shape == (1, int(2.5 * VOICE_RATE))
