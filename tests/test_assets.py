"""The asset registry, the models folder and downloads (against a local HTTP server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tortoise_xpu import assets
from tortoise_xpu.errors import ModelFileError, TortoiseError, UserError



# --------------------------------------------------------------------------------------------
# A tiny file server with Range support, redirects, truncation and a request log
# --------------------------------------------------------------------------------------------

@dataclass
class Route:
    data: bytes = b""
    headers: dict = field(default_factory=dict)
    redirect: str | None = None       # answer 302 to this path
    status: int = 200
    cut_after: int | None = None      # close the connection after this many body bytes ...
    cuts: int = 0                     # ... this many times
    ignore_range: bool = False


class FileServer:
    """``http.server`` in a thread serving ``routes``; ``log`` holds (method, path, Range header)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.log: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                rng = self.headers.get("Range")
                server.log.append((self.command, self.path, rng))
                route = server.routes.get(self.path)
                if route is None:
                    return self._plain(404, b"not found")
                if route.redirect:
                    self.send_response(302)
                    self.send_header("Location", route.redirect)
                    for k, v in route.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.status != 200:
                    return self._plain(route.status, b"error")
                data, start, status = route.data, 0, 200
                if rng and not route.ignore_range:
                    spec = rng.split("=", 1)[1]
                    first, _, last = spec.partition("-")
                    start = int(first)
                    end = int(last) if last else len(data) - 1
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                    data = data[start:end + 1]
                self.send_response(status)
                for k, v in route.headers.items():
                    self.send_header(k, v)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{len(route.data)}")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not body:
                    return
                if route.cut_after is not None and route.cuts > 0:
                    route.cuts -= 1
                    self.wfile.write(data[:route.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(data)

            def _plain(self, code: int, text: bytes):
                self.send_response(code)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def hf_path(self, name: str, revision: str = assets.HF_REVISION) -> str:
        return f"/{assets.HF_REPO}/resolve/{revision}/{name}"

    def data_path(self, name: str) -> str:
        a = assets.ASSETS[name]
        return f"/{a.repo}/{a.revision}/{a.path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.setattr(assets, "_RETRY_DELAY", 0.0)
    for var in (assets.ENV_MODELS, assets.ENV_HF_ENDPOINT, assets.ENV_HF_REVISION, assets.ENV_DATA_ENDPOINT):
        monkeypatch.delenv(var, raising=False)


def _blob(n: int, seed: int = 0) -> bytes:
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


# --------------------------------------------------------------------------------------------
# Registry and folder
# --------------------------------------------------------------------------------------------

def test_registry_lists_every_file():
    expected = {"autoregressive.pth", "diffusion_decoder.pth", "clvp2.pth", "cvvp.pth", "vocoder.pth",
                "rlg_auto.pth", "rlg_diffuser.pth", "classifier.pth", "hifidecoder.pth", "tokenizer.json",
                "mel_norms.pth"}
    assert set(assets.ASSETS) == expected
    for a in assets.ASSETS.values():
        if a.model:
            assert (a.source, a.repo) == ("hf", "Manmay/tortoise-tts")
            assert a.url() == f"https://huggingface.co/Manmay/tortoise-tts/resolve/{assets.HF_REVISION}/{a.name}"
        else:
            assert a.source == "github" and len(a.revision) == 40 and a.sha256 and a.size
            assert a.url() == f"https://raw.githubusercontent.com/neonbjb/tortoise-tts/{a.revision}/tortoise/data/{a.name}"
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

def test_download_writes_the_file_and_records_it(server, tmp_path, capsys):
    data = _blob(300_000)
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
    data = _blob(1_000_000, seed=1)
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
    data = _blob(700_000, seed=2)
    sha = hashlib.sha256(data).hexdigest()
    server.routes[server.hf_path("cvvp.pth")] = Route(data, cut_after=123_456, cuts=2,
                                                      headers={"X-Linked-Etag": f'"{sha}"'})
    path = assets.download("cvvp.pth", tmp_path, progress=False, endpoint=server.url, retries=3)
    assert path.read_bytes() == data
    assert [r for _, _, r in server.log] == [None, "bytes=123456-", "bytes=246912-"]
    assert assets.read_manifest(tmp_path)["cvvp.pth"]["verified_against"] == "server"


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    data = _blob(200_000, seed=3)
    server.routes[server.hf_path("vocoder.pth")] = Route(data, ignore_range=True)
    (tmp_path / "vocoder.pth.part").write_bytes(b"garbage that is not the start of the file")
    path = assets.download("vocoder.pth", tmp_path, progress=False, endpoint=server.url)
    assert path.read_bytes() == data


def test_complete_part_file_is_finished_without_refetching(server, tmp_path):
    data = _blob(50_000, seed=4)
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
    data = _blob(80_000, seed=5)
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
    data = _blob(300_000, seed=8)
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
    data = _blob(1000, seed=6)
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
    good = _blob(5000, seed=7)
    server.routes[server.hf_path("rlg_auto.pth")] = Route(good, headers={"X-Linked-Etag": hashlib.sha256(good).hexdigest()})
    assets.download("rlg_auto.pth", tmp_path, progress=False, endpoint=server.url)
    (tmp_path / "rlg_auto.pth").write_bytes(b"bitrot")
    assets.download("rlg_auto.pth", tmp_path, progress=False, endpoint=server.url)
    assert (tmp_path / "rlg_auto.pth").read_bytes() == good


def test_verify_reports_missing_and_checksum_failures(tmp_path):
    rows = assets.verify(tmp_path, ["tokenizer.json"])
    assert rows[0].status == "missing" and "tortoise-xpu models download tokenizer.json" in rows[0].reason
    (tmp_path / "tokenizer.json").write_text("{}")
    row = assets.verify(tmp_path, ["tokenizer.json"])[0]
    assert (row.status, row.checksum) == ("failed", "mismatch") and "--force" in row.reason
    assert json.loads(json.dumps(row.as_dict()))["file"] == "tokenizer.json"


def test_manifest_survives_garbage(tmp_path):
    (tmp_path / assets.MANIFEST_NAME).write_text("not json")
    assert assets.read_manifest(tmp_path) == {}
    assets.record(tmp_path, "vocoder.pth", sha256="0" * 64, size=1)
    assert assets.read_manifest(tmp_path)["vocoder.pth"]["size"] == 1
    assert os.listdir(tmp_path) == [assets.MANIFEST_NAME]
