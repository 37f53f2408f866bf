"""A live server on 127.0.0.1 for the serve tests: uvicorn in a thread, on a free port the test picks."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A running server: ``url``, ``engine``, ``app``; :meth:`stop` ends it (draining first)."""

    def __init__(self, engine: Any, app: Any, port: int):
        import uvicorn

        self.engine, self.app, self.port = engine, app, port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-uvicorn", daemon=True)

    def start(self, timeout: float = 60.0) -> "LiveServer":
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        if not self.engine.wait_ready(timeout):
            raise RuntimeError(f"the engine did not load its models: {self.engine.load_error}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@contextmanager
def live_server(models_dir, voices_dir, **kwargs: Any) -> Iterator[LiveServer]:
    """Build engine + app on the tiny models and serve them until the block ends."""
    from tortoise_xpu.serve.main import build

    engine, app = build(models_dir, "cpu", voices_dir=voices_dir, **kwargs)
    srv = LiveServer(engine, app, free_port()).start()
    try:
        yield srv
    finally:
        srv.stop()
