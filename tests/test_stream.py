"""Streaming (``tts_stream``): chunk timing and lengths, windowed decoding, determinism, CLI.

Tiny random models on the CPU (the session fixture ``tiny_models_dir``); ``force_tokens`` fixes
the number of codes so the chunk schedule is known in advance.
"""

from __future__ import annotations

import pytest
import torch

from tortoise_xpu.errors import UserError
from tortoise_xpu.pipeline.stream import StreamStats

TEXT = "Streaming test."
SCHEDULE = dict(stream_chunk_size=5, first_buffer=6, overlap_wav_len=512, force_tokens=16)


def decoded_length(codes: int) -> int:
    """HiFi-GAN output samples for ``codes`` latents: ×4 then ×24000/22050 frames, 256 samples each (tiny too)."""
    return int(int(4 * codes) * 24000 / 22050) * 256


@pytest.fixture(scope="module")
def tts(tiny_models_dir):
    from tortoise_xpu import TextToSpeech

    return TextToSpeech(models_dir=tiny_models_dir, device="cpu")


@pytest.fixture(scope="module")
def run(tts):
    """One stream with the latents the decoder was given recorded: (chunks, latents per decode, stats)."""
    hifi = tts.model("hifidecoder")
    seen = []
    real = hifi.latent_frames

    def spy(latents):
        seen.append(latents.clone())
        return real(latents)

    hifi.latent_frames = spy
    try:
        stats = StreamStats()
        chunks = list(tts.tts_stream(TEXT, seed=7, stats=stats, **SCHEDULE))
    finally:
        del hifi.latent_frames
    return chunks, seen, stats


def test_chunks_arrive_on_schedule_and_add_up(run, tts):
    chunks, seen, stats = run
    # decoder windows after 6 codes (first buffer), 11, and 16 (the end: the last push and the tail)
    assert sorted({s.shape[1] for s in seen}) == [6, 11, 16]
    assert len(chunks) == 3 and all(c.dim() == 1 and c.dtype == torch.float32 and c.numel() for c in chunks)
    assert sum(c.numel() for c in chunks) == decoded_length(16) == stats.samples
    assert len(stats.codes) == 16 and not stats.stopped and stats.chunks == 3
    assert stats.first_audio_s is not None and stats.first_audio_s > 0
    r = tts.last_report
    assert r.ar_steps == 16 and {"conditioning", "ar", "hifigan"} <= set(r.stages)
    assert torch.isfinite(torch.cat(chunks)).all()


def test_chunks_join_into_the_full_decode_of_the_final_latents(run, tts):
    """Windowed decoding (pipeline/stream_vocoder.py): no crossfade, nothing provisional is played."""
    chunks, seen, _ = run
    hifi = tts.model("hifidecoder")
    final = seen[-1]
    speaker = tts.model("rlg_auto")(torch.zeros(1), generator=torch.Generator().manual_seed(7)).float()
    full = hifi.inference(final, speaker).reshape(-1)
    torch.testing.assert_close(torch.cat(chunks), full, rtol=1e-4, atol=1e-5)
    # each earlier window's latents are a prefix of the final ones (the same codes, the same states)
    for s in seen:
        torch.testing.assert_close(s, final[:, :s.shape[1]], rtol=0, atol=0)


def test_same_seed_same_audio(tts, run):
    chunks, _, _ = run
    again = list(tts.tts_stream(TEXT, seed=7, **SCHEDULE))
    assert len(again) == len(chunks) and all(torch.equal(a, b) for a, b in zip(again, chunks))
    stream = tts.tts_stream(TEXT, seed=8, **SCHEDULE)
    other = next(stream)  # the first chunk is enough to differ
    stream.close()
    assert other.shape == chunks[0].shape and not torch.equal(other, chunks[0])


def test_codes_and_latents_are_those_of_the_non_streaming_path(tts):
    from tortoise_xpu.pipeline.sampling import SamplingSettings

    hifi = tts.model("hifidecoder")
    seen = []
    real = hifi.latent_frames
    hifi.latent_frames = lambda latents: seen.append(latents) or real(latents)
    cond = (torch.randn(1, 64, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 128))
    stats = StreamStats()
    try:
        audio = list(tts.tts_stream(TEXT, conditioning_latents=cond, seed=4, max_mel_tokens=20, stream_chunk_size=0,
                                    stats=stats))
    finally:
        del hifi.latent_frames
    assert len(audio) == 1  # stream_chunk_size 0: everything at the end
    n = len(stats.codes)
    assert audio[0].numel() == decoded_length(n)
    # the codes: tts()'s decode loop with one candidate and the same seed
    text = tts.text_tokens(TEXT)
    codes = tts.sample_codes(cond[0], text, 1, SamplingSettings(), 20, torch.Generator().manual_seed(4))
    assert stats.codes == codes[0, :n].tolist()
    # the latents: the teacher-forced pass over those codes (latent i predicts code i)
    ar = tts.model("autoregressive")
    with torch.no_grad():
        forced = ar(cond[0], text, torch.tensor([text.shape[1]]), torch.tensor([stats.codes]),
                    torch.tensor([n * ar.config.mel_length_compression]), return_latent=True, clip_inputs=False)
    torch.testing.assert_close(seen[-1].float(), forced.float(), rtol=1e-4, atol=1e-4)


def test_voice_clips_give_the_ar_latent_and_draws_of_tts(tts):
    from tortoise_xpu.pipeline.stream import voice_latent

    def _ar_voice_latent(tts, clips, latents, generator):
        return voice_latent(tts.store, tts.new_context(1, generator), clips, latents)

    # one clip longer than the 6 s AR window, so its crop is a random draw
    clips = [torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1 for n in (140000, 30000)]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ours = _ar_voice_latent(tts, clips, None, g1)
    theirs, _ = tts.get_conditioning_latents(clips, generator=g2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))  # same draws consumed
    with pytest.raises(UserError, match="width"):
        _ar_voice_latent(tts, None, torch.zeros(1, 65), g1)


def test_bad_input_raises_at_the_call(tts):
    with pytest.raises(UserError, match="bracket"):
        tts.tts_stream("[sad] hello")  # redaction is on: a stream cannot cut played audio
    with pytest.raises(UserError, match="unknown setting"):
        tts.tts_stream("hello", diffusion_steps=3)
    with pytest.raises(UserError, match="max_mel_tokens"):
        tts.tts_stream("hello", max_mel_tokens=0)


def test_cli_speak_stream_writes_the_wav(tiny_models_dir, tmp_path, capsys):
    import soundfile as sf

    from tortoise_xpu.cli import main

    out = tmp_path / "s.wav"
    rc = main(["speak", "Hi there.", "--stream", "--voice", "random", "--seed", "2", "--force-tokens", "12",
               "--device", "cpu", "--models-dir", str(tiny_models_dir), "-o", str(out), "--json"])
    assert rc == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    assert summary["stream"] is True and summary["first_audio_s"] > 0 and "hifigan" in summary["stages"]
    data, rate = sf.read(out)
    assert rate == 24000 and data.shape[0] == decoded_length(12)


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_interleaved_streams_and_a_reused_stats_object_give_the_audio_of_one_stream(tts, mode, monkeypatch):
    """Two streams advanced in turn do not share decode buffers (a paused stream keeps its engine busy),
    and a StreamStats that already holds codes does not shift what a stream reads back."""
    from tortoise_xpu import TextToSpeech

    tts = TextToSpeech(models_dir=tts.models_dir, device="cpu", decode_mode=mode)
    alone = list(tts.tts_stream(TEXT, seed=7, **SCHEDULE))
    a = tts.tts_stream(TEXT, seed=7, **SCHEDULE)
    b = tts.tts_stream(TEXT, seed=7, **SCHEDULE)
    got_a, got_b = [], []
    for x, y in zip(a, b):
        got_a.append(x)
        got_b.append(y)
    assert len(alone) == len(got_a) == len(got_b) == 3
    assert all(torch.equal(x, c) and torch.equal(y, c) for x, y, c in zip(got_a, got_b, alone))
    assert tts.last_report.decode_mode == mode
    stats = StreamStats()
    list(tts.tts_stream(TEXT, seed=7, stats=stats, **SCHEDULE))
    again = list(tts.tts_stream(TEXT, seed=7, stats=stats, **SCHEDULE))  # stats already holds 16 codes
    assert len(again) == len(alone) and all(torch.equal(x, c) for x, c in zip(again, alone))


def test_chunks_after_the_first_double_up_to_the_cap():
    """The default schedule: chunk_size, then twice the last up to max_chunk_size; a cap no larger
    than chunk_size gives the original's fixed chunks; a negative cap is refused."""
    from tortoise_xpu.pipeline.stream import MAX_CHUNK_SIZE, StreamOptions

    grow = StreamOptions(chunk_size=20, first_buffer=20)
    sizes, last = [], 0
    for _ in range(5):
        last = grow.next_size(last) if last else grow.chunk_size
        sizes.append(last)
    assert sizes == [20, 40, 80, 80, 80] and grow.max_chunk_size == MAX_CHUNK_SIZE
    fixed = StreamOptions(chunk_size=40, first_buffer=60, max_chunk_size=40)
    assert fixed.next_size(40) == 40 and StreamOptions(chunk_size=40, max_chunk_size=0).next_size(40) == 40
    with pytest.raises(UserError, match="max_stream_chunk_size"):
        StreamOptions(max_chunk_size=-1)


def test_a_growing_schedule_cuts_fewer_windows_and_the_same_audio(tts, run):
    """chunk 5 growing to 20: windows after 6 codes (first buffer), 11 (+5), then 16 (the end, +10 due
    at 21); the audio equals the fixed schedule's, sample for sample."""
    chunks, _, _ = run
    stats = StreamStats()
    grown = list(tts.tts_stream(TEXT, seed=7, stats=stats, **{**SCHEDULE, "max_stream_chunk_size": 20}))
    assert torch.equal(torch.cat(grown), torch.cat(chunks))
    longer = StreamStats()
    out = list(tts.tts_stream(TEXT, seed=7, stats=longer, **{**SCHEDULE, "force_tokens": 40,
                                                              "max_stream_chunk_size": 20}))
    # cuts at 6, 11, 21, 40 (the end): 4 chunks where fixed 5-code chunks would make 8
    assert longer.chunks == 4 and sum(c.numel() for c in out) == decoded_length(40)
