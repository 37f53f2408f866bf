"""CVVP: official shapes, and parity with the original tortoise-tts 3.0.0 (goldens from tests/reference/gen_clvp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.golden_cases import assert_max_abs, fill_like_the_original, load_cases
from tests.reference.detweights import digest
from tortoise_xpu.models.cvvp import CVVP, CVVPConfig

GOLDEN = Path(__file__).parent / "reference" / "goldens" / "clvp" / "cvvp.pt"


def _cases() -> list[dict]:
    return load_cases(GOLDEN, "gen_clvp.py")


def _build(case: dict) -> CVVP:
    return fill_like_the_original(CVVP(CVVPConfig(**case["config"])), case["seed"])


def test_official_parameter_count_and_names():
    with torch.device("meta"):
        model = CVVP()
    assert sum(p.numel() for p in model.parameters()) == 37_780_225
    sd = model.state_dict()
    assert tuple(sd["speech_emb.emb.weight"].shape) == (8192, 512)
    ff_in = sd["conditioning_transformer.transformer.attn_layers.layers.15.1.net.0.proj.weight"]
    assert tuple(ff_in.shape) == (1024, 512)
    assert tuple(sd["speech_transformer.pre_combiner.1.qkv.weight"].shape) == (1536, 512, 1)
    assert tuple(sd["cond_emb.0.weight"].shape) == (256, 80, 5)


def test_tiny_is_small():
    assert sum(p.numel() for p in CVVP(CVVPConfig.tiny()).parameters()) < 5_000_000


@pytest.mark.reference
@pytest.mark.parametrize("index", range(4))
@torch.no_grad()
def test_matches_original(index):
    case = _cases()[index]
    model = _build(case)
    assert digest(model) == case["digest"], "weights differ from the original's: state-dict layout drifted"
    speech, conds = case["speech"], case["conds"]
    assert_max_abs(model(conds, speech), case["sim_pairs"])
    assert_max_abs(model(conds, speech, return_loss=True), case["loss"])
    # The pipeline's clip-averaged score, each clip and candidate encoded once.
    clips = case["mel_conds"][0]  # (K, 80, T)
    assert_max_abs(model.score(clips, speech), case["score"])
    assert_max_abs(model.score(list(clips), speech), case["score"])


@torch.no_grad()
def test_score_accepts_clips_of_different_lengths():
    case = _cases()[0]
    model = _build(case)
    clips = case["mel_conds"][0]
    speech = case["speech"]
    short = clips[1, :, :40]
    got = model.score([clips[0:1], short], speech)
    want = (model(clips[0:1].repeat(speech.shape[0], 1, 1), speech)
            + model(short[None].repeat(speech.shape[0], 1, 1), speech)) / 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        model.score([], speech)
