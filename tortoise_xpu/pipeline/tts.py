"""``TextToSpeech``: the original's API, as two short compositions of the pipeline's stages.

text → BPE tokens → voice latents (AR 1024-d, diffusion 2048-d) → AR sampling of N
candidates over a KV cache → fix stop tokens → CLVP ranking (optionally CVVP) → AR
latents pass for the best k → trim after the calm-token run → diffusion (p / ddim /
dpm++2m) → UnivNet at 24 kHz (``tts``); or one candidate decoded by HiFi-GAN while it is
sampled (``tts_stream``, pipeline/stream.py).

The models live in a :class:`~tortoise_xpu.pipeline.store.ModelStore` (loaded once, shared);
each call builds its own :class:`~tortoise_xpu.pipeline.context.RunContext` (settings, Policy,
CPU generator, report, cancellation), so one ``TextToSpeech`` serves several threads at once and
a seed gives the same audio alone or among concurrent calls.  Nothing here branches on a device
type: the Backend says where tensors live, the Policy which dtype each stage runs in, how many
candidates one AR batch holds and how the AR decode runs.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from tortoise_xpu.errors import UserError
from tortoise_xpu.pipeline import ar_sampling, conditioning, diffusion, latents, ranking, validate, vocoding
from tortoise_xpu.pipeline.codes import fix_autoregressive_output, trim_length
from tortoise_xpu.pipeline.context import Progress, RunContext, RunReport
from tortoise_xpu.pipeline.presets import DEFAULT_PRESET, TTS_DEFAULTS, preset_settings, resolve_settings
from tortoise_xpu.pipeline.sampling import SamplingSettings
from tortoise_xpu.pipeline.store import ModelStore
from tortoise_xpu.pipeline.stream import CHUNK_SIZE, FIRST_BUFFER, MAX_CHUNK_SIZE, StreamOptions, StreamStats, stream_speech
from tortoise_xpu.audio.rates import AR_SAMPLE_RATE, SAMPLE_RATE

__all__ = ["AR_SAMPLE_RATE", "SAMPLE_RATE", "Progress", "RunReport", "TextToSpeech"]

#: Candidate count of the Policy that decides the store's residency and serves ``model(name)``
#: (the presets' default).
DEFAULT_CANDIDATES = 16

# Models in the order the stages of ``tts`` use them (conditioning: AR then diffusion; sampling;
# ranking; latents; diffusion; vocoder): per-stage mode prefetches the next one during each stage.
STAGE_PLAN = ("autoregressive", "diffusion", "autoregressive", "clvp", "autoregressive", "diffusion", "vocoder")


class TextToSpeech:
    """Tortoise text-to-speech, with the original's API; safe to call from several threads at once.

    Args:
        models_dir: folder with the model files (default ``$TORTOISE_XPU_MODELS`` or the user cache).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``rocm``, ``xpu``, ``mps``, ``directml``, ``dml:0``
            (or a Backend instance).
        dtype: one dtype for every stage (overrides the backend policy's choice).
        batch_size: AR candidates per batch (overrides the policy).
        low_vram / high_vram: move each model to the device only for its stage / keep all resident.
        graph_capture: allow (True) or forbid (False) device graphs in the AR decode.
        enable_redaction: allow ``[bracketed]`` prompt text to be cut from the audio (needs the
            ``redaction`` extra); off means brackets are spoken as written.
        tokenizer_basic: the basic text cleaners instead of the English ones.
        auto_download: fetch model files missing from ``models_dir`` from the asset registry's
            sources on first use (as the original does); off, a missing file is an error that
            names the download command.
        progress: ``progress(stage, done, total)`` called during long stages.
        checkpoints: fine-tuned files per network, e.g. ``{"autoregressive": "ft.pth"}``, loaded
            beside the official rest and checked as strictly.
        decode_mode / compile: force the AR decode mode (``eager``, ``static``, ``graph``) and wrap
            its static step in ``torch.compile`` (benchmarks; default: the Policy's choice and
            ``$TORTOISE_XPU_DECODE`` / ``$TORTOISE_XPU_COMPILE``).
        ar_int8: int8 weights for the AR model's linears: None lets the policy decide (CPUs with
            int8 dot-product instructions where measured faster), True/False forces it.

    ``last_report`` is the :class:`RunReport` of the latest ``tts``/``tts_stream`` call made by the
    *calling thread* (each thread sees its own); a run's report is created when the call starts
    and filled in as it goes.
    """

    def __init__(self, models_dir: str | Path | None = None, device: Any = "auto", dtype: str | torch.dtype | None = None,
                 *, batch_size: int | None = None, low_vram: bool = False, high_vram: bool = False,
                 graph_capture: bool | None = None, enable_redaction: bool = True, tokenizer_basic: bool = False,
                 auto_download: bool = True, progress: Progress | None = None,
                 checkpoints: Mapping[str, str | Path] | None = None, decode_mode: str | None = None,
                 compile: bool | str | None = None, ar_int8: bool | None = None):
        from tortoise_xpu import assets
        from tortoise_xpu.backends import resolve
        from tortoise_xpu.backends.policy import Overrides

        self.backend = resolve(device)
        self.device = self.backend.device
        self.models_dir = assets.models_dir(models_dir)
        self.overrides = Overrides(dtype=dtype, batch_size=batch_size, low_vram=low_vram, high_vram=high_vram,
                                   graph_capture=graph_capture, decode_mode=decode_mode, compile=compile,
                                   ar_int8=ar_int8)
        self.enable_redaction = enable_redaction
        self.auto_download = auto_download
        self.progress = progress
        self.tokenizer_basic = tokenizer_basic
        self.checkpoints = ModelStore.check_overrides(checkpoints or {})  # a bad path fails here, not mid-run
        self._lock = threading.RLock()  # guards the Policy cache and the store's creation
        self._policies: dict[int, Any] = {}
        self._resident: bool | None = None
        self._store: ModelStore | None = None
        self._local = threading.local()

    # ------------------------------------------------------------------------------------ set-up
    def _make_policy(self, candidates: int, **extra: Any):
        from tortoise_xpu.backends.policy import policy_for

        fields = {f.name: getattr(self.overrides, f.name) for f in dataclasses.fields(self.overrides)}
        return policy_for(self.backend, candidates=candidates, **{**fields, **extra})

    def _residency(self) -> bool:
        """The store's residency: the flags', else the Policy of the default candidate count's."""
        with self._lock:
            if self._resident is None:
                ov = self.overrides
                self._resident = (False if ov.low_vram else True if ov.high_vram
                                  else self._make_policy(DEFAULT_CANDIDATES).resident)
            return self._resident

    def policy(self, candidates: int = DEFAULT_CANDIDATES):
        """The Policy for a run of ``candidates`` AR samples (computed once per count, before loading;
        its residency is the store's)."""
        with self._lock:
            if candidates not in self._policies:
                self._policies[candidates] = self._make_policy(candidates, resident=self._residency())
            return self._policies[candidates]

    @property
    def store(self) -> ModelStore:
        """The model store every run of this object shares (made on first use)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = ModelStore(self.backend, self.models_dir, resident=self._residency(),
                                             checkpoints=self.checkpoints, auto_download=self.auto_download,
                                             download_progress=self.progress is not None,
                                             tokenizer_basic=self.tokenizer_basic)
        return self._store

    def checkpoint_overrides(self) -> dict[str, str]:
        """The fine-tuned files in use instead of official ones, file name -> path (``--json`` names them)."""
        return {file: str(path) for file, path in self.checkpoints.items()}

    @property
    def tokenizer(self):
        return self.store.tokenizer

    @property
    def mel_norms(self) -> torch.Tensor:
        return self.store.mel_norms

    def model(self, name: str) -> torch.nn.Module:
        """The loaded model ``name`` (registry names: autoregressive, clvp, diffusion, vocoder, ...)."""
        return self.store.model(name, self.policy())

    def load_models(self, names: Sequence[str] | None = None, candidates: int | None = None) -> dict[str, float]:
        """Load the models of a run now rather than lazily in their stages; returns seconds per model.

        ``names`` default to the models every synthesis needs (autoregressive, clvp, diffusion,
        vocoder); add ``rlg_auto``/``rlg_diffuser`` for random voices or ``cvvp`` for CVVP ranking.
        ``candidates`` picks the policy (dtypes, preparation) the run will use.  Benchmarks call this
        so that model-load time is reported apart from synthesis.
        """
        policy = self.policy(int(candidates) if candidates is not None else DEFAULT_CANDIDATES)
        times = {}
        for name in names or ("autoregressive", "clvp", "diffusion", "vocoder"):
            start = time.perf_counter()
            self.store.model(name, policy)
            self.backend.synchronize()
            times[name] = time.perf_counter() - start
        return times

    # ------------------------------------------------------------------------------------ runs
    @property
    def last_report(self) -> RunReport:
        """The report of the calling thread's latest run (an empty one before its first)."""
        report = getattr(self._local, "report", None)
        if report is None:
            report = self._local.report = RunReport()
        return report

    @last_report.setter
    def last_report(self, report: RunReport) -> None:
        self._local.report = report

    def new_context(self, candidates: int = 1, generator: torch.Generator | None = None, *, seed: int = 0,
                    settings: Mapping[str, Any] | None = None, plan: Sequence[str] = (),
                    cancel: threading.Event | Callable[[], bool] | None = None,
                    report: RunReport | None = None) -> RunContext:
        """A run context on this object's Policy for ``candidates`` and its progress callback; the
        generator defaults to one seeded with ``seed``.  Stages called directly take one."""
        return RunContext(policy=self.policy(candidates), backend=self.backend, seed=seed,
                          generator=generator if generator is not None else torch.Generator().manual_seed(seed),
                          settings=dict(settings or {}), report=report if report is not None else RunReport(),
                          progress=self.progress, cancel=cancel, plan=list(plan))

    # ------------------------------------------------------------------------------------ voices
    def get_conditioning_latents(self, voice_samples: Sequence[torch.Tensor], return_mels: bool = False,
                                 generator: torch.Generator | None = None):
        """Voice latents from reference clips at 22.05 kHz: ``(ar (1, 1024), diffusion (1, 2048))``.

        Each clip is padded or randomly cropped (from ``generator``) to 6 s for the AR model, and
        its first 102400 samples at 24 kHz feed the diffusion model; latents are averaged over clips.
        With ``return_mels`` the AR conditioning mels (1, n, 80, T) are returned too (CVVP uses them).
        """
        ctx = self.new_context(DEFAULT_CANDIDATES, generator, plan=STAGE_PLAN[:2])
        ar_latent, diff_latent, ar_mels = conditioning.conditioning_latents(self.store, ctx, voice_samples)
        return (ar_latent, diff_latent, ar_mels) if return_mels else (ar_latent, diff_latent)

    def get_random_conditioning_latents(self, generator: torch.Generator | None = None):
        """A random voice from the random-latent generators: ``(ar (1, 1024), diffusion (1, 2048))``."""
        return conditioning.random_latents(self.store, self.new_context(DEFAULT_CANDIDATES, generator))

    # ------------------------------------------------------------------------------------ text
    def text_tokens(self, text: str) -> torch.Tensor:
        """Token ids as the original ``tts()`` feeds them: the BPE ids plus one trailing 0, (1, n+1)."""
        from tortoise_xpu.text.tokenizer import check_text_length, tts_text_tokens

        ids = self.tokenizer.encode(text) if text.strip() else []
        if not ids or not any(ch.isalnum() for ch in self.tokenizer.decode(ids)):
            raise UserError("the text is empty after cleaning; nothing to say")
        check_text_length(ids)
        return torch.tensor([tts_text_tokens(ids)], dtype=torch.long)

    # ------------------------------------------------------------------------------------ single stages
    def sample_codes(self, cond: torch.Tensor, text: torch.Tensor, num_samples: int, settings: SamplingSettings,
                     max_tokens: int, generator: torch.Generator, force_tokens: bool = False) -> torch.Tensor:
        """``num_samples`` candidate code sequences (num_samples, max_tokens), in OOM-safe batches
        (the AR sampling stage, pipeline/ar_sampling.py, on a context of its own)."""
        ctx = self.new_context(num_samples, generator)
        return ar_sampling.sample_codes(self.store, ctx, cond, text, num_samples, settings, max_tokens,
                                        bool(force_tokens))

    def rank(self, text: torch.Tensor, codes: torch.Tensor, k: int, cvvp_amount: float = 0.0,
             ar_mels: torch.Tensor | None = None, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (N,) of fixed candidates against the text, and the indices of the best ``k``."""
        return ranking.rank(self.store, self.new_context(DEFAULT_CANDIDATES), text, codes, k, cvvp_amount, ar_mels,
                            batch)

    def latents_to_mel(self, latents: torch.Tensor, diff_latent: torch.Tensor, s: Mapping[str, Any],
                       generator: torch.Generator) -> torch.Tensor:
        """Diffusion from AR latents (1, S, 1024) to a denormalised log-mel (1, 100, L), float32."""
        ctx = self.new_context(DEFAULT_CANDIDATES, generator, settings={**TTS_DEFAULTS, **s})
        return diffusion.latents_to_mel(self.store, ctx, latents, diff_latent)

    # ------------------------------------------------------------------------------------ synthesis
    def tts_with_preset(self, text: str, preset: str = DEFAULT_PRESET, **kwargs: Any):
        """``tts`` with a named preset's settings; keyword arguments override the preset."""
        passthrough = {k: kwargs.pop(k) for k in list(kwargs) if k not in TTS_DEFAULTS}
        return self.tts(text, **preset_settings(preset, **kwargs), **passthrough)

    def _check_request(self, text: str, k: int, settings: Mapping[str, Any], force_tokens: int | None):
        """Every check of a ``tts()`` request, before anything runs: ``(settings, sampling, max
        tokens, redaction parse or None)``; raises UserError with one line."""
        s, sampling, max_tokens = resolve_settings(settings, force_tokens)
        # resolve_settings checked every knob's range (validate.RANGES: samples >= 1, a known sampler)
        num_samples = int(s["num_autoregressive_samples"])
        if not 1 <= k <= num_samples:
            raise UserError(f"k (candidates returned) must be between 1 and num_autoregressive_samples "
                            f"({num_samples}), got {k}")
        validate.check_diffusion_settings(s)
        parsed = None
        if self.enable_redaction and ("[" in text or "]" in text):
            from tortoise_xpu.text.split import parse_redaction

            try:
                parsed = parse_redaction(text)
            except UserError as exc:
                raise UserError(f"{exc} (to read brackets aloud instead, turn redaction off: "
                                f"--disable-redaction)") from None
            if parsed.has_redaction and not any(ch.isalnum() for ch in parsed.spoken):
                raise UserError("all of the text is inside [brackets], which steer the voice but are cut from the "
                                "audio: nothing would be spoken. Put the words to say outside the brackets, or "
                                "turn redaction off (--disable-redaction) to read them aloud")
        return s, sampling, max_tokens, parsed

    def tts(self, text: str, voice_samples: Sequence[torch.Tensor] | None = None,
            conditioning_latents: tuple[torch.Tensor, torch.Tensor] | None = None, k: int = 1, *,
            seed: int | None = None, use_deterministic_seed: int | None = None, force_tokens: int | None = None,
            return_deterministic_state: bool = False, verbose: bool = False,
            cancel: threading.Event | Callable[[], bool] | None = None, **settings: Any):
        """Speak ``text``; returns a (1, S) 24 kHz float tensor, or a list of k of them when k > 1.

        ``voice_samples``: clips at 22.05 kHz; else ``conditioning_latents``; else a random voice.
        ``settings``: the original's knobs (``num_autoregressive_samples``, ``temperature``,
        ``top_p``, ``top_k``, ``repetition_penalty``, ``typical_sampling``, ``max_mel_tokens``,
        ``cvvp_amount``, ``diffusion_iterations``, ``cond_free``, ``cond_free_k``,
        ``diffusion_temperature``, ``sampler``), defaulting to the original ``tts()`` defaults.
        ``force_tokens``: generate exactly this many codes, ignoring the stop token (benchmarks).
        ``cancel``: an Event (or callable) that stops the run at its next step with ``Cancelled``.
        """
        seed = seed if seed is not None else use_deterministic_seed
        validate.check_tts_inputs(text, voice_samples, conditioning_latents, k, seed, force_tokens)
        s, sampling, max_tokens, parsed = self._check_request(text, k, settings, force_tokens)
        seed = int(time.time()) if seed is None else int(seed)
        num_samples = int(s["num_autoregressive_samples"])
        report = RunReport(seed=seed, candidates=num_samples, policy=self.policy(num_samples).to_dict(),
                           tokens=max_tokens)
        self.last_report = report
        ctx = self.new_context(num_samples, seed=seed, settings=s, cancel=cancel, report=report,
                               plan=STAGE_PLAN if voice_samples is not None else STAGE_PLAN[2:])
        self.backend.reset_peak_memory()
        store = self.store
        # The models read the whole text, brackets included (as the original); redaction cuts audio later.
        text_tokens = self.text_tokens(text)

        ar_mels = None
        with ctx.timed("conditioning"):
            if voice_samples is not None:
                ar_latent, diff_latent, ar_mels = conditioning.conditioning_latents(store, ctx, voice_samples)
            elif conditioning_latents is not None:
                ar_latent, diff_latent = conditioning.check_latents(store, ctx, conditioning_latents)
            else:
                ar_latent, diff_latent = conditioning.random_latents(store, ctx)
        with ctx.timed("ar"):
            codes = ar_sampling.sample_codes(store, ctx, ar_latent, text_tokens, num_samples, sampling, max_tokens,
                                             bool(force_tokens))
        with ctx.timed("clvp"):
            stop = store.model("autoregressive", ctx.policy).config.stop_mel_token
            codes = fix_autoregressive_output(codes.cpu(), stop)
            scores, best = ranking.rank(store, ctx, text_tokens, codes, k, float(s["cvvp_amount"]), ar_mels)
        report.scores = scores.tolist()
        best_codes = codes[best]
        with ctx.timed("latents"):
            lat = latents.ar_latents(store, ctx, ar_latent, text_tokens, best_codes)
        wavs = []
        for i in range(best_codes.shape[0]):
            with ctx.timed("diffusion"):
                mel = diffusion.latents_to_mel(store, ctx, lat[i:i + 1, :trim_length(best_codes[i])], diff_latent)
            with ctx.timed("vocoder"):
                wavs.append(vocoding.vocode(store, ctx, mel))
        if parsed is not None and parsed.has_redaction:
            from tortoise_xpu.pipeline import redaction

            with ctx.timed("redaction"):
                wavs = redaction.cut_brackets(store, ctx, wavs, parsed)
        report.audio_seconds = wavs[0].shape[-1] / SAMPLE_RATE
        report.peak_memory_bytes = self.backend.peak_memory()
        result = wavs[0] if len(wavs) == 1 else wavs
        if return_deterministic_state:
            return result, (seed, text, voice_samples, conditioning_latents)
        return result

    # ------------------------------------------------------------------------------------ streaming
    def tts_stream(self, text: str, voice_samples: Sequence[torch.Tensor] | None = None,
                   conditioning_latents: tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None = None, *,
                   seed: int | None = None, stream_chunk_size: int = CHUNK_SIZE, overlap_wav_len: int = 1024,
                   first_buffer: int = FIRST_BUFFER, max_stream_chunk_size: int = MAX_CHUNK_SIZE,
                   force_tokens: int | None = None, stats: StreamStats | None = None,
                   cancel: threading.Event | Callable[[], bool] | None = None, **settings: Any) -> Iterator[torch.Tensor]:
        """Speak ``text`` as a generator of 24 kHz audio chunks (1-D float32 CPU tensors).

        One AR candidate decoded by the HiFi-GAN decoder as it is sampled (no CLVP, no diffusion),
        like the original's ``api_fast`` stream (pipeline/stream.py; the models folder needs
        ``hifidecoder.pth``).

        Args:
            voice_samples / conditioning_latents: the voice, as for ``tts()`` (only the AR latent is
                used); neither means a random voice.
            seed: one seed, one result (drawn from the clock when None).
            stream_chunk_size: codes per chunk after the first (``<= 0``: one chunk at the end).
            overlap_wav_len: the original's crossfade length in samples; accepted and unused (the windowed
                decoder's chunks join without a crossfade).
            first_buffer: the first chunk waits for ``max(stream_chunk_size, first_buffer)`` codes.
            max_stream_chunk_size: later chunks double up to this many codes (fewer decoder windows);
                ``<= stream_chunk_size``: fixed chunks, as the original.
            force_tokens: sample exactly this many codes, ignoring the stop token (benchmarks).
            stats: a :class:`~tortoise_xpu.pipeline.stream.StreamStats` to fill in (time to first audio, codes).
            cancel: an Event (or callable) that stops the stream at its next AR step with ``Cancelled``.
            settings: ``tts()``'s settings; the AR ones (temperature, top_p, top_k — 50 by default, as
                the original's stream —, repetition_penalty, typical_sampling, typical_mass,
                max_mel_tokens) are used, the candidate, ranking and diffusion ones do not apply.

        Raises:
            UserError (at the call, not at the first ``next()``): bad settings, or ``[bracketed]`` text
                while redaction is on (a stream cannot cut words it has already played; construct with
                ``enable_redaction=False`` to speak them).
        """
        validate.check_tts_inputs(text, voice_samples, None, 1, seed, force_tokens)  # latents may be the AR one alone
        options = StreamOptions(int(stream_chunk_size), int(overlap_wav_len), int(first_buffer),
                                int(max_stream_chunk_size))
        s, sampling, max_tokens = resolve_settings(settings, force_tokens)
        if self.enable_redaction and ("[" in text or "]" in text):
            raise UserError("streaming cannot cut [bracketed] text from audio it has already played; remove the "
                            "brackets, or turn redaction off (--disable-redaction / enable_redaction=False) to "
                            "speak them")
        text_tokens = self.text_tokens(text)
        seed = int(time.time()) if seed is None else int(seed)
        report = RunReport(seed=seed, candidates=1, tokens=max_tokens, policy=self.policy(1).to_dict())
        self.last_report = report
        ctx = self.new_context(1, seed=seed, settings=s, cancel=cancel, report=report)
        return stream_speech(self.store, ctx, text_tokens, voice_samples, conditioning_latents, sampling, max_tokens,
                             bool(force_tokens), options, stats)
