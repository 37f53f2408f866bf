"""CLVP: official shapes, and parity with the original tortoise-tts 3.0.0 (goldens from tests/reference/gen_clvp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.golden_cases import assert_max_abs, fill_like_the_original, load_cases
from tests.reference.detweights import digest
from tortoise_xpu.models.clvp import CLVP, CLVPConfig

GOLDEN = Path(__file__).parent / "reference" / "goldens" / "clvp" / "clvp.pt"


def _cases() -> list[dict]:
    return load_cases(GOLDEN, "gen_clvp.py")


def _build(case: dict) -> CLVP:
    return fill_like_the_original(CLVP(CLVPConfig(**case["config"])), case["seed"])


def test_official_parameter_count_and_names():
    with torch.device("meta"):
        model = CLVP()
    assert sum(p.numel() for p in model.parameters()) == 243_846_145
    sd = model.state_dict()
    # Names of the official clvp2.pth (a .wrap level from the original's checkpointing shim).
    assert tuple(sd["text_transformer.transformer.attn_layers.layers.0.1.wrap.to_q.weight"].shape) == (768, 768)
    ff_in = sd["speech_transformer.transformer.attn_layers.layers.39.1.wrap.net.0.proj.weight"]
    assert tuple(ff_in.shape) == (3072, 768)
    assert tuple(sd["text_transformer.transformer.attn_layers.layers.39.0.0.g"].shape) == (768,)
    assert tuple(sd["text_transformer.transformer.attn_layers.rotary_pos_emb.inv_freq"].shape) == (16,)
    assert "text_transformer.transformer.attn_layers.layers.40.0.0.g" not in sd
    assert len(sd) == 5 + 2 * (40 + 20 * 5 + 20 * 4 + 3)  # norms, attention, feed-forward, rotary+final norm


def test_tiny_is_small():
    assert sum(p.numel() for p in CLVP(CLVPConfig.tiny()).parameters()) < 5_000_000


def test_non_rotary_variant_is_refused():
    with pytest.raises(ValueError, match="use_xformers"):
        CLVP(CLVPConfig(use_xformers=False))


@pytest.mark.reference
@pytest.mark.parametrize("index", range(4))
@torch.no_grad()
def test_matches_original(index):
    case = _cases()[index]
    model = _build(case)
    assert digest(model) == case["digest"], "weights differ from the original's: state-dict layout drifted"
    b = case["codes"].shape[0]
    text, texts, codes = case["text"], case["texts"], case["codes"]

    assert_max_abs(model(text.repeat(b, 1), codes), case["sim"])
    assert_max_abs(model(texts, codes), case["sim_pairs"])
    assert_max_abs(model.similarity_matrix(texts, codes), case["matrix"])
    assert_max_abs(model(texts, codes, return_loss=True), case["loss"])
    # The ranking helper: one text encoded once, broadcast to every candidate.
    assert_max_abs(model.score(text, codes), case["sim"])
    assert_max_abs(model.score(texts, codes), case["sim_pairs"])
    # Padding masks with varying real lengths, against the original's masked path.
    assert_max_abs(model(texts, codes, text_mask=case["text_mask"], speech_mask=case["speech_mask"]), case["sim_masked"])


@torch.no_grad()
def test_padding_is_ignored_under_a_mask():
    model = _build(_cases()[0])
    g = torch.Generator().manual_seed(3)
    text = torch.randint(0, 256, (2, 9), generator=g)
    codes = torch.randint(0, 8192, (2, 25), generator=g)
    text_mask = torch.arange(9)[None] < torch.tensor([[9], [4]])
    speech_mask = torch.arange(25)[None] < torch.tensor([[12], [25]])
    base = model(text, codes, text_mask=text_mask, speech_mask=speech_mask)
    text2, codes2 = text.clone(), codes.clone()
    text2[~text_mask] = 7
    codes2[~speech_mask] = 99
    torch.testing.assert_close(model(text2, codes2, text_mask=text_mask, speech_mask=speech_mask), base)
    # ... and a masked row equals the same row cut to its real length.
    cut = model(text[1:, :4], codes[1:], text_mask=None, speech_mask=None)
    torch.testing.assert_close(base[1:], cut, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_score_is_batch_independent_and_deterministic():
    model = _build(_cases()[1])
    case = _cases()[1]
    text, codes = case["text"], case["codes"]
    full = model.score(text, codes)
    single = torch.cat([model.score(text, codes[i:i + 1]) for i in range(codes.shape[0])])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.score(text, codes), full, atol=0, rtol=0)
    # Ranking order is what the pipeline consumes.
    assert torch.equal(full.argsort(), case["sim"].argsort())


def test_score_rejects_bad_shapes():
    model = CLVP(CLVPConfig.tiny()).eval()
    with pytest.raises(ValueError):
        model.score(torch.zeros(2, 5, dtype=torch.long), torch.zeros(3, 7, dtype=torch.long))
    with pytest.raises(ValueError):
        model.score(torch.zeros(5, dtype=torch.long), torch.zeros(3, 7, dtype=torch.long))
