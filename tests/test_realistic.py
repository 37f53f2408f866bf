"""The pipeline with tiny models that STOP, as official weights do.

Tiny random AR models never pick the stop token, so every candidate of the other pipeline tests runs
to ``max_mel_tokens`` and the code paths of real weights (candidates of different lengths, the
calm-token trim, very short latents) are never taken.  Here the tiny AR model's stop logit is raised
(``STOP_BIAS``; tests/reference/gen_pipeline.py does the same for its goldens) in a copy of the tiny
models folder, so candidates stop early and at different steps, and everything that reads the folder
(``TextToSpeech``, the CLI) sees a model that behaves like a real one.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from tortoise_xpu.errors import UserError
from tortoise_xpu.pipeline.codes import CALM_TOKEN, END_CODES, fix_autoregressive_output, trim_length
from tortoise_xpu.pipeline.sampling import SamplingSettings

STOP_BIAS = 2.0  # with seed-1234 tiny weights: of 8 candidates some stop within 3-40 codes, some never
STOP = 8193
MAX = 40
FAST = dict(num_autoregressive_samples=8, diffusion_iterations=2, max_mel_tokens=MAX)
SR22 = 22050


def wav_len(codes: int) -> int:
    """Samples of the waveform made from ``codes`` kept AR codes (the original's mel length * hop)."""
    return codes * 4 * 24000 // 22050 * 256


@pytest.fixture(scope="module")
def stopping_dir(tiny_models_dir, tmp_path_factory):
    """The tiny models folder with the AR model's stop logit raised."""
    out = tmp_path_factory.mktemp("stopping-models")
    shutil.copytree(tiny_models_dir, out, dirs_exist_ok=True)
    sd = torch.load(out / "autoregressive.pth", weights_only=True)
    sd["mel_head.bias"] = sd["mel_head.bias"].clone()
    sd["mel_head.bias"][STOP] += STOP_BIAS
    torch.save(sd, out / "autoregressive.pth")
    return out


@pytest.fixture(scope="module")
def tts(stopping_dir):
    from tortoise_xpu import TextToSpeech

    return TextToSpeech(models_dir=stopping_dir, device="cpu")


@pytest.fixture(scope="module")
def clips():
    """Five voice clips at 22.05 kHz of different lengths: 7 s (over 6 s: cropped), 0.36 s, 2 s, 1.4 s, 3 s."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, n, generator=g) * 0.1 for n in (SR22 * 7, 8000, SR22 * 2, 30000, SR22 * 3)]


def spy_codes(tts, monkeypatch) -> list[torch.Tensor]:
    """Record the raw candidates ``tts()`` samples (its AR sampling stage, pipeline/ar_sampling.py)."""
    from tortoise_xpu.pipeline import ar_sampling

    seen: list[torch.Tensor] = []
    real = ar_sampling.sample_codes

    def wrapped(*a, **kw):
        out = real(*a, **kw)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(ar_sampling, "sample_codes", wrapped)
    return seen


def expected_lengths(raw: torch.Tensor, scores: list[float], k: int) -> list[int]:
    """Waveform lengths of the best ``k`` candidates, in rank order, from the raw codes and scores."""
    fixed = fix_autoregressive_output(raw.cpu(), STOP)
    best = torch.topk(torch.tensor(scores), k=k).indices.tolist()
    return [wav_len(trim_length(fixed[i])) for i in best]


# ------------------------------------------------------------------------------------------ codes
def test_candidates_stop_at_different_lengths_and_are_fixed(tts):
    cond = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    raw = tts.sample_codes(cond, tts.text_tokens("Hello there, this is a test."), 8, SamplingSettings(), MAX,
                           torch.Generator().manual_seed(1))
    assert raw.shape == (8, MAX)
    stops = [int((r == STOP).nonzero()[0]) if (r == STOP).any() else None for r in raw]
    assert len({s for s in stops if s is not None}) >= 3, stops  # the point of the bias: varied lengths
    fixed = fix_autoregressive_output(raw, STOP)
    for row, s, out in zip(raw, stops, fixed):
        if s is None:
            assert torch.equal(out, row) and trim_length(out) == MAX
            continue
        # the end codes overwrite the last three codes, even spoken ones before a late stop (as the original)
        assert torch.equal(out[:min(s, MAX - 3)], row[:min(s, MAX - 3)])
        assert (out[s:-3] == CALM_TOKEN).all() and out[-3:].tolist() == list(END_CODES)
        keep = trim_length(out)
        # 9 calm tokens past the stop end the speech; a stop too late for that keeps everything
        assert keep == (s + 8 if s + 8 < MAX - 3 else MAX)
        assert STOP not in out.tolist()


def test_k_equal_to_candidates_returns_each_trimmed_length(tts, monkeypatch):
    seen = spy_codes(tts, monkeypatch)
    wavs = tts.tts("Hello there.", k=8, seed=1, **FAST)
    assert isinstance(wavs, list) and len(wavs) == 8
    want = expected_lengths(seen[0], tts.last_report.scores, 8)
    assert [w.shape for w in wavs] == [(1, n) for n in want]
    assert len(set(want)) >= 3 and min(want) < wav_len(MAX)  # real trimming happened, to different lengths
    for w in wavs:
        assert w.dtype == torch.float32 and torch.isfinite(w).all()
    assert tts.last_report.audio_seconds == pytest.approx(want[0] / 24000)


def test_candidate_stopping_at_first_step(tts, monkeypatch):
    """A candidate whose first code is the stop token still gives audio: 8 calm frames, no crash."""
    ar = tts.model("autoregressive")
    saved = ar.mel_head.bias[STOP].item()
    with torch.no_grad():
        ar.mel_head.bias[STOP] = 50.0
    try:
        seen = spy_codes(tts, monkeypatch)
        wavs = tts.tts("Hello there.", k=2, seed=3, **FAST)
    finally:
        with torch.no_grad():
            ar.mel_head.bias[STOP] = saved  # exactly: later tests compare with a fresh instance
    assert (seen[0][:, 0] == STOP).all()
    assert tts.last_report.ar_steps < MAX  # the decoder ended early when every candidate had stopped
    assert [w.shape for w in wavs] == [(1, wav_len(8))] * 2


@pytest.mark.parametrize("max_tokens", [1, 2, 3])
def test_very_short_runs_reach_audio(tts, max_tokens):
    """1-3 codes: 4-13 mel frames through diffusion and UnivNet (reflect padding on few frames)."""
    wav = tts.tts("Hi.", seed=1, num_autoregressive_samples=2, diffusion_iterations=2, max_mel_tokens=max_tokens)
    assert wav.shape == (1, wav_len(max_tokens)) and torch.isfinite(wav).all()


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_diffusion_and_vocoder_on_tiny_latents(tts, frames):
    s = dict(diffusion_iterations=2, sampler="ddim", cond_free=True, cond_free_k=2.0, diffusion_temperature=1.0)
    mel = tts.latents_to_mel(torch.randn(1, frames, 64), torch.randn(1, 128), s, torch.Generator().manual_seed(0))
    assert mel.shape == (1, 100, frames * 4 * 24000 // 22050)
    with torch.no_grad():
        wav = tts.model("vocoder").inference(mel, generator=torch.Generator().manual_seed(0))
    assert wav.numel() == mel.shape[-1] * 256 and torch.isfinite(wav).all()


# ------------------------------------------------------------------------------------------ knobs
@pytest.mark.parametrize("knobs", [dict(typical_sampling=True), dict(typical_sampling=True, typical_mass=0.5),
                                   dict(top_k=0), dict(top_p=1.0), dict(temperature=0.01), dict(temperature=5.0),
                                   dict(repetition_penalty=1.0, length_penalty=2.0)],
                         ids=["typical", "typical-0.5", "top_k-0", "top_p-1", "temp-0.01", "temp-5", "penalties"])
def test_sampling_knobs_give_trimmed_audio(tts, monkeypatch, knobs):
    seen = spy_codes(tts, monkeypatch)
    wav = tts.tts("Sampling knobs.", seed=2, **{**FAST, "num_autoregressive_samples": 4}, **knobs)
    assert wav.shape == (1, expected_lengths(seen[0], tts.last_report.scores, 1)[0])
    assert torch.isfinite(wav).all()


def test_low_temperature_is_near_greedy(tts, monkeypatch):
    seen = spy_codes(tts, monkeypatch)
    tts.tts("Greedy.", seed=4, temperature=1e-3, **{**FAST, "num_autoregressive_samples": 3})
    raw = seen[0]
    assert torch.equal(raw[0], raw[1]) and torch.equal(raw[1], raw[2])


# ------------------------------------------------------------------------------------------ voices
def test_cvvp_half_blends_clvp_and_cvvp(tts, clips, monkeypatch):
    seen = spy_codes(tts, monkeypatch)
    wav = tts.tts("Voice ranking.", voice_samples=clips[:2], cvvp_amount=0.5, seed=5, **FAST)
    scores = torch.tensor(tts.last_report.scores)
    fixed = fix_autoregressive_output(seen[0].cpu(), STOP)
    text = tts.text_tokens("Voice ranking.")
    clvp_only, _ = tts.rank(text, fixed, 1, 0.0)
    _, _, mels = tts.get_conditioning_latents(clips[:2], return_mels=True, generator=torch.Generator().manual_seed(5))
    cvvp_only, _ = tts.rank(text, fixed, 1, 1.0, mels)
    assert torch.allclose(scores, 0.5 * clvp_only + 0.5 * cvvp_only, atol=1e-5)
    assert not torch.allclose(clvp_only, cvvp_only)
    assert wav.shape == (1, expected_lengths(seen[0], scores.tolist(), 1)[0])


@pytest.mark.parametrize("amount", [0.5, 1.0])
def test_cvvp_without_clips_falls_back_to_clvp(tts, amount):
    """Random voice / saved latents have no clips for CVVP: CLVP ranks alone (cvvp_amount=1 used to crash)."""
    latents = (torch.randn(1, 64), torch.randn(1, 128))
    a = tts.tts("No clips.", conditioning_latents=latents, cvvp_amount=amount, seed=6, **FAST)
    scores = list(tts.last_report.scores)
    b = tts.tts("No clips.", conditioning_latents=latents, cvvp_amount=0.0, seed=6, **FAST)
    assert scores == tts.last_report.scores and torch.equal(a, b)


def test_five_clips_of_different_lengths(tts, clips):
    ar, diff = tts.get_conditioning_latents(clips, generator=torch.Generator().manual_seed(0))
    assert ar.shape == (1, 64) and diff.shape == (1, 128)
    assert torch.isfinite(ar).all() and torch.isfinite(diff).all()
    wav = tts.tts("Five clips.", voice_samples=clips, seed=7, **FAST)
    assert wav.shape[0] == 1 and wav.shape[1] % 256 == 0 and torch.isfinite(wav).all()


def test_long_clip_is_cropped_from_the_seed(tts, clips):
    """A clip over 6 s is randomly cropped: the crop follows the generator, so the seed decides it."""
    long = [clips[0]]

    def latent(seed):
        return tts.get_conditioning_latents(long, generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(latent(1), latent(1))
    assert not torch.equal(latent(1), latent(2))
    # clips of at most 6 s are not cropped: no draw, the same latent whatever the seed
    short = [clips[2]]
    a = tts.get_conditioning_latents(short, generator=torch.Generator().manual_seed(1))[0]
    b = tts.get_conditioning_latents(short, generator=torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b)


def test_clip_under_one_second(tts, clips):
    wav = tts.tts("Short clip.", voice_samples=[clips[1]], seed=8, **FAST)
    assert wav.shape[1] > 0 and torch.isfinite(wav).all()


# ------------------------------------------------------------------------------------------ text
def test_text_at_the_token_limit_and_over(tts):
    from tortoise_xpu.text.tokenizer import TextTooLongError, max_text_length

    limit = max_text_length()
    text = "ab " * ((limit - 2) // 3) + "ab"
    n = len(tts.tokenizer.encode(text))
    text += "a" * (limit - n)
    assert len(tts.tokenizer.encode(text)) == limit
    wav = tts.tts(text, seed=1, num_autoregressive_samples=2, diffusion_iterations=2, max_mel_tokens=12)
    assert torch.isfinite(wav).all()
    with pytest.raises(TextTooLongError, match=f"at most {limit} tokens") as err:
        tts.tts(text + "a", seed=1, num_autoregressive_samples=2, diffusion_iterations=2, max_mel_tokens=12)
    assert isinstance(err.value, UserError)


# ------------------------------------------------------------------------------------------ seeds
def test_seed_reproducible_across_instances(stopping_dir, tts, clips):
    from tortoise_xpu import TextToSpeech

    other = TextToSpeech(models_dir=stopping_dir, device="cpu")
    run = dict(voice_samples=[clips[0], clips[3]], k=2, seed=9, **FAST)
    a = tts.tts("Same on both.", **run)
    b = other.tts("Same on both.", **run)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape != a[1].shape or not torch.equal(a[0], a[1])


# ------------------------------------------------------------------------------------------ long form
TINY_CLI = ["--preset", "ultra_fast", "--num-autoregressive-samples", "4", "--diffusion-iterations", "2",
            "--max-mel-tokens", str(MAX), "--device", "cpu", "--seed", "3"]


def test_speak_splits_long_text_and_joins_the_parts(stopping_dir, tmp_path):
    from tortoise_xpu import TextToSpeech
    from tortoise_xpu.audio.io import load_audio
    from tortoise_xpu.cli import main
    from tortoise_xpu.text.split import split_and_recombine_text

    text = " ".join(["This sentence is one of several that make a longer text."] * 6)  # ~350 chars
    chunks = split_and_recombine_text(text)
    assert len(chunks) >= 2
    out = tmp_path / "long.wav"
    assert main(["speak", text, "--voice", "random", "--models-dir", str(stopping_dir), "-o", str(out), "-q",
                 "--float32", *TINY_CLI]) == 0
    wav = load_audio(out, 24000, check=False).reshape(-1)
    t = TextToSpeech(models_dir=stopping_dir, device="cpu")
    settings = dict(num_autoregressive_samples=4, diffusion_iterations=2, max_mel_tokens=MAX)
    parts = [t.tts_with_preset(c, preset="ultra_fast", seed=3, **settings).reshape(-1) for c in chunks]
    assert wav.numel() == sum(p.numel() for p in parts)


def test_read_combines_chunks_of_different_lengths(tts, tmp_path):
    from tortoise_xpu.audio.io import load_audio, save_wav
    from tortoise_xpu.pipeline.longform import read_chunks

    chunks = ["First part.", "The second part is a little longer.", "Third."]
    made = {}

    def synthesize(text, seed):
        made[text] = tts.tts(text, seed=seed, **{**FAST, "num_autoregressive_samples": 4})
        return made[text]

    result = read_chunks(chunks, tmp_path / "book", synthesize,
                         lambda p, w: save_wav(p, w, 24000, subtype="FLOAT"),
                         lambda p: load_audio(p, 24000, check=False), {"x": 1}, seed=4)
    combined = load_audio(result.combined, 24000, check=False).reshape(-1)
    want = torch.cat([made[c].reshape(-1) for c in chunks])
    assert combined.numel() == want.numel()
    assert torch.allclose(combined, want, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "static"])
def test_stream_ends_at_the_stop_code_between_its_reads(tts, mode, monkeypatch):
    """The stream reads codes back every 16 steps or per chunk, so the device runs past a stop: those
    steps are dropped, and codes, latents and audio end exactly at the stop code, in every decode mode."""
    from tortoise_xpu.pipeline.stream import StreamStats

    from tortoise_xpu import TextToSpeech

    tts = TextToSpeech(models_dir=tts.models_dir, device="cpu", decode_mode=mode)
    hifi = tts.model("hifidecoder")
    cond = (torch.randn(1, 64, generator=torch.Generator().manual_seed(2)), torch.zeros(1, 128))
    text = tts.text_tokens("Stop where the model stops.")
    stopped_mid_block = 0
    seen = []
    real = hifi.latent_frames  # the windowed stream vocoder interpolates every latent so far, then decodes a window
    for seed in range(6):
        stats = StreamStats()
        hifi.latent_frames = lambda latents: seen.append(latents) or real(latents)
        try:
            audio = list(tts.tts_stream("Stop where the model stops.", conditioning_latents=cond, seed=seed,
                                        max_mel_tokens=MAX, stream_chunk_size=7, first_buffer=0, stats=stats))
        finally:
            del hifi.latent_frames
        assert tts.last_report.decode_mode == mode
        n = len(stats.codes)
        assert tts.last_report.ar_steps == n
        assert seen[-1].shape[1] == n  # the last vocoder pass saw one latent per kept code, no more
        assert sum(a.numel() for a in audio) == stats.samples == int(int(4 * n) * 24000 / 22050) * 256
        codes = tts.sample_codes(cond[0], text, 1, SamplingSettings(top_k=50), MAX,
                                 torch.Generator().manual_seed(seed))[0].tolist()
        if STOP in codes:
            assert stats.stopped and stats.codes == codes[:codes.index(STOP) + 1]
            stopped_mid_block += n % 7 != 0 and n % 16 != 0
        else:
            assert not stats.stopped and stats.codes == codes
    assert stopped_mid_block  # the case this test is for happened
