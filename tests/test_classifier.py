"""The tortoise-detect classifier: official size and parity with the original."""

from __future__ import annotations

import os

import pytest
import torch

from tests.reference import detweights
from tortoise_xpu.models.classifier import AudioMiniEncoderWithClassifierHead, ClassifierConfig

GOLDENS = os.path.join(os.path.dirname(__file__), "reference", "goldens", "vocoders", "classifier.pt")


def _cases(official: bool) -> list:
    cases = torch.load(GOLDENS, weights_only=True)["cases"]
    return [pytest.param(c, id=f"{c['name']}-seed{c['seed']}") for c in cases if (c["name"] == "official") == official]


def test_parameter_count_official_on_meta():
    with torch.device("meta"):
        model = AudioMiniEncoderWithClassifierHead()
    assert sum(p.numel() for p in model.parameters()) == 15_224_002


def test_tiny_config_is_small():
    assert sum(p.numel() for p in AudioMiniEncoderWithClassifierHead(ClassifierConfig.tiny()).parameters()) < 5_000_000


def _check_case(case: dict) -> None:
    model = AudioMiniEncoderWithClassifierHead(ClassifierConfig(**case["config"])).eval()
    detweights.fill_(model, case["seed"])
    assert detweights.digest(model) == case["digest"], "weights differ from the original's"
    with torch.no_grad():
        torch.testing.assert_close(model(case["x"]), case["logits"], atol=1e-4, rtol=1e-5)
    assert model.classify(case["clip"]) == pytest.approx(case["prob"].item(), abs=1e-5)
    assert model.classify(case["clip"][0]) == pytest.approx(case["prob"].item(), abs=1e-5)


@pytest.mark.parametrize("case", _cases(official=False))
def test_matches_original(case):
    _check_case(case)


@pytest.mark.slow  # 15M parameters filled on both sides: a few seconds, run by hand (-m slow)
@pytest.mark.parametrize("case", _cases(official=True))
def test_matches_original_official_size(case):
    _check_case(case)


def test_classify_crops_and_checks_shape():
    model = detweights.fill_(AudioMiniEncoderWithClassifierHead(ClassifierConfig.tiny()), 1).eval()
    clip = torch.randn(1, 900, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    p = model.classify(clip, max_samples=500)
    assert 0.0 <= p <= 1.0
    assert p == pytest.approx(model.classify(clip[:, :500]))
    assert p != pytest.approx(model.classify(clip), abs=1e-6)
    with pytest.raises(ValueError):
        model.classify(torch.zeros(2, 900))  # a stereo pair is not one clip
