"""A tiny HTTP file server on 127.0.0.1 for download tests: Range support, redirects, truncation, a request log."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tortoise_xpu import assets



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


def blob(n: int, seed: int = 0) -> bytes:
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])
