"""The HTTP layer: OpenAI's speech API shape over the engine, plus voices, health, metrics and a page.

This module only translates HTTP to engine calls and back (request checks, error bodies, streaming
bodies); queueing, batching and back-off are the engine's.  Routes:

* ``POST /v1/audio/speech`` — OpenAI's request shape plus our extensions (docs/serving.md);
* ``GET /v1/audio/voices``, ``POST /v1/audio/voices`` (multipart), ``DELETE /v1/audio/voices/{name}``;
* ``GET /v1/models``, ``GET /health``, ``GET /metrics``, ``GET /`` (the web page).

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with the fitting status.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tortoise_xpu.audio.encode import CONTENT_TYPES, available_formats, encode, pcm16, wav_stream_header
from tortoise_xpu.errors import AudioError, OutOfMemory, TortoiseError, UserError
from tortoise_xpu.serve.engine import Engine
from tortoise_xpu.serve.jobs import EngineError, SpeechJob
from tortoise_xpu.serve.runner import SAMPLE_RATE, VoiceNotFound, check_voice_name

__all__ = ["create_app", "ServeConfig", "MODELS", "ApiError"]

#: Model names and what they run (docs/serving.md has the table).
MODELS = {
    "tts-1": {"quality": False, "preset": None,
              "description": "streaming fast path: one AR candidate, HiFi-GAN decoder as codes arrive"},
    "tts-1-hd": {"quality": True, "preset": "standard",
                 "description": "quality path: the 'standard' preset (CLVP-ranked candidates, diffusion, vocoder)"},
    "tortoise": {"quality": True, "preset": "fast",
                 "description": "quality path with the preset named in the request (default 'fast')"},
}
#: Body fields passed to the pipeline under the original's names.
KNOBS = ("temperature", "top_p", "top_k", "repetition_penalty", "typical_sampling", "typical_mass",
         "length_penalty", "max_mel_tokens", "cvvp_amount", "diffusion_iterations", "cond_free", "cond_free_k",
         "diffusion_temperature", "sampler", "num_autoregressive_samples")
STREAM_KNOBS = ("stream_chunk_size", "overlap_wav_len", "first_buffer")
OPENAI_FIELDS = ("model", "input", "voice", "response_format", "speed", "stream_format", "instructions")
EXTENSIONS = ("preset", "seed", "candidates", "deadline", "force_tokens")
MAX_SEED = 2 ** 63


@dataclass
class ServeConfig:
    """HTTP-side limits: ``api_key`` (None: open), ``max_chars`` (longer input → 413),
    ``max_upload_bytes`` (a voice upload's body), ``max_clip_seconds`` (each uploaded clip),
    ``max_clips`` (files per upload)."""

    api_key: str | None = None
    max_chars: int = 2000
    max_upload_bytes: int = 20 * 1024 * 1024
    max_clip_seconds: float = 60.0
    max_clips: int = 16


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _from_exception(exc: BaseException) -> ApiError:
    """The ApiError for an engine or pipeline exception."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, EngineError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
        return ApiError(exc.status, str(exc), exc.type, None, exc.code, headers)
    if isinstance(exc, OutOfMemory):
        return ApiError(503, " ".join(str(exc).split()), "server_error", code="out_of_memory",
                        headers={"Retry-After": "10"})
    if isinstance(exc, VoiceNotFound):
        return ApiError(404, str(exc), param="voice", code="voice_not_found")
    if isinstance(exc, UserError):
        return ApiError(400, " ".join(str(exc).split()), code="invalid_value")
    if isinstance(exc, TortoiseError):
        return ApiError(500, " ".join(str(exc).split()), "server_error", code="pipeline_error")
    return ApiError(500, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}", "server_error")


def create_app(engine: Engine, config: ServeConfig | None = None) -> Starlette:
    """The ASGI app over ``engine`` (which the caller starts; the app drains it on shutdown)."""
    cfg = config or ServeConfig()
    formats = available_formats()

    # ----------------------------------------------------------------------------- helpers
    def authorised(request: Request) -> bool:
        if not cfg.api_key:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), cfg.api_key.encode())

    def guarded(handler):
        async def wrapped(request: Request) -> Response:
            if not authorised(request):
                return ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                "invalid_request_error", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"}).response()
            try:
                return await handler(request)
            except ApiError as exc:
                return exc.response()
            except (TortoiseError, EngineError) as exc:
                return _from_exception(exc).response()
        return wrapped

    # ----------------------------------------------------------------------------- speech
    def parse_speech(body: Any) -> tuple[SpeechJob, str, str]:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        unknown = set(body) - set(OPENAI_FIELDS) - set(EXTENSIONS) - set(KNOBS) - set(STREAM_KNOBS)
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0],
                           code="unknown_parameter")
        model = body.get("model", "tortoise")
        if model not in MODELS:
            raise ApiError(404, f"unknown model {model!r}; choose one of: {', '.join(MODELS)}", param="model",
                           code="model_not_found")
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "'input' must be a non-empty string", param="input", code="invalid_value")
        if len(text) > cfg.max_chars:
            raise ApiError(413, f"'input' is {len(text)} characters; this server takes at most {cfg.max_chars}",
                           param="input", code="input_too_long")
        if body.get("instructions"):
            raise ApiError(400, "'instructions' is not supported: Tortoise takes its style from the voice",
                           param="instructions", code="unsupported_parameter")
        voice = body.get("voice", "random")
        if not isinstance(voice, str) or not voice:
            raise ApiError(400, "'voice' must be a voice name, 'random' or names joined by '&'", param="voice")
        if voice != "random":
            known = set(engine.runner.voice_names())
            for part in voice.split("&"):
                try:
                    check_voice_name(part)
                except UserError as exc:
                    raise ApiError(400, str(exc), param="voice", code="invalid_value") from None
                if part not in known:
                    raise ApiError(404, f"unknown voice {part!r}; GET /v1/audio/voices lists them", param="voice",
                                   code="voice_not_found")
        fmt = body.get("response_format", "mp3")
        if fmt not in CONTENT_TYPES:
            raise ApiError(400, f"unknown response_format {fmt!r}; choose one of: {', '.join(formats)}",
                           param="response_format", code="invalid_value")
        if fmt not in formats:
            raise ApiError(400, f"this server's libsndfile cannot encode {fmt}; choose one of: {', '.join(formats)}",
                           param="response_format", code="unsupported_format")
        stream_format = body.get("stream_format", "audio")
        if stream_format not in ("audio", "sse"):
            raise ApiError(400, "'stream_format' must be 'audio' or 'sse'", param="stream_format")
        speed = body.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
            raise ApiError(400, "'speed' must be a number from 0.25 to 4.0", param="speed", code="invalid_value")
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbelow(MAX_SEED)
        else:
            try:
                seed = engine.runner.check_seed(seed)
            except UserError as exc:
                raise ApiError(400, f"'seed': {exc}", param="seed", code="invalid_value") from None
        spec = MODELS[model]
        settings = {k: body[k] for k in KNOBS if k in body}
        candidates = body.get("candidates")
        if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, int)
                                       or not 1 <= candidates <= 512):
            raise ApiError(400, "'candidates' must be an integer from 1 to 512", param="candidates")
        preset = body.get("preset")
        if spec["quality"]:
            preset = preset or spec["preset"]
            presets = engine.runner.presets()
            if preset not in presets:
                raise ApiError(400, f"unknown preset {preset!r}; choose one of: {', '.join(presets)}",
                               param="preset", code="invalid_value")
            settings = engine.runner.preset_settings(preset, settings)
            if candidates is not None:
                settings["num_autoregressive_samples"] = candidates
            candidates = int(settings["num_autoregressive_samples"])
        else:
            if preset is not None:
                raise ApiError(400, "'preset' applies to tortoise and tts-1-hd; tts-1 has no candidates or "
                                    "diffusion to set", param="preset")
            if candidates not in (None, 1):
                raise ApiError(400, "tts-1 streams one candidate; use tortoise or tts-1-hd for more",
                               param="candidates")
            for k in ("num_autoregressive_samples", "diffusion_iterations", "cond_free", "cond_free_k",
                      "diffusion_temperature", "sampler", "cvvp_amount"):
                settings.pop(k, None)  # the streaming path has no ranking or diffusion: ignored, as tts_stream
            candidates = 1
        for k in ("typical_sampling", "cond_free"):
            if k in settings and not isinstance(settings[k], bool):
                raise ApiError(400, f"'{k}' must be true or false", param=k)
        for k in STREAM_KNOBS:
            if k in body and (isinstance(body[k], bool) or not isinstance(body[k], int) or body[k] < 0):
                raise ApiError(400, f"'{k}' must be a non-negative integer", param=k)
        deadline = body.get("deadline")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                                     or deadline <= 0):
            raise ApiError(400, "'deadline' must be a positive number of seconds", param="deadline")
        force = body.get("force_tokens")
        if force is not None and (isinstance(force, bool) or not isinstance(force, int) or not 1 <= force <= 600):
            raise ApiError(400, "'force_tokens' must be an integer from 1 to 600", param="force_tokens")
        try:  # the pipeline's own checks of the knobs, before anything is queued
            engine.runner.check_settings(settings, force)
        except UserError as exc:
            raise ApiError(400, " ".join(str(exc).split()), code="invalid_value") from None
        job = SpeechJob(text=text, voice=voice, quality=spec["quality"], settings=settings, seed=seed,
                        candidates=candidates, speed=float(speed),
                        stream_chunk_size=int(body.get("stream_chunk_size", 20)),
                        overlap_wav_len=int(body.get("overlap_wav_len", 1024)),
                        first_buffer=int(body.get("first_buffer", 20)),
                        deadline_s=float(deadline) if deadline is not None else None, force_tokens=force)
        return job, fmt, stream_format

    async def speech(request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise ApiError(400, "the request body is not valid JSON") from None
        try:
            job, fmt, stream_format = parse_speech(body)
        except ApiError as exc:
            engine.metrics.count_request(exc.status)
            raise
        try:
            ticket = engine.submit(job, asyncio.get_running_loop())
        except EngineError as exc:
            engine.metrics.count_request(exc.status)
            raise
        try:
            kind, payload = await ticket.next_event()
        except asyncio.CancelledError:
            ticket.cancel()
            raise
        if kind == "error":
            err = _from_exception(payload)
            engine.metrics.count_request(err.status)
            return err.response()
        headers = {"X-Tortoise-Seed": str(job.seed), "Cache-Control": "no-store"}
        body_iter = _audio_body(ticket, fmt, (kind, payload), stream_format)
        if stream_format == "sse":
            return StreamingResponse(body_iter, media_type="text/event-stream", headers=headers)
        return StreamingResponse(body_iter, media_type=CONTENT_TYPES[fmt], headers=headers)

    async def _audio_body(ticket, fmt: str, first: tuple[str, Any], stream_format: str) -> AsyncIterator[bytes]:
        """The response body: audio bytes as produced (wav/pcm) or at the end (compressed formats)."""
        import numpy as np

        incremental = fmt in ("wav", "pcm")
        held: list[Any] = []
        started = False
        event = first
        status = 200
        try:
            while True:
                kind, payload = event
                piece = b""
                if kind == "audio":
                    if incremental:
                        piece = (b"" if started or fmt == "pcm" else wav_stream_header(SAMPLE_RATE)) + pcm16(payload)
                        started = True
                    else:
                        held.append(payload)
                elif kind == "done":
                    if not incremental:
                        piece = encode(np.concatenate(held) if held else np.zeros(0, np.float32), SAMPLE_RATE, fmt)
                    elif not started and fmt == "wav":
                        piece = wav_stream_header(SAMPLE_RATE)
                else:  # an error after the headers went out: end the stream (sse: say why)
                    err = _from_exception(payload)
                    status = err.status
                    if stream_format == "sse":
                        yield _sse({"type": "error", "error": {"message": err.message, "type": err.type,
                                                               "param": err.param, "code": err.code}})
                    return
                if piece:
                    yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}) \
                        if stream_format == "sse" else piece
                if kind == "done":
                    if stream_format == "sse":
                        info = payload or {}
                        yield _sse({"type": "speech.audio.done",
                                    "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
                                    "audio_seconds": info.get("samples", 0) / SAMPLE_RATE})
                    return
                event = await ticket.next_event()
        except (asyncio.CancelledError, GeneratorExit):
            status = 499  # the client went away: the engine frees the request's rows at its next step
            ticket.cancel()
            raise
        finally:
            if not ticket.finished:
                ticket.cancel()
            engine.metrics.count_request(status)

    # ----------------------------------------------------------------------------- voices
    async def voices_list(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": engine.runner.list_voices(), "builtin": ["random"]})

    async def voices_create(request: Request) -> Response:
        from starlette.datastructures import UploadFile

        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > cfg.max_upload_bytes:
            raise ApiError(413, f"the upload is {int(length)} bytes; at most {cfg.max_upload_bytes} are taken",
                           code="upload_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_upload_bytes:
                raise ApiError(413, f"the upload is over {cfg.max_upload_bytes} bytes", code="upload_too_large")

        async def replay() -> dict:
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=cfg.max_clips, max_fields=8)
        except Exception as exc:  # a malformed multipart body
            raise ApiError(400, f"expected multipart/form-data with 'name' and 'files' ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:120]})") from None
        name = form.get("name")
        if not isinstance(name, str):
            raise ApiError(400, "a 'name' field is needed", param="name")
        try:
            check_voice_name(name)
        except UserError as exc:
            raise ApiError(400, str(exc), param="name") from None
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise ApiError(400, "no audio files: send one or more as 'files'", param="files")
        clips = [(f.filename or f"clip{i}", await f.read()) for i, f in enumerate(files)]
        try:
            info = await asyncio.to_thread(engine.runner.create_voice, name, clips, cfg.max_clip_seconds)
        except AudioError as exc:
            raise ApiError(400, " ".join(str(exc).split()), param="files", code="bad_audio") from None
        except UserError as exc:
            status = 409 if "already exists" in str(exc) else 400
            raise ApiError(status, str(exc), param="name", code="voice_exists" if status == 409 else None) from None
        return JSONResponse(info, status_code=201)

    async def voices_delete(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            engine.runner.delete_voice(name)
        except VoiceNotFound as exc:
            raise ApiError(404, str(exc), param="name", code="voice_not_found") from None
        except UserError as exc:
            raise ApiError(400, str(exc), param="name") from None
        return JSONResponse({"name": name, "deleted": True})

    # ----------------------------------------------------------------------------- the rest
    async def models(request: Request) -> Response:
        data = [{"id": k, "object": "model", "created": 0, "owned_by": "tortoise-xpu", "description": v["description"]}
                for k, v in MODELS.items()]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        if engine.ready:
            return JSONResponse({"status": "ok", "in_flight": engine.in_flight})
        if engine.load_error is not None:
            return JSONResponse({"status": "failed", "error": str(engine.load_error)[:300]}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    async def page(request: Request) -> Response:
        html = resources.files("tortoise_xpu.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html)

    async def on_shutdown() -> None:
        # Uvicorn has stopped accepting connections (SIGTERM) and waits for open responses; the engine
        # refuses new work and finishes what it holds.
        await asyncio.to_thread(engine.drain, 600.0)
        engine.close()

    routes = [
        Route("/", page, methods=["GET"]),  # the page holds no data and runs nothing: no key needed
        Route("/health", health, methods=["GET"]),
        Route("/metrics", guarded(metrics), methods=["GET"]),
        Route("/v1/models", guarded(models), methods=["GET"]),
        Route("/v1/audio/speech", guarded(speech), methods=["POST"]),
        Route("/v1/audio/voices", guarded(voices_list), methods=["GET"]),
        Route("/v1/audio/voices", guarded(voices_create), methods=["POST"]),
        Route("/v1/audio/voices/{name}", guarded(voices_delete), methods=["DELETE"]),
    ]

    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await on_shutdown()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        404: lambda req, exc: ApiError(404, f"no route {req.url.path}", code="not_found").response(),
        405: lambda req, exc: ApiError(405, f"{req.method} is not allowed on {req.url.path}",
                                       code="method_not_allowed").response(),
    })
    app.state.engine = engine
    app.state.started = time.time()
    return app


def _sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()
