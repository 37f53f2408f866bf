"""Helpers shared by the golden-parity tests of the contrastive models (CLVP, CVVP)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.reference.detweights import fill_


def load_cases(golden: Path, generator: str) -> list[dict]:
    """The ``cases`` of a golden file made by ``tests/reference/<generator>``."""
    if not golden.exists():  # pragma: no cover - the goldens are committed
        pytest.skip(f"goldens missing: run tests/reference/{generator} ({golden})")
    return torch.load(golden, weights_only=True)["cases"]


def fill_like_the_original(model: nn.Module, seed: int) -> nn.Module:
    """``model`` in eval mode with the generator's deterministic weights; rotary frequencies are computed, not filled."""
    skip = [k for k in model.state_dict() if k.endswith("rotary_pos_emb.inv_freq")]
    return fill_(model.eval(), seed, skip=skip)


def assert_max_abs(ours: torch.Tensor, ref: torch.Tensor, atol: float = 1e-4) -> None:
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err <= atol, f"max abs diff {err:.3g} > {atol}"
