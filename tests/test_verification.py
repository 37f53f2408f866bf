"""``models verify``: checksums and what can be checked of each file's content."""

from __future__ import annotations

import json
import re

import torch

import pytest

from tortoise_xpu import assets
from tortoise_xpu.assets import fetch

@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.setattr(fetch, "_RETRY_DELAY", 0.0)
    for var in (assets.ENV_MODELS, assets.ENV_HF_ENDPOINT, assets.ENV_HF_REVISION, assets.ENV_DATA_ENDPOINT):
        monkeypatch.delenv(var, raising=False)


def test_verify_reports_missing_and_checksum_failures(tmp_path):
    rows = assets.verify(tmp_path, ["tokenizer.json"])
    assert rows[0].status == "missing" and "tortoise-xpu models download tokenizer.json" in rows[0].reason
    (tmp_path / "tokenizer.json").write_text("{}")
    row = assets.verify(tmp_path, ["tokenizer.json"])[0]
    assert (row.status, row.checksum) == ("failed", "mismatch") and "--force" in row.reason
    assert json.loads(json.dumps(row.as_dict()))["file"] == "tokenizer.json"


def _row(folder, name):
    return assets.verify(folder, [name], checksums=False)[0]


@pytest.mark.parametrize("norms, problem", [
    (torch.linspace(-9.0, -2.0, 79), r"shape \(79,\); expected 80 floats"),
    (torch.linspace(-9.0, -2.0, 160).reshape(2, 80), r"shape \(2, 80\)"),
    (torch.arange(80), r"int64 tensor"),
    (torch.full((80,), float("nan")), "non-finite or zero|NaN or infinite"),
    ({"norms": torch.ones(80)}, "holds dict, not a tensor"),
])
def test_mel_norms_content_is_checked(tmp_path, norms, problem):
    torch.save(norms, tmp_path / "mel_norms.pth")
    row = _row(tmp_path, "mel_norms.pth")
    assert row.status == "failed" and re.search(problem, row.reason), row.reason
    torch.save(torch.linspace(-9.0, -2.0, 80), tmp_path / "mel_norms.pth")
    assert _row(tmp_path, "mel_norms.pth").status == "ok"


def test_tokenizer_content_is_checked_even_without_loading_models(tmp_path):
    from tortoise_xpu.models.loading import write_standin_data

    write_standin_data(tmp_path)
    assert assets.verify(tmp_path, ["tokenizer.json"], load=False)[0].status == "ok"
    for broken, problem in (('{"model": ', "not valid JSON"), ("[1, 2]", "no 'model' section"),
                            ('{"model": {"type": "BPE", "vocab": 3}}', "does not load as a tokenizer")):
        (tmp_path / "tokenizer.json").write_text(broken)
        row = assets.verify(tmp_path, ["tokenizer.json"], load=False)[0]
        assert row.status == "failed" and problem in row.reason, row.reason
