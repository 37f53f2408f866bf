"""Streaming speech: audio in chunks while the AR model is still sampling codes.

The original's ``api_fast.TextToSpeech.tts_stream`` path, on our decode engine: one AR
candidate (no CLVP ranking, no diffusion) sampled by ``DecodeEngine.iter_decode`` (device graphs
where the Policy has them; the codes are read back once per chunk or every ``STOP_CHECK_EVERY``
codes, never per step, and steps run past the stop code are dropped), and a HiFi-GAN decoder that turns the AR
model's final-norm hidden states straight into 24 kHz audio, conditioned on the 1024-d
AR voice latent.  The decoder runs on a bounded window per chunk
(:class:`~tortoise_xpu.pipeline.stream_vocoder.StreamVocoder`: the new frames plus its
receptive field on each side) and emits only audio that later codes cannot change, so the
chunks joined are exactly the full decode of the final latent sequence, with no crossfade
(``overlap_wav_len`` is accepted for the original's signature and unused).

Timing of the chunks: the first after ``max(stream_chunk_size, first_buffer)`` codes (20 and 20 by
default; the original hard-codes 60 and defaults to 40), the next after ``stream_chunk_size`` more,
then chunks twice the last up to ``max_stream_chunk_size`` (80 by default; the original's fixed
chunks when it is no larger than ``stream_chunk_size``), and the rest when the stop token comes.
Each chunk holds back its last ~0.23 s (the decoder's receptive field plus the interpolation's
edge) until the next chunk or the end; unlike the original, nothing is dropped at the end.

Random draws follow :meth:`TextToSpeech.tts` with one AR sample: same seed, same voice
and settings → the same codes as ``tts(num_autoregressive_samples=1)``.

:func:`stream_speech` is a composition of the stages (pipeline/conditioning.py for the AR voice
latent, the AR model and a decode engine from the model store, pipeline/stream_vocoder.py's
windowed HiFi-GAN decode per chunk) on one run's context; it knows nothing of ``TextToSpeech``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from tortoise_xpu.errors import UserError
from tortoise_xpu.pipeline import conditioning
from tortoise_xpu.pipeline.context import RunContext
from tortoise_xpu.pipeline.decode import STOP_CHECK_EVERY
from tortoise_xpu.pipeline.sampling import SamplingSettings, uniforms
from tortoise_xpu.pipeline.store import weight_dtype
from tortoise_xpu.pipeline.stream_vocoder import StreamVocoder

from tortoise_xpu.pipeline.vocoding import SAMPLE_RATE

__all__ = ["CHUNK_SIZE", "FIRST_BUFFER", "MAX_CHUNK_SIZE", "SAMPLE_RATE", "StreamOptions", "StreamStats", "stream_speech", "voice_latent"]

#: Codes per chunk and before the first chunk at the least.  The original waits for 60 codes, then
#: cuts every 40, because each chunk re-decodes everything so far and crossfades into the last; the
#: windowed decoder's chunks join exactly whatever their size, so ours are smaller: first audio after
#: 20 codes (1.4 s instead of 3.4–4.2 s on a 2-core Zen 4, same total; docs/performance.md).
CHUNK_SIZE = 20
FIRST_BUFFER = 20
#: Chunks after the first double in size up to this many codes: each window re-decodes the
#: decoder's receptive field on both sides (15 + 15 frames against 80 for 20 codes), so fewer,
#: larger windows cost less; the first audio still comes after ``FIRST_BUFFER`` codes.  A value no
#: larger than ``chunk_size`` gives the original's fixed chunks.
MAX_CHUNK_SIZE = 80


@dataclass
class StreamStats:
    """What one stream did; pass one to :func:`tts_stream` to have it filled in."""

    first_audio_s: float | None = None  # from the first ``next()`` to the first chunk
    chunks: int = 0
    samples: int = 0
    codes: list[int] = field(default_factory=list)  # the sampled codes, stop token included if reached
    stopped: bool = False  # the stop token came (else max_mel_tokens ran out)


@dataclass(frozen=True)
class StreamOptions:
    """When chunks are cut: the first after ``max(chunk_size, first_buffer)`` codes, the next after
    ``chunk_size`` more, each later one twice its predecessor up to ``max_chunk_size`` codes
    (``chunk_size <= 0``: one chunk at the end; ``max_chunk_size <= chunk_size``: every chunk
    ``chunk_size``, as the original); ``overlap`` is the original's crossfade length, accepted and
    unused (the windowed decoder needs no crossfade)."""

    chunk_size: int = CHUNK_SIZE
    overlap: int = 1024
    first_buffer: int = FIRST_BUFFER
    max_chunk_size: int = MAX_CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.overlap < 0 or self.first_buffer < 0 or self.max_chunk_size < 0:
            raise UserError("overlap_wav_len, first_buffer and max_stream_chunk_size must be >= 0")

    def next_size(self, last: int) -> int:
        """Codes in the chunk after one of ``last`` codes (the first after the first chunk: ``chunk_size``)."""
        return min(max(2 * last, self.chunk_size), max(self.max_chunk_size, self.chunk_size))


def voice_latent(store: Any, ctx: RunContext, voice_samples: Sequence[torch.Tensor] | None,
                 conditioning_latents: Any) -> torch.Tensor:
    """The AR voice latent (1, D) of a stream, drawing from ``ctx.generator`` exactly as ``tts()`` does:
    the AR half of the conditioning stage for clips (the diffusion model is never loaded), the
    checked AR latent of saved latents, or the random-voice generators."""
    if voice_samples is not None:
        return conditioning.ar_conditioning(store, ctx, voice_samples)[0]
    if conditioning_latents is not None:
        return conditioning.check_latents(store, ctx, conditioning_latents, ar_only=True)[0]
    return conditioning.random_latents(store, ctx)[0]


def stream_speech(store: Any, ctx: RunContext, text_tokens: torch.Tensor,
                  voice_samples: Sequence[torch.Tensor] | None, conditioning_latents: Any,
                  sampling: SamplingSettings, max_tokens: int, force: bool = False,
                  options: StreamOptions = StreamOptions(), stats: StreamStats | None = None) -> Iterator[torch.Tensor]:
    """Speak ``text_tokens`` as a stream of 24 kHz audio chunks: 1-D float32 CPU tensors.

    Args:
        store: the model store (its models folder needs ``hifidecoder.pth``).
        ctx: the run's context (Policy for one candidate, generator seeded by the run's seed,
            report, progress, cancellation, checked at every AR step).
        text_tokens: (1, T) token ids as ``TextToSpeech.text_tokens`` gives them.
        voice_samples / conditioning_latents: the voice, as for ``tts()`` (only the AR latent is
            used); neither means a random voice.
        sampling / max_tokens: the AR settings and code budget; ``force`` ignores the stop token.
        options: the chunk schedule (``overlap`` is unused: the windowed decoder needs no crossfade).
        stats: a :class:`StreamStats` to fill in (time to first audio, codes).

    Nothing runs until the first ``next()``: the request was checked by the caller.
    """
    return _chunks(store, ctx, text_tokens, voice_samples, conditioning_latents, sampling, max_tokens, force,
                   options, stats if stats is not None else StreamStats())


def _chunks(store: Any, ctx: RunContext, text_tokens: torch.Tensor, voice_samples, conditioning_latents,
            sampling: SamplingSettings, max_tokens: int, force: bool, options: StreamOptions,
            stats: StreamStats) -> Iterator[torch.Tensor]:
    started = time.perf_counter()
    report = ctx.report
    store.backend.reset_peak_memory()
    dev = store.device
    with ctx.timed("conditioning"):
        ar_latent = voice_latent(store, ctx, voice_samples, conditioning_latents).to(dev)
    u = uniforms(ctx.generator, max_tokens, 1).t().contiguous()  # the draws tts() makes for a single candidate
    chunk_size = options.chunk_size
    due = max(chunk_size, options.first_buffer) if chunk_size > 0 else None
    step = 0  # the size of the last regular chunk (0: none cut yet)
    n = 0  # codes kept (the stop code included)
    with store.on_device("autoregressive", ctx) as ar, store.on_device("hifidecoder", ctx) as hifi, \
            store.decode_engine(ctx.policy) as engine:
        stop = ar.config.stop_mel_token
        steps = engine.iter_decode(ar, ar_latent, text_tokens.to(dev), u, sampling, max_tokens, force,
                                   cache_dtype=weight_dtype(ar), keep_hidden=True)
        report.decode_mode = engine.mode
        decoded = 0  # codes the last vocoder pass covered
        vocoder = StreamVocoder(hifi, ar_latent)
        done = False
        try:
            while not done:
                with ctx.timed("ar"), torch.no_grad():
                    # Up to the next chunk, reading the codes back every STOP_CHECK_EVERY steps only:
                    # the device runs ahead without a sync per code (graphs where the policy has them).
                    target = decoded + due if due is not None else max_tokens
                    while True:
                        ran, st = next(steps)
                        ctx.step("ar", ran, max_tokens)
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
                with ctx.timed("hifigan"), torch.no_grad():
                    # (1, k, D): the state behind each new code; copied, the engine owns its buffer
                    chunk = vocoder.push(st.hidden[:, decoded:n].clone())
                    if done:
                        chunk = torch.cat([chunk, vocoder.finish()])
                decoded = n
                # chunk_size after the first chunk, then doubling (StreamOptions.next_size)
                step = options.next_size(step) if step else chunk_size
                due = step if chunk_size > 0 else None
                if chunk.numel():
                    if stats.first_audio_s is None:
                        stats.first_audio_s = time.perf_counter() - started
                    stats.chunks += 1
                    stats.samples += chunk.numel()
                    report.audio_seconds = stats.samples / SAMPLE_RATE
                    yield chunk
        finally:
            steps.close()
            report.decode_mode = engine.mode
    report.ar_steps = n
    report.peak_memory_bytes = store.backend.peak_memory()
