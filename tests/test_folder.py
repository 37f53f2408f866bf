"""The models folder: where it is, where files lie in it, its manifest."""

from __future__ import annotations

import os

import pytest

from tortoise_xpu import assets
from tortoise_xpu.assets import fetch
from tortoise_xpu.errors import ModelFileError

@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.setattr(fetch, "_RETRY_DELAY", 0.0)
    for var in (assets.ENV_MODELS, assets.ENV_HF_ENDPOINT, assets.ENV_HF_REVISION, assets.ENV_DATA_ENDPOINT):
        monkeypatch.delenv(var, raising=False)


def test_models_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert assets.models_dir() == tmp_path / "home" / ".cache" / "tortoise-xpu" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert assets.models_dir() == tmp_path / "home" / ".cache" / "tortoise-xpu" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.models_dir() == tmp_path / "xdg" / "tortoise-xpu" / "models"
    monkeypatch.setenv(assets.ENV_MODELS, str(tmp_path / "env"))
    assert assets.models_dir() == tmp_path / "env"
    assert assets.models_dir(str(tmp_path / "cli")) == tmp_path / "cli"
    assert assets.models_dir("~/x") == tmp_path / "home" / "x"

def test_missing_file_names_the_download_command(tmp_path):
    with pytest.raises(ModelFileError) as err:
        assets.require("clvp", tmp_path)
    msg = str(err.value)
    assert f"tortoise-xpu models download clvp2.pth --models-dir {tmp_path}" in msg
    assert str(tmp_path) in msg and "clvp2.pth" in msg

def test_find_prefers_safetensors_and_reads_the_original_hf_cache(tmp_path):
    assert assets.find("vocoder.pth", tmp_path) is None
    snap = tmp_path / "models--Manmay--tortoise-tts" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "vocoder.pth").write_bytes(b"x")
    (tmp_path / "models--Manmay--tortoise-tts" / "refs").mkdir()
    (tmp_path / "models--Manmay--tortoise-tts" / "refs" / "main").write_text("a" * 40)
    assert assets.find("vocoder.pth", tmp_path) == snap / "vocoder.pth"
    (tmp_path / "vocoder.pth").write_bytes(b"y")
    assert assets.find("vocoder.pth", tmp_path) == tmp_path / "vocoder.pth"
    (tmp_path / "vocoder.safetensors").write_bytes(b"z")
    assert assets.find("vocoder", tmp_path) == tmp_path / "vocoder.safetensors"
    later = (tmp_path / "vocoder.safetensors").stat().st_mtime + 10
    os.utime(tmp_path / "vocoder.pth", (later, later))  # fetched again after converting
    assert assets.find("vocoder", tmp_path) == tmp_path / "vocoder.pth"
    assert assets.find("tokenizer.json", tmp_path) is None


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------

def test_manifest_survives_garbage(tmp_path):
    (tmp_path / assets.MANIFEST_NAME).write_text("not json")
    assert assets.read_manifest(tmp_path) == {}
    assets.record(tmp_path, "vocoder.pth", sha256="0" * 64, size=1)
    assert assets.read_manifest(tmp_path)["vocoder.pth"]["size"] == 1
    assert os.listdir(tmp_path) == [assets.MANIFEST_NAME]


def test_a_models_folder_that_is_a_file_is_refused(monkeypatch, tmp_path):
    not_a_folder = tmp_path / "models.txt"
    not_a_folder.write_text("x")
    with pytest.raises(ModelFileError, match=r"models\.txt is a file; point --models-dir at a folder"):
        assets.models_dir(not_a_folder)
    with pytest.raises(ModelFileError, match=r"lies under .*models\.txt, which is a file"):
        assets.find("clvp", not_a_folder / "sub")
    monkeypatch.setenv(assets.ENV_MODELS, str(not_a_folder))
    with pytest.raises(ModelFileError, match=r"point \$TORTOISE_XPU_MODELS at a folder"):
        assets.models_dir()
    assert assets.models_dir(tmp_path / "new") == tmp_path / "new"  # a folder yet to be made is fine
