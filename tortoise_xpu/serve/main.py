"""Building and running the server: engine + app + uvicorn (the CLI and the tests call this)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["build", "serve"]


def build(models_dir: str | Path | None, device: str = "auto", voices_dir: str | Path | None = None,
          api_key: str | None = None, max_queue: int = 32, max_batch: int | None = None, max_chars: int = 2000,
          deadline_s: float | None = 600.0, background_load: bool = True, **serve_config: Any):
    """The engine (loading its models, in the background by default) and the ASGI app over it."""
    from tortoise_xpu.serve.app import ServeConfig, create_app
    from tortoise_xpu.serve.engine import Engine, EngineConfig
    from tortoise_xpu.serve.runner import PipelineRunner

    extra = [d for d in os.environ.get("TORTOISE_XPU_VOICES", "").split(os.pathsep) if d]
    runner = PipelineRunner(models_dir, device, voices_dir=voices_dir, extra_voice_dirs=extra)
    runner.voices_dir.mkdir(parents=True, exist_ok=True)
    engine = Engine(runner, EngineConfig(max_queue=max_queue, max_batch=max_batch, deadline_s=deadline_s))
    engine.start(background=background_load)
    app = create_app(engine, ServeConfig(api_key=api_key, max_chars=max_chars, **serve_config))
    return engine, app


def serve(host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> int:
    """Run the server until SIGINT/SIGTERM (then drain in-flight requests and exit 0)."""
    import signal
    import sys

    import uvicorn

    _, app = build(**kwargs)
    # Uvicorn turns SIGTERM into a graceful shutdown: stop listening, wait for open responses, then the
    # app's lifespan shutdown drains the engine.  Afterwards it re-raises the signal for the handler that
    # was there before it: this one, so that a drained shutdown exits with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=None)
    return 0
