"""The speech server over HTTP, on a live uvicorn on 127.0.0.1 (a free port), tiny models on the CPU.

The official ``openai`` client for every response format and both stream formats; voices over
HTTP; auth; the errors in OpenAI's shape; a bounded load test (48 requests at concurrency 8, each
equal to its serial run); a client that goes away mid-stream frees its slot; a full queue answers
429 with Retry-After; SIGTERM drains in-flight requests and exits (a subprocess server).
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import httpx
import openai
import soundfile as sf

from tests.serve_live import free_port, live_server

KEY = "test-key-123"
SMALL = {"seed": 11, "max_mel_tokens": 24, "stream_chunk_size": 8, "first_buffer": 8}
QUALITY = {"seed": 11, "max_mel_tokens": 24, "candidates": 2, "diffusion_iterations": 3}


def wav_clip(seconds=2.0, rate=22050, freq=180.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def decode(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767
    return sf.read(io.BytesIO(data), dtype="float32")[0]


def sse_audio(body: bytes) -> tuple[bytes, list[str]]:
    """The audio bytes of an SSE body (deltas joined) and the event types in order."""
    audio, types = b"", []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: ")
        event = json.loads(block[len("data: "):])
        types.append(event["type"])
        if event["type"] == "speech.audio.delta":
            audio += base64.b64decode(event["audio"])
    return audio, types


@pytest.fixture(scope="module")
def server(tiny_models_dir, tmp_path_factory):
    with live_server(tiny_models_dir, tmp_path_factory.mktemp("voices"), api_key=KEY, max_batch=8, max_queue=64,
                     max_chars=300, max_upload_bytes=2_000_000, max_clip_seconds=10.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def post(server, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + "/v1/audio/speech", json=body, headers=headers, timeout=120, **kw)


# ----------------------------------------------------------------------------- the openai client
@pytest.mark.parametrize("model,extra", [("tts-1", SMALL), ("tortoise", QUALITY)], ids=["tts-1", "tortoise"])
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "pcm"])
def test_openai_client_every_format(client, model, extra, fmt):
    resp = client.audio.speech.create(model=model, voice="random", input="Hello world.", response_format=fmt,
                                      extra_body=extra)
    audio = decode(resp.content, fmt)
    assert audio.size > 24000 * 0.5 and np.abs(audio).max() > 0.001
    # Every format carries the same audio: compare with the lossless one of the same request.
    ref = decode(client.audio.speech.create(model=model, voice="random", input="Hello world.",
                                            response_format="wav", extra_body=extra).content, "wav")
    if fmt in ("flac", "pcm"):
        np.testing.assert_allclose(audio, ref, atol=2e-4)
    else:  # lossy codecs add or drop up to a few frames of padding
        assert abs(audio.size - ref.size) < 3000


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
@pytest.mark.parametrize("fmt", ["wav", "pcm", "mp3"])
def test_openai_streaming_response(client, stream_format, fmt):
    ref = client.audio.speech.create(model="tts-1", voice="random", input="Stream me.", response_format=fmt,
                                     extra_body=SMALL).content
    pieces = []
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="random", input="Stream me.", response_format=fmt, stream_format=stream_format,
            extra_body=SMALL) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream" if stream_format == "sse" else "audio/")
        for piece in resp.iter_bytes():
            pieces.append(piece)
    body = b"".join(pieces)
    if stream_format == "sse":
        body, types = sse_audio(body)
        assert types[-1] == "speech.audio.done" and set(types[:-1]) == {"speech.audio.delta"}
        if fmt in ("wav", "pcm"):
            assert types.count("speech.audio.delta") >= 2  # sent as produced, not at the end
    assert body == ref  # same seed, same bytes, whichever way they travel


def test_speed_time_stretches(client):
    normal = decode(client.audio.speech.create(model="tts-1", voice="random", input="Hello world.",
                                               response_format="pcm", extra_body=SMALL).content, "pcm")
    fast = decode(client.audio.speech.create(model="tts-1", voice="random", input="Hello world.",
                                             response_format="pcm", speed=2.0, extra_body=SMALL).content, "pcm")
    assert abs(fast.size - normal.size / 2) <= 1024


# ----------------------------------------------------------------------------- errors and auth
def test_auth(server):
    assert httpx.get(server.url + "/health").status_code == 200  # open, for load balancers
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.get(server.url + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).audio.speech.create(
            model="tts-1", voice="random", input="Hi.")


@pytest.mark.parametrize("body,status,param", [
    ({"model": "tts-1", "input": "Hi there.", "voice": "nobody"}, 404, "voice"),
    ({"model": "tts-1", "input": "x" * 301, "voice": "random"}, 413, "input"),
    ({"model": "tts-1", "input": "Hi there.", "voice": "random", "response_format": "aac"}, 400, "response_format"),
    ({"model": "tts-1", "input": "Hi there.", "voice": "random", "speed": 5}, 400, "speed"),
    ({"model": "tts-2", "input": "Hi there.", "voice": "random"}, 404, "model"),
    ({"model": "tts-1", "input": "", "voice": "random"}, 400, "input"),
    ({"model": "tts-1", "input": "Hi there.", "voice": "../etc"}, 400, "voice"),
    ({"model": "tts-1", "input": "Hi there.", "voice": "random", "stream_format": "ws"}, 400, "stream_format"),
    ({"model": "tts-1", "input": "Hi there.", "voice": "random", "bogus": 1}, 400, "bogus"),
    ({"model": "tts-1", "input": "Hi there.", "voice": "random", "seed": -1}, 400, "seed"),
    ({"model": "tortoise", "input": "Hi there.", "voice": "random", "preset": "nope"}, 400, "preset"),
])
def test_errors_in_openai_shape(server, body, status, param):
    r = post(server, body)
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]


def test_bad_knob_value_is_400(server):
    r = post(server, {"model": "tts-1", "input": "Hi there.", "voice": "random", "temperature": 0})
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]


def test_models_health_metrics(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    ids = [m["id"] for m in httpx.get(server.url + "/v1/models", headers=auth).json()["data"]]
    assert ids == ["tts-1", "tts-1-hd", "tortoise"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics", headers=auth).text
    for name in ("tortoise_requests_total", "tortoise_queue_depth", "tortoise_batch_occupancy",
                 "tortoise_time_to_first_audio_seconds_bucket", "tortoise_ar_codes_per_second"):
        assert name in text
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/v1/audio/speech" in page.text


# ----------------------------------------------------------------------------- voices
def test_voice_upload_use_delete(server, client):
    auth = {"Authorization": f"Bearer {KEY}"}
    url = server.url + "/v1/audio/voices"
    files = [("files", ("a.wav", wav_clip(), "audio/wav")), ("files", ("b.wav", wav_clip(freq=220), "audio/wav"))]
    r = httpx.post(url, data={"name": "alice"}, files=files, headers=auth)
    assert r.status_code == 201, r.text
    assert "alice" in [v["name"] for v in httpx.get(url, headers=auth).json()["data"]]
    a = client.audio.speech.create(model="tts-1", voice="alice", input="Hello.", response_format="pcm",
                                   extra_body=SMALL).content
    b = client.audio.speech.create(model="tts-1", voice="random", input="Hello.", response_format="pcm",
                                   extra_body=SMALL).content
    assert a != b
    mix = client.audio.speech.create(model="tts-1", voice="alice&alice", input="Hello.", response_format="pcm",
                                     extra_body=SMALL).content
    assert mix == a  # the mean of one voice with itself
    assert httpx.post(url, data={"name": "alice"}, files=files, headers=auth).status_code == 409
    assert httpx.delete(url + "/alice", headers=auth).status_code == 200
    assert httpx.delete(url + "/alice", headers=auth).status_code == 404
    assert post(server, {"model": "tts-1", "input": "Hi there.", "voice": "alice"}).status_code == 404


@pytest.mark.parametrize("name,files,status,needle", [
    ("../evil", [("files", ("a.wav", wav_clip(), "audio/wav"))], 400, "invalid voice name"),
    ("bob", [("files", ("notes.txt", b"not audio at all" * 20, "text/plain"))], 400, "notes.txt"),
    ("bob", [("files", ("long.wav", wav_clip(seconds=12), "audio/wav"))], 400, "long.wav"),
    ("bob", [("files", ("big.wav", b"\0" * 2_100_000, "audio/wav"))], 413, "bytes"),
    ("bob", [], 400, "files"),
])
def test_voice_upload_refusals(server, name, files, status, needle):
    r = httpx.post(server.url + "/v1/audio/voices", data={"name": name}, files=files or None,
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    names = [v["name"] for v in httpx.get(server.url + "/v1/audio/voices",
                                          headers={"Authorization": f"Bearer {KEY}"}).json()["data"]]
    assert "bob" not in names and "evil" not in names


# ----------------------------------------------------------------------------- load and faults
def test_load_48_requests_at_concurrency_8_equal_their_serial_runs(server):
    bodies = [{"model": "tts-1", "input": f"Request number {i}.", "voice": "random", "response_format": "pcm",
               "seed": 1000 + i, "max_mel_tokens": 16 + (i % 5) * 4, "stream_chunk_size": 8, "first_buffer": 8} for i in range(48)]
    serial = [post(server, b).content for b in bodies[:8]]
    deadline = time.monotonic() + 180
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: post(server, b), bodies))
    assert time.monotonic() < deadline
    assert [r.status_code for r in results] == [200] * 48
    assert all(len(r.content) > 0 for r in results)
    for s, r in zip(serial, results[:8]):  # batched with 7 others vs alone
        a, b = np.frombuffer(s, "<i2").astype(int), np.frombuffer(r.content, "<i2").astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 2  # int16 rounding of float-rounding differences
    again = [post(server, b).content for b in bodies[40:]]
    for s, r in zip(again, results[40:]):
        a, b = np.frombuffer(s, "<i2").astype(int), np.frombuffer(r.content, "<i2").astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 2
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    occupancy = float(next(line.split()[1] for line in text.splitlines() if line.startswith("tortoise_batch_occupancy")))
    assert occupancy > 1 / 8  # more than one row per step on average: the requests shared steps


def _metric(server, name):
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def test_disconnect_frees_slot_and_full_queue_is_429(tiny_models_dir, tmp_path, monkeypatch):
    from tortoise_xpu.models.autoregressive import UnifiedVoice

    real = UnifiedVoice.decode_rows

    def slow(self, *args):  # 20 ms per AR step: a 600-code request holds its row for ~12 s
        time.sleep(0.02)
        return real(self, *args)

    monkeypatch.setattr(UnifiedVoice, "decode_rows", slow)
    long = {"model": "tts-1", "input": "A long one.", "voice": "random", "response_format": "pcm", "seed": 1,
            "force_tokens": 600, "stream_chunk_size": 40, "first_buffer": 8}
    with live_server(tiny_models_dir, tmp_path, max_batch=1, max_queue=1) as srv:
        cancelled_before = _metric(srv, "tortoise_cancelled_total")
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", srv.url + "/v1/audio/speech", json=long) as resp:
                assert resp.status_code == 200
                chunks = resp.iter_bytes()  # kept: a dropped iterator closes the response
                next(chunks)  # audio is flowing: the one batch row is taken
                # A second request waits in the queue (the batch is full) ...
                waiting = concurrent.futures.ThreadPoolExecutor(1).submit(
                    httpx.post, srv.url + "/v1/audio/speech", json={**long, "force_tokens": 20}, timeout=120)
                end = time.monotonic() + 30
                while _metric(srv, "tortoise_queue_depth") < 1 and time.monotonic() < end:
                    time.sleep(0.05)
                # ... so a third is refused with 429 and a Retry-After.
                r = httpx.post(srv.url + "/v1/audio/speech", json={**long, "force_tokens": 20}, timeout=30)
                assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
                assert r.json()["error"]["code"] == "queue_full"
            # The client went away mid-stream: its row is freed and the waiting request runs.
        assert waiting.result(timeout=120).status_code == 200
        end = time.monotonic() + 30
        while _metric(srv, "tortoise_cancelled_total") <= cancelled_before and time.monotonic() < end:
            time.sleep(0.05)
        assert _metric(srv, "tortoise_cancelled_total") == cancelled_before + 1
        assert _metric(srv, "tortoise_batch_rows") == 0


def test_deadline_is_504(tiny_models_dir, tmp_path):
    with live_server(tiny_models_dir, tmp_path, max_batch=2) as srv:
        r = httpx.post(srv.url + "/v1/audio/speech", timeout=60,
                       json={"model": "tortoise", "input": "Hello.", "voice": "random", "max_mel_tokens": 600,
                             "candidates": 2, "diffusion_iterations": 3, "deadline": 0.2})
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"


def test_health_is_503_until_models_load(tiny_models_dir, tmp_path):
    from tests.serve_live import LiveServer
    from tortoise_xpu.serve.app import create_app
    from tortoise_xpu.serve.engine import Engine
    from tortoise_xpu.serve.runner import PipelineRunner

    gate = threading.Event()

    class SlowRunner(PipelineRunner):
        def load(self):
            gate.wait(30)
            return super().load()

    engine = Engine(SlowRunner(tiny_models_dir, "cpu", voices_dir=tmp_path))
    engine.start()
    srv = LiveServer(engine, create_app(engine), free_port())
    srv.thread.start()
    try:
        end = time.monotonic() + 30
        while not srv.server.started and time.monotonic() < end:
            time.sleep(0.02)
        r = httpx.get(srv.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["Retry-After"]
        r = httpx.post(srv.url + "/v1/audio/speech", json={"model": "tts-1", "input": "Hi there.", "voice": "random"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        gate.set()
        assert engine.wait_ready(30)
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        gate.set()
        srv.stop()


def _bound_port(log_path, proc, timeout: float) -> int:
    """The port a ``serve --port 0`` subprocess listens on, from uvicorn's start-up line in its log."""
    import re

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)", log_path.read_bytes())
        if m:
            return int(m.group(1))
        assert proc.poll() is None, log_path.read_bytes().decode(errors="replace")[-2000:]
        time.sleep(0.1)
    pytest.fail("the server did not start listening: " + log_path.read_bytes().decode(errors="replace")[-2000:])


def test_sigterm_drains_in_flight_requests(tiny_models_dir, tmp_path):
    """Streams open when SIGTERM comes all finish (each ends with ``speech.audio.done``), then the
    server exits 0 and stops listening.

    Made robust for a loaded machine (it once failed there): the server's log goes to a file (an
    unread pipe fills and blocks the server); the server binds port 0 and the test reads the port
    it got (a port picked by the test and released could be taken by another process meanwhile);
    no barrier with short timeouts (one slow first chunk broke it for every stream); and SIGTERM is
    sent only while the engine reports the streams in flight: streams that had already ended by
    then would test nothing, so such a round is read to its end and another started (3 at most).
    Each client reads its first chunk, then the rest only after the signal."""
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tortoise_xpu", "serve", "--port", "0", "--device", "cpu",
                                 "--models-dir", str(tiny_models_dir), "--voices-dir", str(tmp_path / "voices")],
                                stdout=log, stderr=subprocess.STDOUT, env=env)

    def server_log() -> str:
        return log_path.read_bytes().decode(errors="replace")[-2000:]

    try:
        url = f"http://127.0.0.1:{_bound_port(log_path, proc, 180)}"
        end = time.monotonic() + 180
        while time.monotonic() < end:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, server_log()
            time.sleep(0.2)
        else:
            pytest.fail("the server did not become healthy: " + server_log())
        # force_tokens: every stream is 200 codes long (no early stop), so it runs a while after its first chunk
        body = {"model": "tts-1", "input": "Draining works.", "voice": "random", "response_format": "pcm",
                "stream_format": "sse", "force_tokens": 200, "stream_chunk_size": 8, "first_buffer": 8}

        def one(seed, first_chunk: threading.Event, go_on: threading.Event):
            with httpx.stream("POST", url + "/v1/audio/speech", json={**body, "seed": seed}, timeout=120) as r:
                chunks = r.iter_bytes()
                first = next(chunks)
                first_chunk.set()
                go_on.wait(120)  # read the rest only once the signal went (or the round was given up)
                return r.status_code, sse_audio(first + b"".join(chunks))[1]

        signalled = False
        for attempt in range(3):
            firsts = [threading.Event() for _ in range(3)]
            go_on = threading.Event()
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                try:
                    futures = [pool.submit(one, 10 * attempt + i, firsts[i], go_on) for i in range(3)]
                    for ev, fut in zip(firsts, futures):
                        while not ev.wait(0.2):
                            if fut.done():
                                fut.result()  # raises what went wrong in that stream
                            assert proc.poll() is None, server_log()
                    if httpx.get(url + "/health", timeout=30).json()["in_flight"] > 0:
                        proc.send_signal(signal.SIGTERM)
                        signalled = True
                finally:
                    go_on.set()
                results = [f.result(timeout=180) for f in futures]
            for status, types in results:
                assert status == 200 and types[-1] == "speech.audio.done", (status, types[-3:], server_log())
            if signalled:
                break
        assert signalled, "the streams always ended before the signal could be sent: nothing was drained"
        assert proc.wait(timeout=120) == 0, server_log()
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_oom_halves_the_batch_and_every_request_is_answered(tiny_models_dir, tmp_path, monkeypatch):
    """AR steps over more than 2 rows run out of memory (simulated): the engine halves its step,
    keeps going, and every request gets the audio it gets alone."""
    from tortoise_xpu.models.autoregressive import UnifiedVoice

    real = UnifiedVoice.decode_rows

    def flaky(self, tokens, *args):
        if tokens.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
        return real(self, tokens, *args)

    bodies = [{"model": "tts-1", "input": f"Memory test {i}.", "voice": "random", "response_format": "pcm",
               "seed": 300 + i, "force_tokens": 24, "stream_chunk_size": 8, "first_buffer": 8} for i in range(4)]
    with live_server(tiny_models_dir, tmp_path, max_batch=4) as srv:
        alone = [httpx.post(srv.url + "/v1/audio/speech", json=b, timeout=60).content for b in bodies]
        monkeypatch.setattr(UnifiedVoice, "decode_rows", flaky)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda b: httpx.post(srv.url + "/v1/audio/speech", json=b, timeout=60), bodies))
        assert [r.status_code for r in together] == [200] * 4
        for a, r in zip(alone, together):
            x, y = np.frombuffer(a, "<i2").astype(int), np.frombuffer(r.content, "<i2").astype(int)
            assert x.shape == y.shape and np.abs(x - y).max() <= 2
        assert _metric(srv, "tortoise_oom_backoffs_total") >= 1
