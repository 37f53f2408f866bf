"""The AR logit processors and the inverse-CDF draw."""

import math

import pytest
import torch

from tortoise_xpu.pipeline.sampling import (SamplingSettings, apply_repetition_penalty, apply_top_k, apply_top_p,
                                            apply_typical, draw, process_logits, uniforms)


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 3.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 3.0]]


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[0.1, 5.0, 3.0, -1.0, 4.0]])
    out = apply_top_k(logits, 2)
    assert torch.isfinite(out).tolist() == [[False, True, False, False, True]]
    assert apply_top_k(logits, 0) is logits


def test_top_p_matches_nucleus_definition():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = apply_top_p(probs.log(), 0.8)
    # ascending cumulative mass: .05, .20, .50, 1.0 -> drop those <= 0.2
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    # never drops everything
    out = apply_top_p(probs.log(), 1e-9)
    assert torch.isfinite(out).sum().item() == 1 and torch.isfinite(out)[0, 0]


def test_typical_keeps_tokens_near_entropy():
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    out = apply_typical(logits, 0.9)
    assert torch.isfinite(out)[0, :2].all() and not torch.isfinite(out)[0, 3]


def test_draw_is_inverse_cdf_and_skips_filtered():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, 0.0]]).repeat(3, 1)
    u = torch.tensor([0.1, 0.5, 0.9])
    assert draw(logits, u).tolist() == [0, 2, 3]
    # greedy settings pick the argmax whatever u is
    s = SamplingSettings(top_k=1)
    logits = torch.randn(4, 50)
    seen = torch.zeros(4, 50, dtype=torch.bool)
    assert torch.equal(draw(process_logits(logits, seen, s), torch.rand(4)), logits.argmax(-1))


def test_draw_frequencies_follow_probabilities():
    probs = torch.tensor([0.1, 0.6, 0.3])
    g = torch.Generator().manual_seed(0)
    u = uniforms(g, 20000, 1)[:, 0]
    tokens = draw(probs.log().expand(20000, 3), u)
    freq = torch.bincount(tokens, minlength=3).float() / 20000
    assert torch.allclose(freq, probs, atol=0.015)


def test_same_seed_same_uniforms():
    a = uniforms(torch.Generator().manual_seed(7), 5, 3)
    b = uniforms(torch.Generator().manual_seed(7), 5, 3)
    assert torch.equal(a, b) and a.shape == (5, 3)


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(repetition_penalty=0)])
def test_settings_validation(bad):
    with pytest.raises(ValueError):
        SamplingSettings(**bad)
