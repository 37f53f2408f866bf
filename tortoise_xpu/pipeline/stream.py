"""Streaming speech: audio in chunks while the AR model is still sampling codes.

The original's ``api_fast.TextToSpeech.tts_stream`` path, on our decode engine: one AR
candidate (no CLVP ranking, no diffusion) sampled by ``DecodeEngine.iter_decode`` (device graphs
where the Policy has them; the codes are read back once per chunk or every ``STOP_CHECK_EVERY``
codes, never per step, and steps run past the stop code are dropped), and a HiFi-GAN decoder that turns the AR
model's final-norm hidden states straight into 24 kHz audio, conditioned on the 1024-d
AR voice latent.  The decoder sees the *whole* latent sequence so far each time (its
output near the end changes as more context arrives), so only the new part is emitted,
crossfaded into what was already sent over ``overlap_wav_len`` samples.

Timing of the chunks, as the original: the first after ``max(stream_chunk_size, 60)``
codes, then every ``stream_chunk_size`` codes, and the rest when the stop token comes.
Unlike the original, the final chunk includes the last ``overlap_wav_len`` samples (the
original holds them back for a crossfade that never comes), so the chunks add up to the
full decode of the final latent sequence.

Random draws follow :meth:`TextToSpeech.tts` with one AR sample: same seed, same voice
and settings → the same codes as ``tts(num_autoregressive_samples=1)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from tortoise_xpu.errors import UserError
from tortoise_xpu.pipeline.decode import STOP_CHECK_EVERY
from tortoise_xpu.pipeline import validate
from tortoise_xpu.pipeline.presets import resolve_settings
from tortoise_xpu.pipeline.sampling import SamplingSettings, uniforms

__all__ = ["tts_stream", "Crossfader", "StreamStats", "FIRST_BUFFER"]

FIRST_BUFFER = 60  # codes before the first chunk at the least (the original's first_buffer)


@dataclass
class StreamStats:
    """What one stream did; pass one to :func:`tts_stream` to have it filled in."""

    first_audio_s: float | None = None  # from the first ``next()`` to the first chunk
    chunks: int = 0
    samples: int = 0
    codes: list[int] = field(default_factory=list)  # the sampled codes, stop token included if reached
    stopped: bool = False  # the stop token came (else max_mel_tokens ran out)


class Crossfader:
    """Turns successive decodes of a growing sequence into the new audio of each one.

    Each :meth:`push` gets the full decode so far (S,), returns what it adds, and holds back
    its last ``overlap`` samples; the next push blends the held samples linearly into the
    new decode's samples at the same positions (old fading out, new fading in).  With
    ``final`` nothing is held back.  While the decodes agree on their common part, the
    chunks joined equal the last decode exactly.
    """

    def __init__(self, overlap: int = 1024):
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        self.overlap = int(overlap)
        self.emitted = 0  # samples already returned
        self._held: torch.Tensor | None = None  # previous decode's samples from ``emitted`` on

    def push(self, wav: torch.Tensor, final: bool = False) -> torch.Tensor:
        new = wav.reshape(-1)[self.emitted:].clone()
        held = self._held
        if held is not None and held.numel() and new.numel():
            n = min(held.numel(), new.numel())
            fade_in = torch.linspace(0.0, 1.0, n, device=new.device, dtype=new.dtype)
            new[:n] = held[:n].to(new) * (1 - fade_in) + new[:n] * fade_in
        keep = new.numel() if final else max(new.numel() - self.overlap, 0)
        self._held = None if final else new[keep:]
        self.emitted += keep
        return new[:keep]


def _ar_voice_latent(tts, voice_samples, conditioning_latents, generator: torch.Generator) -> torch.Tensor:
    """The AR voice latent (1, D), drawing from ``generator`` exactly as ``tts()`` does."""
    if voice_samples is not None:
        # The AR half of TextToSpeech.get_conditioning_latents: streaming never loads the diffusion model.
        from tortoise_xpu.audio.conditioning import prepare_ar_clips
        from tortoise_xpu.audio.mel import ar_mel

        clips = [voice_samples] if isinstance(voice_samples, torch.Tensor) else list(voice_samples)
        if not clips:
            raise UserError("no voice clips given")
        use_complex = tts.policy(1).use_complex_stft
        dev = tts.device
        with torch.no_grad():
            mels = torch.stack([ar_mel(c.to(dev), tts.mel_norms.to(dev), use_complex=use_complex)
                                for c in prepare_ar_clips(clips, generator)], dim=1)
            with tts._on_device("autoregressive") as ar:
                return ar.get_conditioning(mels.to(tts._stage_dtype("autoregressive"))).float()
    if conditioning_latents is not None:
        latent = conditioning_latents[0] if isinstance(conditioning_latents, (tuple, list)) else conditioning_latents
        latent = latent.detach().float().reshape(1, -1)
        width = tts.model("autoregressive").config.model_dim
        if latent.shape[1] != width:
            raise UserError(f"an AR conditioning latent of width {latent.shape[1]} does not fit this AR model "
                            f"({width}): it was made with other model files")
        return latent
    ar_latent, _ = tts.get_random_conditioning_latents(generator=generator)
    return ar_latent


def tts_stream(tts, text: str, voice_samples: Sequence[torch.Tensor] | None = None,
               conditioning_latents: tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None = None, *,
               seed: int | None = None, stream_chunk_size: int = 40, overlap_wav_len: int = 1024,
               first_buffer: int = FIRST_BUFFER, force_tokens: int | None = None, stats: StreamStats | None = None,
               **settings: Any) -> Iterator[torch.Tensor]:
    """Speak ``text`` as a stream of 24 kHz audio chunks: 1-D float32 CPU tensors.

    Args:
        tts: the :class:`~tortoise_xpu.pipeline.tts.TextToSpeech` whose models, backend and policy run it
            (its models folder needs ``hifidecoder.pth``).
        voice_samples / conditioning_latents: the voice, as for ``tts()`` (only the AR latent is used);
            neither means a random voice.
        seed: one seed, one result (drawn from the clock when None).
        stream_chunk_size: codes per chunk after the first (``<= 0``: one chunk at the end).
        overlap_wav_len: crossfade length in samples between chunks.
        first_buffer: the first chunk waits for ``max(stream_chunk_size, first_buffer)`` codes.
        force_tokens: sample exactly this many codes, ignoring the stop token (benchmarks).
        stats: a :class:`StreamStats` to fill in (time to first audio, codes).
        settings: ``tts()``'s settings; the AR ones (temperature, top_p, top_k — 50 by default, as
            the original's stream —, repetition_penalty, typical_sampling, typical_mass,
            max_mel_tokens) are used, the candidate, ranking and diffusion ones do not apply.

    Raises:
        UserError: bad settings, or ``[bracketed]`` text while redaction is on (a stream cannot cut
            words it has already played; construct with ``enable_redaction=False`` to speak them).
    """
    validate.check_tts_inputs(text, voice_samples, None, 1, seed, force_tokens)  # latents may be the AR one alone
    if overlap_wav_len < 0 or first_buffer < 0:
        raise UserError("overlap_wav_len and first_buffer must be >= 0")
    s, sampling, max_tokens = resolve_settings(settings, force_tokens)
    if tts.enable_redaction and ("[" in text or "]" in text):
        raise UserError("streaming cannot cut [bracketed] text from audio it has already played; remove the "
                        "brackets, or turn redaction off (--disable-redaction / enable_redaction=False) to speak them")
    text_tokens = tts.text_tokens(text)
    seed = int(time.time()) if seed is None else int(seed)
    return _stream(tts, text_tokens, voice_samples, conditioning_latents, seed, sampling, max_tokens,
                   bool(force_tokens), int(stream_chunk_size), int(overlap_wav_len), int(first_buffer),
                   stats if stats is not None else StreamStats())


def _stream(tts, text_tokens: torch.Tensor, voice_samples, conditioning_latents, seed: int,
            sampling: SamplingSettings, max_tokens: int, force: bool, chunk_size: int, overlap: int,
            first_buffer: int, stats: StreamStats) -> Iterator[torch.Tensor]:
    # A generator of its own, so that the checks above raise at the call, not at the first next().
    from tortoise_xpu.pipeline.tts import SAMPLE_RATE, RunReport

    started = time.perf_counter()
    tts._candidates = 1
    tts.last_report = RunReport(seed=seed, candidates=1, tokens=max_tokens, policy=tts.policy(1).to_dict())
    tts.backend.reset_peak_memory()
    gen = torch.Generator().manual_seed(seed)
    dev = tts.device
    with tts._timed("conditioning"):
        ar_latent = _ar_voice_latent(tts, voice_samples, conditioning_latents, gen).to(dev)
    u = uniforms(gen, max_tokens, 1).t().contiguous()  # the draws tts() makes for a single candidate
    fader = Crossfader(overlap)
    due = max(chunk_size, first_buffer) if chunk_size > 0 else None
    engine = tts._stream_decoder()
    per_stage = not tts.policy(1).resident
    n = 0  # codes kept (the stop code included)
    with tts._on_device("autoregressive") as ar, tts._on_device("hifidecoder") as hifi:
        stop = ar.config.stop_mel_token
        steps = engine.iter_decode(ar, ar_latent, text_tokens.to(dev), u, sampling, max_tokens, force,
                                   cache_dtype=next(ar.parameters()).dtype, keep_hidden=True)
        decoded = 0  # codes the last vocoder pass covered
        done = False
        try:
            while not done:
                with tts._timed("ar"), torch.no_grad():
                    # Up to the next chunk, reading the codes back every STOP_CHECK_EVERY steps only:
                    # the device runs ahead without a sync per code (graphs where the policy has them).
                    target = decoded + due if due is not None else max_tokens
                    while True:
                        ran, st = next(steps)
                        tts._report("ar", ran, max_tokens)
                        if ran < min(target, max_tokens) and ran % STOP_CHECK_EVERY:
                            continue
                        codes = st.codes[0, n:ran].tolist()
                        if stop in codes:  # the steps run past the stop code are dropped
                            codes = codes[:codes.index(stop) + 1]
                        stats.codes.extend(codes)
                        n += len(codes)
                        stats.stopped = bool(codes) and codes[-1] == stop
                        done = stats.stopped or n == max_tokens
                        if done or n >= target:
                            break
                with tts._timed("hifigan"), torch.no_grad():
                    seq = st.hidden[:, :n].to(next(hifi.parameters()).dtype)  # (1, n, D): the state behind each code
                    wav = hifi.inference(seq, g=ar_latent).float().reshape(-1)
                    chunk = fader.push(wav, final=done).cpu()
                decoded = n
                due = chunk_size if chunk_size > 0 else None
                if chunk.numel():
                    if stats.first_audio_s is None:
                        stats.first_audio_s = time.perf_counter() - started
                    stats.chunks += 1
                    stats.samples += chunk.numel()
                    tts.last_report.audio_seconds = stats.samples / SAMPLE_RATE
                    yield chunk
        finally:
            steps.close()
            if per_stage:
                engine.release()  # per-stage mode: the KV cache and graphs leave with the model
    tts.last_report.ar_steps = n
    tts.last_report.peak_memory_bytes = tts.backend.peak_memory()
