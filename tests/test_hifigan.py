"""HiFi-GAN decoder (api_fast streaming): official size, checkpoint conversion, parity with the original."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from torch import nn

from tests.reference import detweights
from tortoise_xpu.models.hifigan import HifiGanConfig, HifiganGenerator

GOLDENS = os.path.join(os.path.dirname(__file__), "reference", "goldens", "vocoders", "hifigan.pt")
OFFICIAL_PARAMS = 17_844_226  # the original, counted with weight norm (weight_g + weight_v)
FOLDED_PARAMS = 17_834_113    # ours: one plain weight per conv


def _normed_convs(model: HifiganGenerator) -> list[nn.Module]:
    """Every conv the original wraps in weight norm: all but the speaker projection ``cond_layer``."""
    return [m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) and name != "cond_layer"]


def weight_normed(model: HifiganGenerator) -> HifiganGenerator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for conv in _normed_convs(model):
            torch.nn.utils.weight_norm(conv)
    return model


def _config(d: dict) -> HifiGanConfig:
    def conv(v):
        return tuple(conv(x) for x in v) if isinstance(v, list) else v
    return HifiGanConfig(**{k: conv(v) for k, v in d.items()})


def _cases(official: bool) -> list:
    cases = torch.load(GOLDENS, weights_only=True)["cases"]
    return [pytest.param(c, id=f"{c['name']}-seed{c['seed']}") for c in cases if (c["name"] == "official") == official]


def test_parameter_count_official_on_meta():
    with torch.device("meta"):
        model = HifiganGenerator()
    ours = sum(p.numel() for p in model.parameters())
    assert ours == FOLDED_PARAMS
    gains = sum(conv.weight.shape[0] for conv in _normed_convs(model))  # the original's weight_g entries
    assert ours + gains == OFFICIAL_PARAMS


def test_tiny_config_is_small():
    assert sum(p.numel() for p in HifiganGenerator(HifiGanConfig.tiny()).parameters()) < 5_000_000


def _check_case(case: dict) -> None:
    cfg = _config(case["config"])
    normed = weight_normed(HifiganGenerator(cfg))
    detweights.fill_(normed, case["seed"])
    assert detweights.digest(normed) == case["digest"], "weights differ from the original's"
    model = HifiganGenerator(cfg).eval()
    model.load_state_dict(HifiganGenerator.convert_state_dict(normed.state_dict()), strict=True)
    if "latents" in case:
        torch.testing.assert_close(model.inference(case["latents"], case["g"]), case["wav"], atol=1e-4, rtol=1e-5)
    else:
        with torch.no_grad():
            torch.testing.assert_close(model(case["x"]), case["out"], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("case", _cases(official=False))
def test_matches_original(case):
    _check_case(case)


@pytest.mark.slow  # 18M parameters filled on both sides: several seconds, run by hand (-m slow)
@pytest.mark.parametrize("case", _cases(official=True))
def test_matches_original_official_size(case):
    _check_case(case)


def test_inference_length_and_per_item_speaker():
    cfg = HifiGanConfig.tiny()
    model = detweights.fill_(HifiganGenerator(cfg), 3).eval()
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 7, cfg.in_channels, generator=gen)
    g = torch.randn(2, cfg.cond_channels, generator=gen)
    wav = model.inference(latents, g)
    frames = math.floor(math.floor(7 * 4) * 24000 / 22050)
    assert wav.shape == (2, 1, frames * cfg.hop_length)
    # A (B, cond) speaker batch conditions each item on its own row.
    for i in range(2):
        torch.testing.assert_close(wav[i:i + 1], model.inference(latents[i:i + 1], g[i:i + 1]))
    assert not torch.allclose(wav[0], model.inference(latents[:1], g[1:])[0])
    with pytest.raises(ValueError):
        model.inference(latents)  # a conditioned decoder needs g


def test_convert_state_dict_accepts_parametrized_weight_norm():
    conv = nn.Conv1d(4, 3, 5)
    detweights.fill_(conv, 1)
    expected = conv.weight.detach().clone()
    parametrized = torch.nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 3, 5))
    with torch.no_grad():
        g = torch.linalg.vector_norm(expected, dim=(1, 2), keepdim=True)
        parametrized.parametrizations.weight.original0.copy_(g)
        parametrized.parametrizations.weight.original1.copy_(expected)
        parametrized.bias.copy_(conv.bias)
    folded = HifiganGenerator.convert_state_dict(parametrized.state_dict())
    assert set(folded) == {"weight", "bias"}
    torch.testing.assert_close(folded["weight"], expected)


@pytest.mark.parametrize("resblock_type", ["1", "2"])
def test_channels_last_decoder_gives_the_plain_decoders_waveform(resblock_type):
    """use_channels_last (the CPU's preparation) runs every conv but cond_layer as a channels-last
    2-D one: float32 the same waveform up to summation order, bfloat16 within its rounding."""
    import copy

    from tortoise_xpu.models.channels_last import ChannelsLastConv1d, ChannelsLastConvTranspose1d

    cfg = HifiGanConfig(**{**HifiGanConfig.tiny().__dict__, "resblock_type": resblock_type})
    model = detweights.fill_(HifiganGenerator(cfg), 5).eval()
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 9, cfg.in_channels, generator=gen)
    g = torch.randn(2, cfg.cond_channels, generator=gen)
    want = model.inference(latents, g)
    fast = copy.deepcopy(model).use_channels_last()
    kinds = {type(m) for m in fast.modules()}
    assert ChannelsLastConv1d in kinds and ChannelsLastConvTranspose1d in kinds and nn.ConvTranspose1d not in kinds
    assert isinstance(fast.cond_layer, nn.Conv1d)
    got = fast.inference(latents, g)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    half = copy.deepcopy(model).to(torch.bfloat16).use_channels_last()
    low = half.inference(latents.bfloat16(), g.bfloat16())
    assert low.dtype == torch.bfloat16
    assert (low.float() - want).abs().max() < 5e-2 * want.abs().max()
