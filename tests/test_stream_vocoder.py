"""The windowed streaming vocoder (pipeline/stream_vocoder.py) against the full HiFi-GAN decode."""

from __future__ import annotations

import pytest
import torch

from tests.reference import detweights
from tortoise_xpu.models.hifigan import HifiGanConfig, HifiganGenerator
from tortoise_xpu.pipeline.stream_vocoder import StreamVocoder, frame_count, stable_frames


def _decoder(config: HifiGanConfig, seed: int = 5) -> HifiganGenerator:
    return detweights.fill_(HifiganGenerator(config), seed).eval()


# The tiny decoder of the test models (registry: hop 256 as the official one) and a deeper one with the
# official kernel/dilation layout at a smaller width, so the receptive field is the official 15 frames.
TINY = HifiGanConfig(in_channels=64, cond_channels=64, upsample_factors=(8, 8, 4), upsample_kernel_sizes=(16, 16, 8),
                     resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)), resblock_kernel_sizes=(3, 5),
                     upsample_initial_channel=32)
OFFICIAL_LAYOUT = HifiGanConfig(in_channels=32, cond_channels=16, upsample_initial_channel=64)


def test_receptive_field_of_the_official_decoder():
    from tortoise_xpu.models import registry

    assert registry.build("hifidecoder.pth").receptive_field() == 15
    assert _decoder(OFFICIAL_LAYOUT).receptive_field() == 15


@pytest.mark.parametrize("codes", [1, 2, 3, 5, 8, 13, 21, 60, 61, 200])
def test_stable_frames_do_not_change_with_more_latents(codes):
    g = torch.Generator().manual_seed(codes)
    latents = torch.randn(1, codes + 7, 4, generator=g)
    short = HifiganGenerator.latent_frames(latents[:, :codes])
    longer = HifiganGenerator.latent_frames(latents)
    assert short.shape[-1] == frame_count(codes)
    n = stable_frames(codes)
    assert 0 <= n <= frame_count(codes) and (codes < 4 or n >= frame_count(codes) - 12)
    torch.testing.assert_close(short[..., :n], longer[..., :n], rtol=0, atol=0)


@pytest.mark.parametrize("windows", [(), None, (40, 64)], ids=["exact", "default", "small"])
@pytest.mark.parametrize("config,pushes", [(TINY, [6, 5, 5]), (TINY, [1, 1, 3, 9, 2, 20]),
                                           (OFFICIAL_LAYOUT, [60, 40, 40, 40, 20]),
                                           (OFFICIAL_LAYOUT, [130, 3, 90])])
def test_windowed_chunks_join_into_the_full_decode(config, pushes, windows):
    """Exact windows, the default fixed lengths and short ones (several windows per push): the
    chunks joined are the full decode, and whatever was emitted is final."""
    hifi = _decoder(config)
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(1, sum(pushes), config.in_channels, generator=gen)
    speaker = torch.randn(1, config.cond_channels, generator=gen)
    full = hifi.inference(latents, speaker).reshape(-1)
    voc = StreamVocoder(hifi, speaker, windows=windows)
    chunks, at = [], 0
    for k in pushes:
        chunks.append(voc.push(latents[:, at:at + k]))
        at += k
        # whatever was emitted so far is already the final audio
        so_far = torch.cat(chunks)
        torch.testing.assert_close(so_far, full[:so_far.numel()], rtol=1e-4, atol=1e-5)
    chunks.append(voc.finish())
    joined = torch.cat(chunks)
    assert joined.numel() == full.numel() == voc.emitted
    torch.testing.assert_close(joined, full, rtol=1e-4, atol=1e-5)
    total = frame_count(sum(pushes))
    if windows == ():
        # bounded work: each window is its new frames plus at most 2 x context (not everything so far)
        assert voc.decoded_frames <= total + 2 * voc.context * len(pushes)
    else:
        # no window longer than the longest length: longer spans are cut into several windows
        assert max(voc.window_lengths) <= voc.windows[-1]
        assert voc.decoded_frames >= total


def test_too_little_context_is_not_the_full_decode():
    """The receptive field is what makes the windows exact: with less, the joins show."""
    hifi = _decoder(OFFICIAL_LAYOUT)
    gen = torch.Generator().manual_seed(2)
    latents = torch.randn(1, 80, OFFICIAL_LAYOUT.in_channels, generator=gen)
    speaker = torch.randn(1, OFFICIAL_LAYOUT.cond_channels, generator=gen)
    full = hifi.inference(latents, speaker).reshape(-1)
    voc = StreamVocoder(hifi, speaker, context=2)
    joined = torch.cat([voc.push(latents[:, :40]), voc.push(latents[:, 40:]), voc.finish()])
    assert joined.numel() == full.numel()
    assert float((joined - full).abs().max()) > 1e-3


def test_push_after_finish_and_empty_pushes():
    hifi = _decoder(TINY)
    voc = StreamVocoder(hifi, torch.zeros(1, TINY.cond_channels))
    assert voc.push(torch.zeros(1, 0, TINY.in_channels)).numel() == 0
    assert voc.finish().numel() == 0
    with pytest.raises(RuntimeError):
        voc.push(torch.zeros(1, 2, TINY.in_channels))


def test_fixed_windows_repeat_one_length_across_a_stream():
    """A steady stream of 40-code chunks decodes every window but the first and last at one
    length (what lets oneDNN compile the decoder once), and the official decoder is warmed up on
    the default lengths."""
    hifi = _decoder(OFFICIAL_LAYOUT)
    gen = torch.Generator().manual_seed(4)
    latents = torch.randn(1, 300, OFFICIAL_LAYOUT.in_channels, generator=gen)
    voc = StreamVocoder(hifi, torch.zeros(1, OFFICIAL_LAYOUT.cond_channels))
    for at in range(0, 300, 40):
        voc.push(latents[:, at:at + 40])
    voc.finish()
    assert set(voc.window_lengths[1:]) <= set(voc.windows)  # the first: shorter than 256 frames in all
    assert len(set(voc.window_lengths[1:-2])) == 1, voc.window_lengths  # the last push and finish(): shorter
    assert hifi.warm_up((16, 32)) is hifi
    with pytest.raises(ValueError, match="no room"):
        StreamVocoder(hifi, None, windows=(20,))
