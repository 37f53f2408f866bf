"""Random-latent generators (rlg_auto / rlg_diffuser): official sizes and parity with the original."""

from __future__ import annotations

import os

import pytest
import torch

from tests.reference import detweights
from tortoise_xpu.models.random_latent import RandomLatentConverter, RLGConfig

GOLDENS = os.path.join(os.path.dirname(__file__), "reference", "goldens", "vocoders", "rlg.pt")


def filled(model: RandomLatentConverter, seed: int) -> RandomLatentConverter:
    """``detweights.fill_``, then gen_vocoders.rescale_equal_linear_: stored weights at their trained
    scale (N(0,1)/lr_mul), without which five layers shrink the noise to nothing."""
    detweights.fill_(model, seed)
    with torch.no_grad():
        for layer in model.layers[:-1]:
            layer.weight.mul_(layer.weight.shape[1] ** 0.5 / layer.lr_mul)
    return model


def _cases() -> list:
    # Official sizes (6M / 25M parameters filled on both sides, seconds each) run by hand with -m slow.
    cases = torch.load(GOLDENS, weights_only=True)["cases"]
    return [pytest.param(c, id=f"{c['name']}-seed{c['seed']}",
                         marks=[pytest.mark.slow] if c["name"].startswith("official") else [])
            for c in cases]


@pytest.mark.parametrize("channels,expected", [(1024, 6_297_600), (2048, 25_178_112)])
def test_parameter_count_official_on_meta(channels, expected):
    with torch.device("meta"):
        model = RandomLatentConverter(RLGConfig(channels=channels))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_tiny_config_is_small():
    assert sum(p.numel() for p in RandomLatentConverter(RLGConfig.tiny()).parameters()) < 5_000_000


@pytest.mark.parametrize("case", _cases())
def test_matches_original(case):
    model = filled(RandomLatentConverter(RLGConfig(channels=case["channels"])), case["seed"]).eval()
    assert detweights.digest(model) == case["digest"], "weights differ from the original's"
    with torch.no_grad():
        torch.testing.assert_close(model.convert(case["noise"]), case["out"], atol=1e-4, rtol=1e-5)
        # The original draws from the global CPU generator; ours from a Generator seeded alike.
        batch = case["noise"].shape[0]
        drawn = model(torch.zeros(batch), generator=torch.Generator().manual_seed(case["noise_seed"]))
    torch.testing.assert_close(drawn, case["drawn"], atol=1e-4, rtol=1e-5)


def test_forward_uses_only_the_batch_size_of_ref():
    model = filled(RandomLatentConverter(RLGConfig.tiny()), 0).eval()
    with torch.no_grad():
        a = model(torch.tensor([0.0]), generator=torch.Generator().manual_seed(5))
        b = model(torch.tensor([123.0]), generator=torch.Generator().manual_seed(5))
        c = model(torch.tensor([0.0]), generator=torch.Generator().manual_seed(6))
        three = model(torch.zeros(3, 7), generator=torch.Generator().manual_seed(5))
    assert a.shape == (1, 16) and three.shape == (3, 16)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    torch.testing.assert_close(three[:1], a)  # the first row of a batch is the same draw
