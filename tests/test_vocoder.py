"""UnivNet vocoder: official size, checkpoint conversion, and parity with the original's goldens."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from torch import nn

from tests.reference import detweights
from tortoise_xpu.models.vocoder import (MEL_SILENCE, UnivNetConfig, UnivNetGenerator,
                                         location_variable_conv)

GOLDENS = os.path.join(os.path.dirname(__file__), "reference", "goldens", "vocoders", "univnet.pt")
KERNEL_GAIN = 0.1  # as gen_vocoders.KERNEL_GAIN
OFFICIAL_PARAMS = 14_865_506  # the original, counted with weight norm (weight_g + weight_v)
FOLDED_PARAMS = 14_789_153    # ours: one plain weight per conv


def _convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]


def weight_normed(model: nn.Module) -> nn.Module:
    """Wrap every conv in torch's (old-style) weight norm: the original's layout, hence its fill_ draws."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for conv in _convs(model):
            torch.nn.utils.weight_norm(conv)
    return model


def _config(d: dict) -> UnivNetConfig:
    return UnivNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _cases(official: bool) -> list:
    cases = torch.load(GOLDENS, weights_only=True)["cases"]
    return [pytest.param(c, id=f"{c['name']}-seed{c['seed']}") for c in cases if (c["name"] == "official") == official]


def test_parameter_count_official_on_meta():
    with torch.device("meta"):
        model = UnivNetGenerator()
    ours = sum(p.numel() for p in model.parameters())
    assert ours == FOLDED_PARAMS
    # The original also stores a gain per output slice (dim 0) of every weight-normed conv.
    gains = sum(conv.weight.shape[0] for conv in _convs(model))
    assert ours + gains == OFFICIAL_PARAMS


def test_tiny_config_is_small():
    assert sum(p.numel() for p in UnivNetGenerator(UnivNetConfig.tiny()).parameters()) < 5_000_000


def test_config_rejects_inconsistent_hop():
    with pytest.raises(ValueError):
        UnivNetConfig(strides=(8, 8, 2))


def _check_case(case: dict) -> None:
    cfg = _config(case["config"])
    normed = weight_normed(UnivNetGenerator(cfg))
    detweights.fill_(normed, case["seed"])
    with torch.no_grad():  # gen_vocoders.condition_univnet_: tame the random kernels identically
        for block in normed.res_stack:
            block.kernel_predictor.kernel_conv.weight_g.mul_(KERNEL_GAIN)
    assert detweights.digest(normed) == case["digest"], "weights differ from the original's"
    model = UnivNetGenerator(cfg).eval()
    model.load_state_dict(UnivNetGenerator.convert_state_dict({"model_g": normed.state_dict()}), strict=True)

    mel, z = case["mel"], case["z"]
    torch.testing.assert_close(model.inference(mel, z=z), case["wav"], atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(mel, z[:, :, : mel.shape[2]]), case["raw"], atol=1e-4, rtol=1e-5)
    # The original draws z from the global CPU generator; a Generator with the same seed draws the same.
    drawn = model.inference(mel, generator=torch.Generator().manual_seed(case["noise_seed"]))
    torch.testing.assert_close(drawn, case["wav_drawn"], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("case", _cases(official=False))
def test_matches_original(case):
    _check_case(case)


@pytest.mark.slow  # 15M parameters filled on both sides: a few seconds, run by hand (-m slow)
@pytest.mark.parametrize("case", _cases(official=True))
def test_matches_original_official_size(case):
    _check_case(case)


def _lvc_loop(x, kernel, bias, hop):
    """The definition, one output sample at a time: a k=3 same-padded conv whose weights change per frame."""
    b, c_in, length = x.shape
    _, _, c_out, k, frames = kernel.shape
    xp = torch.nn.functional.pad(x, (1, 1))
    out = torch.empty(b, c_out, length)
    for t in range(length):
        f = t // hop
        window = xp[:, :, t:t + k]                                   # (B, C_in, k)
        out[:, :, t] = torch.einsum("bik,biok->bo", window, kernel[..., f]) + bias[:, :, f]
    return out


def test_location_variable_conv_is_a_per_frame_convolution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4 * 5, generator=g)
    kernel = torch.randn(2, 3, 6, 3, 4, generator=g)
    bias = torch.randn(2, 6, 4, generator=g)
    torch.testing.assert_close(location_variable_conv(x, kernel, bias, hop=5), _lvc_loop(x, kernel, bias, 5))
    with pytest.raises(ValueError):
        location_variable_conv(x[:, :, :-1], kernel, bias, hop=5)


def test_convert_state_dict_folds_weight_norm():
    conv = weight_normed(nn.Sequential(nn.Conv1d(3, 4, 5)))
    detweights.fill_(conv, 7)
    raw = conv.state_dict()
    assert {"0.weight_g", "0.weight_v"} <= set(raw)
    folded = UnivNetGenerator.convert_state_dict({"model_g": raw})
    assert set(folded) == {"0.weight", "0.bias"}
    torch.nn.utils.remove_weight_norm(conv[0])  # torch's own folding
    torch.testing.assert_close(folded["0.weight"], conv[0].weight.detach())
    # A bare (already folded) state dict passes through.
    assert UnivNetGenerator.convert_state_dict(folded).keys() == folded.keys()


def test_inference_length_noise_and_silence_padding():
    cfg = UnivNetConfig.tiny()
    model = detweights.fill_(UnivNetGenerator(cfg), 5).eval()
    mel = torch.randn(2, cfg.n_mel_channels, 6)
    wav = model.inference(mel, generator=torch.Generator().manual_seed(1))
    assert wav.shape == (2, 1, 6 * cfg.hop_length)
    assert wav.abs().max() <= 1.0
    again = model.inference(mel, generator=torch.Generator().manual_seed(1))
    other = model.inference(mel, generator=torch.Generator().manual_seed(2))
    assert torch.equal(wav, again) and not torch.allclose(wav, other)
    # Explicit noise: the same as the seeded draw of shape (B, noise_dim, frames + 10).
    z = torch.randn(2, cfg.noise_dim, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.inference(mel, z=z), wav)
    # Equal to running forward on the silence-padded mel and cutting the padding off.
    padded = torch.cat([mel, torch.full((2, cfg.n_mel_channels, 10), MEL_SILENCE)], dim=2)
    with torch.no_grad():
        full = model(padded, z)
    torch.testing.assert_close(wav, full[:, :, : 6 * cfg.hop_length].clamp(-1, 1))
    assert math.prod(cfg.strides) == cfg.hop_length


def test_reflect_conv_takes_float16_with_the_same_numbers():
    """torch < 2.5 has no float16 reflect padding on the CPU: ReflectConv1d pads float16 in float32."""
    from tortoise_xpu.models.vocoder import ReflectConv1d

    torch.manual_seed(0)
    conv = ReflectConv1d(8, 4, 7, padding=3, padding_mode="reflect")
    plain = nn.Conv1d(8, 4, 7, padding=3, padding_mode="reflect")
    plain.load_state_dict(conv.state_dict())  # the same parameters and names as nn.Conv1d
    x = torch.randn(2, 8, 30)
    assert torch.equal(conv(x), plain(x))
    half = conv.half()(x.half())
    reference = torch.nn.functional.conv1d(torch.nn.functional.pad(x.half().float(), (3, 3), mode="reflect").half(),
                                           conv.weight, conv.bias)
    assert half.dtype == torch.float16 and torch.equal(half, reference)
