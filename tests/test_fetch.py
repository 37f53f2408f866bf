"""Downloads, against a local HTTP server on 127.0.0.1 (tests/fileserver.py)."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from tests.fileserver import FileServer, Route, blob
from tortoise_xpu import assets
from tortoise_xpu.assets import fetch
from tortoise_xpu.errors import ModelFileError, TortoiseError

@pytest.fixture
def server():
    """A running :class:`FileServer` on 127.0.0.1, closed after the test."""
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.setattr(fetch, "_RETRY_DELAY", 0.0)
    for var in (assets.ENV_MODELS, assets.ENV_HF_ENDPOINT, assets.ENV_HF_REVISION, assets.ENV_DATA_ENDPOINT):
        monkeypatch.delenv(var, raising=False)


def test_download_writes_the_file_and_records_it(server, tmp_path, capsys):
    data = blob(300_000)
    server.routes[server.hf_path("rlg_auto.pth")] = Route(data, headers={"X-Repo-Commit": "c" * 40})
    path = assets.download("rlg_auto", tmp_path, progress=True, endpoint=server.url)
    assert path == tmp_path / "rlg_auto.pth" and path.read_bytes() == data
    assert not (tmp_path / "rlg_auto.pth.part").exists()
    entry = assets.read_manifest(tmp_path)["rlg_auto.pth"]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    assert entry["commit"] == "c" * 40 and entry["verified_against"] == "none"
    assert "rlg_auto.pth" in capsys.readouterr().err  # the progress bar's label
    # Present and recorded: a second call does not touch the network.
    n = len(server.log)
    assert assets.download("rlg_auto.pth", tmp_path, progress=False, endpoint=server.url) == path
    assert len(server.log) == n
    # The recorded hash now guards the file.
    assert assets.expected_checksum("rlg_auto.pth", tmp_path) == (entry["sha256"], "manifest")

def test_download_resumes_a_truncated_transfer(server, tmp_path):
    data = blob(1_000_000, seed=1)
    server.routes[server.hf_path("classifier.pth")] = Route(data, cut_after=400_000, cuts=1)
    with pytest.raises(TortoiseError, match="run the same command again to resume"):
        assets.download("classifier.pth", tmp_path, progress=False, endpoint=server.url, retries=0)
    part = tmp_path / "classifier.pth.part"
    assert part.stat().st_size == 400_000 and part.read_bytes() == data[:400_000]
    assert not (tmp_path / "classifier.pth").exists()

    path = assets.download("classifier.pth", tmp_path, progress=False, endpoint=server.url)
    assert path.read_bytes() == data and not part.exists()
    assert server.log[-1][2] == "bytes=400000-"  # the second run asked only for the rest

def test_download_retries_and_resumes_within_one_call(server, tmp_path):
    data = blob(700_000, seed=2)
    sha = hashlib.sha256(data).hexdigest()
    server.routes[server.hf_path("cvvp.pth")] = Route(data, cut_after=123_456, cuts=2,
                                                      headers={"X-Linked-Etag": f'"{sha}"'})
    path = assets.download("cvvp.pth", tmp_path, progress=False, endpoint=server.url, retries=3)
    assert path.read_bytes() == data
    assert [r for _, _, r in server.log] == [None, "bytes=123456-", "bytes=246912-"]
    assert assets.read_manifest(tmp_path)["cvvp.pth"]["verified_against"] == "server"

def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    data = blob(200_000, seed=3)
    server.routes[server.hf_path("vocoder.pth")] = Route(data, ignore_range=True)
    (tmp_path / "vocoder.pth.part").write_bytes(b"garbage that is not the start of the file")
    path = assets.download("vocoder.pth", tmp_path, progress=False, endpoint=server.url)
    assert path.read_bytes() == data

def test_complete_part_file_is_finished_without_refetching(server, tmp_path):
    data = blob(50_000, seed=4)
    server.routes[server.hf_path("vocoder.pth")] = Route(data)
    (tmp_path / "vocoder.pth.part").write_bytes(data)
    assert assets.download("vocoder.pth", tmp_path, progress=False, endpoint=server.url).read_bytes() == data
    assert all(r is None for _, _, r in server.log[1:])  # after the 416, only the size was asked
    # A .part longer than the file cannot be a prefix of it: fetched from the start.
    (tmp_path / "vocoder.pth").unlink()
    (tmp_path / "vocoder.pth.part").write_bytes(data + b"tail")
    assert assets.download("vocoder.pth", tmp_path, progress=False, endpoint=server.url).read_bytes() == data

def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    # tokenizer.json has a known sha256 in the registry; serve something else under its name.
    server.routes[server.data_path("tokenizer.json")] = Route(b"{}" + b" " * 4407)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        assets.download("tokenizer.json", tmp_path, progress=False, endpoint=server.url)
    assert not (tmp_path / "tokenizer.json").exists()
    assert not (tmp_path / "tokenizer.json.part").exists()

def test_server_announced_checksum_is_enforced_through_a_redirect(server, tmp_path):
    data = blob(80_000, seed=5)
    wrong = hashlib.sha256(b"something else").hexdigest()
    server.routes[server.hf_path("rlg_diffuser.pth")] = Route(
        redirect="/cdn/blob", headers={"X-Linked-Etag": f'"{wrong}"', "X-Linked-Size": str(len(data))})
    server.routes["/cdn/blob"] = Route(data)
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        assets.download("rlg_diffuser.pth", tmp_path, progress=False, endpoint=server.url)
    assert list(tmp_path.glob("rlg_diffuser*")) == []

    right = hashlib.sha256(data).hexdigest()
    server.routes[server.hf_path("rlg_diffuser.pth")].headers["X-Linked-Etag"] = f'"{right}"'
    path = assets.download("rlg_diffuser.pth", tmp_path, progress=False, endpoint=server.url)
    assert path.read_bytes() == data
    assert ("GET", "/cdn/blob", None) in server.log

def test_resume_through_a_redirect(server, tmp_path):
    data = blob(300_000, seed=8)
    server.routes[server.hf_path("classifier.pth")] = Route(
        redirect="/cdn/c", headers={"X-Linked-Etag": hashlib.sha256(data).hexdigest(), "X-Repo-Commit": "d" * 40})
    server.routes["/cdn/c"] = Route(data, cut_after=100_000, cuts=1, headers={"ETag": '"' + "0" * 64 + '"'})
    path = assets.download("classifier.pth", tmp_path, progress=False, endpoint=server.url)
    assert path.read_bytes() == data  # the CDN's unrelated 64-hex ETag is not taken for a sha256
    assert [(p, r) for _, p, r in server.log if p == "/cdn/c"] == [("/cdn/c", None), ("/cdn/c", "bytes=100000-")]
    assert assets.read_manifest(tmp_path)["classifier.pth"]["commit"] == "d" * 40

def test_size_mismatch_is_an_error(server, tmp_path, monkeypatch):
    monkeypatch.setitem(assets.ASSETS, "rlg_auto.pth", replace(assets.ASSETS["rlg_auto.pth"], size=10))
    server.routes[server.hf_path("rlg_auto.pth")] = Route(b"12345")
    with pytest.raises(ModelFileError, match="expected 10"):
        assets.download("rlg_auto.pth", tmp_path, progress=False, endpoint=server.url)
    assert list(tmp_path.glob("rlg_auto*")) == []

def test_not_found_is_a_clear_error(server, tmp_path):
    with pytest.raises(ModelFileError, match="404"):
        assets.download("hifidecoder.pth", tmp_path, progress=False, endpoint=server.url)

def test_endpoint_and_revision_from_the_environment(server, tmp_path, monkeypatch):
    data = blob(1000, seed=6)
    server.routes[server.hf_path("rlg_auto.pth", revision="abc123")] = Route(data)
    monkeypatch.setenv(assets.ENV_HF_ENDPOINT, server.url)
    monkeypatch.setenv(assets.ENV_HF_REVISION, "abc123")
    assert assets.download("rlg_auto.pth", tmp_path, progress=False).read_bytes() == data

def test_data_files_download_and_verify(official_data, server, tmp_path, monkeypatch):
    for name in ("tokenizer.json", "mel_norms.pth"):
        server.routes[server.data_path(name)] = Route((official_data / name).read_bytes())
    monkeypatch.setenv(assets.ENV_DATA_ENDPOINT, server.url)
    for name in ("tokenizer", "mel_norms"):
        assets.download(name, tmp_path, progress=False)
    rows = {r.file: r for r in assets.verify(tmp_path, ["tokenizer.json", "mel_norms.pth"])}
    assert [(r.status, r.checksum) for r in rows.values()] == [("ok", "match"), ("ok", "match")]

def test_a_file_failing_its_known_checksum_is_fetched_again(server, tmp_path):
    good = blob(5000, seed=7)
    server.routes[server.hf_path("rlg_auto.pth")] = Route(good, headers={"X-Linked-Etag": hashlib.sha256(good).hexdigest()})
    assets.download("rlg_auto.pth", tmp_path, progress=False, endpoint=server.url)
    (tmp_path / "rlg_auto.pth").write_bytes(b"bitrot")
    assets.download("rlg_auto.pth", tmp_path, progress=False, endpoint=server.url)
    assert (tmp_path / "rlg_auto.pth").read_bytes() == good


def test_offline_first_run_names_every_missing_file_and_no_false_resume_hint(server, tmp_path, monkeypatch):
    monkeypatch.setenv(assets.ENV_HF_ENDPOINT, server.url)
    server.close()  # nothing listens there any more: what an offline machine sees
    (tmp_path / "autoregressive.pth").write_bytes(b"present")
    with pytest.raises(ModelFileError) as err:
        fetch.ensure("clvp", tmp_path, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "clvp2.pth is not in" in msg and "resume" not in msg
    missing = msg.split("Missing there: ")[1].split(". Offline?")[0].split(", ")
    assert missing == [n for n in assets.resolve_names(None, core_only=True) if n != "autoregressive.pth"]
    assert not list(tmp_path.glob("*.part"))


def test_a_transfer_that_broke_off_keeps_its_part_and_says_resume(server, tmp_path):
    data = blob(4000, seed=9)
    server.routes[server.hf_path("rlg_auto.pth")] = Route(data, cut_after=1000, cuts=10)
    with pytest.raises(TortoiseError, match="the partial file is kept: run the same command again to resume"):
        assets.download("rlg_auto.pth", tmp_path, progress=False, endpoint=server.url, retries=0)
    assert (tmp_path / "rlg_auto.pth.part").stat().st_size == 1000
