"""``tortoise-xpu models list | download | verify | convert | random-weights``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.fileserver import FileServer, Route
from tortoise_xpu import assets
from tortoise_xpu.assets import fetch
from tortoise_xpu.cli import main
from tortoise_xpu.models import registry

SMALL = ["rlg_auto.pth", "rlg_diffuser.pth", "vocoder.pth", "classifier.pth"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in (assets.ENV_MODELS, assets.ENV_HF_ENDPOINT, assets.ENV_HF_REVISION, assets.ENV_DATA_ENDPOINT):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # never the real user cache
    monkeypatch.setattr(fetch, "_RETRY_DELAY", 0.0)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """``models random-weights --tiny`` for a few small networks, run once for the module."""
    files = list(SMALL)
    out = tmp_path_factory.mktemp("weights")
    assert main(["models", "random-weights", "--out", str(out), "--tiny", "--seed", "5", "--only", *files]) == 0
    return out, files


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_models_without_action_prints_help(capsys):
    assert main(["models"]) == 2
    assert "random-weights" in capsys.readouterr().out


def test_list_json_shows_every_file_and_presence(tmp_path, capsys):
    (tmp_path / "vocoder.pth").write_bytes(b"12345")
    assert main(["models", "list", "--json", "--models-dir", str(tmp_path)]) == 0
    out = _json_out(capsys)
    assert out["models_dir"] == str(tmp_path)
    rows = {r["file"]: r for r in out["files"]}
    assert set(rows) == set(assets.ASSETS)
    assert rows["vocoder.pth"]["present"] and rows["vocoder.pth"]["bytes_on_disk"] == 5
    assert not rows["clvp2.pth"]["present"] and rows["clvp2.pth"]["group"] == "core"
    assert rows["tokenizer.json"]["sha256"] == assets.ASSETS["tokenizer.json"].sha256


def test_list_table_uses_the_environment_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(assets.ENV_MODELS, str(tmp_path / "env-models"))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "env-models" in out and "autoregressive.pth" in out and "missing core files" in out


def test_random_weights_then_verify_ok(tiny_weights, capsys):
    out, files = tiny_weights
    assert main(["models", "verify", "--json", "--models-dir", str(out)]) == 0
    result = _json_out(capsys)
    rows = {r["file"]: r for r in result["files"]}
    assert result["ok"]
    for f in files:
        assert rows[f]["status"] == "ok" and rows[f]["checksum"] == "match", rows[f]
        assert rows[f]["parameters"] > 0 and rows[f]["model"] == registry.SPECS[f].class_name
    assert rows["autoregressive.pth"]["status"] == "missing"


def test_verify_fails_on_a_corrupt_or_wrong_file(tiny_weights, tmp_path, capsys):
    src, files = tiny_weights
    for f in files:
        (tmp_path / f).write_bytes((src / f).read_bytes())
    (tmp_path / assets.MANIFEST_NAME).write_bytes((src / assets.MANIFEST_NAME).read_bytes())
    victim = files[0]
    data = bytearray((tmp_path / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / victim).write_bytes(bytes(data))
    assert main(["models", "verify", "--models-dir", str(tmp_path)]) == 1
    table = capsys.readouterr().out
    assert "failed" in table and victim in table

    assert main(["models", "verify", "--json", "--models-dir", str(tmp_path), victim]) == 1
    row = _json_out(capsys)["files"][0]
    assert (row["status"], row["checksum"]) == ("failed", "mismatch") and "sha256" in row["reason"]

    # A file that passes no checksum (none known) but is truncated fails the strict load.
    (tmp_path / assets.MANIFEST_NAME).unlink()
    good = (src / victim).read_bytes()
    (tmp_path / victim).write_bytes(good[: len(good) // 3])
    assert main(["models", "verify", "--json", "--models-dir", str(tmp_path), victim]) == 1
    row = _json_out(capsys)["files"][0]
    assert row["status"] == "failed" and row["checksum"] == "unknown" and "truncated" in row["reason"]


def test_verify_checksums_only(tiny_weights, capsys):
    out, files = tiny_weights
    assert main(["models", "verify", "--no-load", "--json", "--models-dir", str(out), files[0]]) == 0
    row = _json_out(capsys)["files"][0]
    assert row["status"] == "ok" and row["parameters"] is None


def test_verify_of_an_empty_folder_succeeds_with_missing_rows(tmp_path, capsys):
    assert main(["models", "verify", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 of 0 present files ok" in out and "tortoise-xpu models download" in out


def test_convert_writes_safetensors_that_verify_uses(tiny_weights, tmp_path, capsys):
    src, files = tiny_weights
    f = files[-1]
    (tmp_path / f).write_bytes((src / f).read_bytes())
    (tmp_path / assets.MANIFEST_NAME).write_bytes((src / assets.MANIFEST_NAME).read_bytes())
    assert main(["models", "convert", "--models-dir", str(tmp_path), "--dtype", "float16"]) == 0
    st = tmp_path / (Path(f).stem + ".safetensors")
    assert st.is_file() and str(st) in capsys.readouterr().out
    assert main(["models", "verify", "--json", "--models-dir", str(tmp_path), f]) == 0
    row = _json_out(capsys)["files"][0]
    assert row["path"] == str(st) and row["status"] == "ok"
    assert main(["models", "convert", "--models-dir", str(tmp_path), "clvp2"]) == 1  # not present


def test_download_via_cli_from_a_local_server(tmp_path, capsys):
    server = FileServer()
    try:
        data = b"\x01" * 70_000
        server.routes[server.hf_path("rlg_auto.pth")] = Route(
            data, headers={"X-Linked-Etag": hashlib.sha256(data).hexdigest()})
        code = main(["models", "download", "rlg_auto", "--models-dir", str(tmp_path), "--no-progress",
                     "--endpoint", server.url])
        assert code == 0 and (tmp_path / "rlg_auto.pth").read_bytes() == data
        assert str(tmp_path / "rlg_auto.pth") in capsys.readouterr().out
        # Unknown on the server: the command fails, names the file, leaves nothing behind.
        code = main(["models", "download", "cvvp", "--models-dir", str(tmp_path), "--no-progress",
                     "--endpoint", server.url])
        assert code != 0
        err = capsys.readouterr().err
        assert "cvvp.pth" in err and "404" in err
        assert not list(tmp_path.glob("cvvp*"))
    finally:
        server.close()


def test_random_weights_full_size_round_trip(tmp_path, capsys):
    """Official size through the CLI for the smallest file; verify loads it strictly."""
    assert main(["models", "random-weights", "--out", str(tmp_path), "--only", "rlg_auto", "--init", "torch"]) == 0
    assert "6,297,600 params" in capsys.readouterr().out
    raw = torch.load(tmp_path / "rlg_auto.pth", weights_only=True)
    assert sum(v.numel() for v in raw.values()) == 6_297_600
    assert main(["models", "verify", "--json", "--models-dir", str(tmp_path), "rlg_auto"]) == 0
    assert _json_out(capsys)["files"][0]["parameters"] == 6_297_600
