"""The asset catalogue: every file, its source, size, sha256 and names."""

from __future__ import annotations

import hashlib

import pytest

from tortoise_xpu import assets
from tortoise_xpu.assets import fetch
from tortoise_xpu.errors import UserError

@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.setattr(fetch, "_RETRY_DELAY", 0.0)
    for var in (assets.ENV_MODELS, assets.ENV_HF_ENDPOINT, assets.ENV_HF_REVISION, assets.ENV_DATA_ENDPOINT):
        monkeypatch.delenv(var, raising=False)


def test_registry_lists_every_file():
    expected = {"autoregressive.pth", "diffusion_decoder.pth", "clvp2.pth", "cvvp.pth", "vocoder.pth",
                "rlg_auto.pth", "rlg_diffuser.pth", "classifier.pth", "hifidecoder.pth", "tokenizer.json",
                "mel_norms.pth"}
    assert set(assets.ASSETS) == expected
    for a in assets.ASSETS.values():
        if a.model:
            assert (a.source, a.repo) == ("hf", "Manmay/tortoise-tts")
            assert assets.asset_url(a) == f"https://huggingface.co/Manmay/tortoise-tts/resolve/{assets.HF_REVISION}/{a.name}"
        else:
            assert a.source == "github" and len(a.revision) == 40 and a.sha256 and a.size
            assert assets.asset_url(a) == f"https://raw.githubusercontent.com/neonbjb/tortoise-tts/{a.revision}/tortoise/data/{a.name}"
    assert assets.ASSETS["tokenizer.json"].size == 4409 and assets.ASSETS["mel_norms.pth"].size == 1067

def test_data_checksums_are_those_of_the_shipped_files(official_data):
    for name in ("tokenizer.json", "mel_norms.pth"):
        data = (official_data / name).read_bytes()
        assert len(data) == assets.ASSETS[name].size
        assert hashlib.sha256(data).hexdigest() == assets.ASSETS[name].sha256

def test_lookup_by_alias_and_unknown_name():
    assert assets.asset("clvp").name == "clvp2.pth"
    assert assets.asset("clvp2").name == "clvp2.pth"
    assert assets.asset("HiFiGAN").name == "hifidecoder.pth"
    assert assets.resolve_names(["vocoder", "autoregressive.pth"]) == ["autoregressive.pth", "vocoder.pth"]
    assert "cvvp.pth" not in assets.resolve_names(None, core_only=True)
    with pytest.raises(UserError, match="unknown model file 'bark'"):
        assets.asset("bark")


def test_parameter_counts_live_in_the_catalogue_alone():
    from tortoise_xpu.backends.policy import OFFICIAL_MODEL_BYTES
    from tortoise_xpu.models.registry import SPECS

    for file, spec in SPECS.items():
        assert spec.official_params == assets.ASSETS[file].parameters == assets.official_parameters(file)
    assert OFFICIAL_MODEL_BYTES["ar"] == 4 * assets.ASSETS["autoregressive.pth"].parameters == 1_686_107_144
    with pytest.raises(UserError, match="data file"):
        assets.official_parameters("tokenizer")
