"""The serving engine without HTTP: continuous batching, same-seed determinism, OOM halving,
deadlines, cancellation, and the audio helpers it uses (encode, time-stretch).

Tiny random models on the CPU.  Equality claims, and why they hold:

* codes: exactly equal.  Each row draws from its own uniforms, runs its prompt pass alone and
  attends to its own cache slots only, so neighbours cannot change its logits beyond float
  rounding, and rounding does not move an inverse-CDF draw here.
* audio: the streaming path vocodes each request's own hidden states; they come from a batched
  step, so they may differ from a solo run in the last float bits (batched matrix products sum in
  another order): compared with a 1e-4 tolerance.
* a ``tts-1`` job against ``tts_stream``: equal within float rounding, not bit for bit (measured
  ~1e-7 here, compared at 1e-5).  Both decode with the windowed ``StreamVocoder``, whose chunks
  joined are the full decode up to summation order, but the two cut their windows at other codes
  (the scheduler at exactly ``stream_chunk_size`` codes, ``tts_stream`` where it reads codes back),
  so the convolutions run over windows of other lengths; and the hidden states come from another
  decode engine (``ContinuousDecoder`` vs ``DecodeEngine``).
* a quality job against ``tts()``: exactly equal.  The runner calls tts()'s stage functions on the
  same codes (equal, above), the same voice latents and the same generator state, and every later
  stage (ranking, AR latents, diffusion, vocoder) runs one request alone.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tortoise_xpu.errors import UserError

TEXTS = ["Hello there.", "A rather longer sentence than the first one.", "Short.", "Numbers like 42 too."]


@pytest.fixture(scope="module")
def runner(tiny_models_dir, tmp_path_factory):
    from tortoise_xpu.serve.runner import PipelineRunner

    r = PipelineRunner(tiny_models_dir, "cpu", voices_dir=tmp_path_factory.mktemp("voices"))
    r.load()
    return r


def make_engine(runner, **cfg):
    from tortoise_xpu.serve.engine import Engine, EngineConfig

    engine = Engine(runner, EngineConfig(**cfg))
    engine.start(background=False)
    return engine


def job(text, seed, quality=False, **kw):
    from tortoise_xpu.serve.jobs import SpeechJob

    settings = {"max_mel_tokens": kw.pop("max_mel_tokens", 24)}
    if quality:
        settings.update(num_autoregressive_samples=kw.get("candidates", 2), diffusion_iterations=3)
    return SpeechJob(text=text, voice=kw.pop("voice", "random"), quality=quality, settings=settings, seed=seed,
                     stream_chunk_size=kw.pop("stream_chunk_size", 8), first_buffer=8, **kw)


def collect(ticket, timeout=60.0):
    chunks = []
    while True:
        kind, payload = ticket.next_event_blocking(timeout)
        if kind == "audio":
            chunks.append(payload)
        elif kind == "done":
            return np.concatenate(chunks) if chunks else np.zeros(0, np.float32), payload
        else:
            raise payload


# ----------------------------------------------------------------------------- the decoder
def _spec(ar, seed, tlen, tokens=30):
    from tortoise_xpu.pipeline.continuous import RowSpec
    from tortoise_xpu.pipeline.sampling import SamplingSettings

    g = torch.Generator().manual_seed(seed)
    return RowSpec(torch.randn(1, ar.config.model_dim, generator=g), torch.randint(1, 100, (1, tlen), generator=g),
                   torch.rand(tokens, generator=g), SamplingSettings(temperature=0.9 + seed / 100), tokens, tag=seed)


def _run_rows(dec, specs, join_every=3):
    """Rows join every ``join_every`` steps while there is room; returns tag -> codes."""
    pending, out, t = list(specs), {}, 0
    while pending or dec.rows:
        while pending and dec.free and (t % join_every == 0 or not dec.rows):
            dec.join(pending.pop(0))
        for r in [r for r in dec.rows if r.finished]:
            out[r.spec.tag] = r.codes
            dec.leave(r)
        dec.step()
        t += 1
        for r in [r for r in dec.rows if r.finished]:
            out[r.spec.tag] = r.codes
            dec.leave(r)
    return out


def test_continuous_rows_match_the_single_run_engine(runner):
    """Rows of different prompt lengths joining at different steps give the codes DecodeEngine gives
    each alone (and per-row settings differ, so grouping by settings is exercised)."""
    from tortoise_xpu.pipeline.continuous import ContinuousDecoder
    from tortoise_xpu.pipeline.decode import DecodeEngine

    ar = runner.ar_model()
    specs = [_spec(ar, i, 4 + 5 * i) for i in range(5)]
    out = _run_rows(ContinuousDecoder(ar, 3), specs)
    stop = ar.config.stop_mel_token
    for sp in specs:
        alone = DecodeEngine(runner.backend, mode="eager").decode(ar, sp.cond, sp.text, sp.u[None], sp.settings,
                                                                  sp.max_tokens).codes[0].tolist()
        alone = alone[:alone.index(stop) + 1] if stop in alone else alone
        assert out[sp.tag] == alone


def test_oom_halves_the_step_and_loses_no_row(runner, monkeypatch):
    """A step that runs out of memory at more than 2 rows is redone in halves; every row's codes are
    those of a run without the OOM, and the smaller step size is kept."""
    from tortoise_xpu.pipeline.continuous import ContinuousDecoder

    ar = runner.ar_model()
    specs = [_spec(ar, i, 6 + i) for i in range(4)]
    clean = _run_rows(ContinuousDecoder(ar, 4), specs, join_every=1)
    real = type(ar).decode_rows
    calls = []

    def flaky(self, tokens, positions, slots, cache):
        calls.append(tokens.shape[0])
        if tokens.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(self, tokens, positions, slots, cache)

    monkeypatch.setattr(type(ar), "decode_rows", flaky)
    dec = ContinuousDecoder(ar, 4)
    out = _run_rows(dec, specs, join_every=1)
    assert out == clean
    assert dec.step_rows == 2 and dec.backoffs == 1
    assert max(calls) == 4 and calls.count(4) == 1  # tried once at 4, then always at <= 2


# ----------------------------------------------------------------------------- the engine
def test_stream_job_equals_tts_stream_and_quality_job_equals_tts(runner):
    engine = make_engine(runner, max_batch=4)
    try:
        audio, info = collect(engine.submit(job("Hello there.", 3)))
        ref = torch.cat(list(runner.tts.tts_stream("Hello there.", seed=3, max_mel_tokens=24, stream_chunk_size=8,
                                                   first_buffer=8))).numpy()
        assert audio.shape == ref.shape and info["samples"] == ref.size
        np.testing.assert_allclose(audio, ref, atol=1e-5)
        audio, _ = collect(engine.submit(job("Hello there.", 3, quality=True, candidates=2)))
        ref = runner.tts.tts("Hello there.", seed=3, max_mel_tokens=24, diffusion_iterations=3,
                             num_autoregressive_samples=2).reshape(-1).numpy()
        np.testing.assert_array_equal(audio, ref)
    finally:
        engine.close()


def test_clip_voice_and_long_stream_equal_the_pipeline(runner):
    """A voice of clips runs the conditioning stage per request (the AR half only on the fast path,
    both halves and the clips' mels for ranking on the quality path), drawing the clips' random
    crops from the request's generator as tts()/tts_stream do; a long stream is decoded in many
    windows (each chunk's new frames plus the receptive field) and still joins into tts_stream's audio."""
    import soundfile as sf

    from tortoise_xpu.voices import load_voice_clips

    folder = runner.voices_dir / "clipvoice"
    folder.mkdir(exist_ok=True)
    rate = 22050
    t = np.arange(int(7.5 * rate)) / rate  # longer than the AR's 6 s: a random crop is drawn
    sf.write(folder / "a.wav", (0.3 * np.sin(2 * np.pi * 160 * t)).astype(np.float32), rate)
    clips = load_voice_clips([folder / "a.wav"], rate)
    engine = make_engine(runner, max_batch=4)
    try:
        ticket = engine.submit(job("Hello there.", 5, voice="clipvoice", force_tokens=90))
        audio, info = collect(ticket)
        ref = torch.cat(list(runner.tts.tts_stream("Hello there.", clips, seed=5, force_tokens=90, stream_chunk_size=8,
                                                   first_buffer=8))).numpy()
        assert info["codes"] == 90 and audio.shape == ref.shape
        np.testing.assert_allclose(audio, ref, atol=1e-5)
        audio, _ = collect(engine.submit(job("Hello there.", 5, quality=True, candidates=2, voice="clipvoice")))
        ref = runner.tts.tts("Hello there.", clips, seed=5, max_mel_tokens=24, diffusion_iterations=3,
                             num_autoregressive_samples=2).reshape(-1).numpy()
        np.testing.assert_array_equal(audio, ref)
    finally:
        engine.close()


def test_same_seed_same_audio_alone_or_among_others(runner):
    engine = make_engine(runner, max_batch=4)
    try:
        alone = [collect(engine.submit(job(t, 100 + i)))[0] for i, t in enumerate(TEXTS)]
        tickets = [engine.submit(job(t, 100 + i)) for i, t in enumerate(TEXTS)]
        together = [collect(tk)[0] for tk in tickets]
        assert engine.metrics.occupied_row_steps > engine.metrics.steps  # they really shared steps
        for a, b in zip(alone, together):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-4)
    finally:
        engine.close()


def test_deadline_and_cancel_free_the_rows(runner):
    from tortoise_xpu.serve.jobs import Cancelled, DeadlineExceeded

    engine = make_engine(runner, max_batch=2)
    try:
        slow = engine.submit(job("Hello there.", 1, max_mel_tokens=400, stream_chunk_size=0, deadline_s=0.3))
        with pytest.raises(DeadlineExceeded):
            collect(slow)
        long = engine.submit(job("Hello there.", 2, max_mel_tokens=400, stream_chunk_size=8))
        kind, _ = long.next_event_blocking(30)
        assert kind == "audio"
        long.cancel()
        with pytest.raises(Cancelled):
            collect(long)
        assert engine.drain(10)
        assert not engine.scheduler.decoder.rows and engine.metrics.cancelled == 1
    finally:
        engine.close()


def test_quality_stages_stop_when_the_client_leaves(runner, monkeypatch):
    """The quality path's stages run on the request's context, whose cancel check is the ticket's:
    a client that leaves during ranking/diffusion stops the request there (499), not after the
    whole diffusion."""
    from tortoise_xpu.errors import Cancelled as RunCancelled
    from tortoise_xpu.serve.jobs import Cancelled

    prep = runner.prepare("Hello there.", "random", {"max_mel_tokens": 24, "diffusion_iterations": 3}, 2, 1,
                          quality=True, cancel=lambda: True)
    with pytest.raises(RunCancelled):
        runner.finish(prep, torch.randint(0, 100, (2, 24)))
    engine = make_engine(runner, max_batch=4)
    real = runner.finish
    entered = []

    def leave_then_finish(prep, codes):  # the client goes away just as the later stages start
        entered.append(True)
        tickets[0].cancel()
        return real(prep, codes)

    monkeypatch.setattr(runner, "finish", leave_then_finish)
    try:
        tickets = [engine.submit(job("Hello there.", 4, quality=True, candidates=2))]
        with pytest.raises(Cancelled):
            collect(tickets[0])
        assert entered and engine.drain(10)
    finally:
        engine.close()


def test_queue_full_and_draining_refuse(runner):
    from tortoise_xpu.serve.jobs import Draining, QueueFull

    engine = make_engine(runner, max_batch=1, max_queue=1)
    try:
        engine._prep.submit(lambda: __import__("time").sleep(0.5))  # hold the prep stage: the next job waits
        first = engine.submit(job("Hello there.", 1))
        with pytest.raises(QueueFull) as exc:
            engine.submit(job("Hello there.", 2))
        assert exc.value.retry_after and exc.value.status == 429
        collect(first)
        assert engine.drain(10)
        with pytest.raises(Draining):
            engine.submit(job("Hello there.", 3))
    finally:
        engine.close()


def test_bad_voice_and_text_are_user_errors(runner):
    engine = make_engine(runner)
    try:
        from tortoise_xpu.serve.jobs import SpeechJob
        from tortoise_xpu.serve.runner import VoiceNotFound

        with pytest.raises(VoiceNotFound):
            collect(engine.submit(SpeechJob("Hi there.", "nobody", False, {}, seed=1)))
        with pytest.raises(UserError):
            collect(engine.submit(SpeechJob("...", "random", False, {}, seed=1)))
    finally:
        engine.close()


# ----------------------------------------------------------------------------- audio helpers
@pytest.mark.parametrize("fmt", ["wav", "flac", "opus", "mp3", "pcm"])
def test_encode_round_trips(fmt):
    import soundfile as sf

    from tortoise_xpu.audio.encode import available_formats, encode

    if fmt not in available_formats():
        pytest.fail(f"this libsndfile cannot write {fmt}; the server would answer 400 for it")
    t = np.arange(24000) / 24000
    x = (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    data = encode(torch.from_numpy(x), 24000, fmt)
    y = np.frombuffer(data, "<i2") / 32767 if fmt == "pcm" else sf.read(io.BytesIO(data))[0]
    assert abs(len(y) - len(x)) < 2400  # mp3 pads/trims a frame or so
    if fmt in ("wav", "flac", "pcm"):
        np.testing.assert_allclose(y, x, atol=1e-4)


def test_format_for_suffix():
    from tortoise_xpu.audio.encode import encode, format_for_suffix

    assert [format_for_suffix(s) for s in (".wav", ".FLAC", ".ogg", ".opus", ".mp3", ".pcm")] == \
        ["wav", "flac", "opus", "opus", "mp3", "pcm"]
    with pytest.raises(UserError, match="aac"):
        format_for_suffix(".aac")
    with pytest.raises(UserError):
        encode(np.zeros(10), 24000, "aac")


@pytest.mark.parametrize("speed", [0.5, 1.5, 2.0])
def test_time_stretch_keeps_pitch_and_scales_length(speed):
    from tortoise_xpu.audio.stretch import TimeStretcher, time_stretch

    sr = 24000
    t = np.arange(sr) / sr
    x = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    y = time_stretch(x, speed)
    assert abs(y.size - sr / speed) <= 1024
    mid = y[2048:-2048]
    freq = np.argmax(np.abs(np.fft.rfft(mid))) * sr / mid.size
    assert abs(freq - 300) < 6  # the pitch stays (resampling would move it to 300 * speed)
    assert 0.4 < np.abs(mid).max() < 0.6
    ts = TimeStretcher(speed)
    streamed = np.concatenate([ts.push(c) for c in np.array_split(x, 9)] + [ts.flush()])
    assert streamed.size == y.size
    with pytest.raises(ValueError):
        TimeStretcher(5.0)
