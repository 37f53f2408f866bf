"""``TextToSpeech``: the one pipeline, run on whatever Backend + Policy it is given.

text → BPE tokens → voice latents (AR 1024-d, diffusion 2048-d) → AR sampling of N
candidates over a KV cache → fix stop tokens → CLVP ranking (optionally CVVP) → AR
latents pass for the best k → trim after the calm-token run → diffusion (p / ddim /
dpm++2m) → UnivNet at 24 kHz.

Nothing here branches on a device type: the Backend says where tensors live and how
to synchronise, the Policy says which dtype each stage runs in, how many candidates
one AR batch holds and whether models stay resident.  Every random draw comes from
one CPU ``torch.Generator`` seeded by ``seed``, so a seed gives one result on every
backend (up to floating point).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from tortoise_xpu.backends.audit import stage as audit_stage
from tortoise_xpu.errors import UserError
from tortoise_xpu.pipeline.codes import fix_autoregressive_output, trim_length
from tortoise_xpu.pipeline import validate
from tortoise_xpu.pipeline.presets import DEFAULT_PRESET, TTS_DEFAULTS, preset_settings, resolve_settings
from tortoise_xpu.pipeline.sampling import SamplingSettings, uniforms

SAMPLE_RATE = 24000
AR_SAMPLE_RATE = 22050

# Progress callback: (stage, done, total).
Progress = Callable[[str, int, int], None]


@dataclass
class RunReport:
    """What the last ``tts`` call did: per-stage seconds (device-synchronised), memory, sizes."""

    seed: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    candidates: int = 0
    ar_steps: int = 0
    audio_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return sum(self.stages.values())


def _weight_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating-point dtype a module's weights are stored in (its inputs must match)."""
    return next(p.dtype for p in module.parameters() if p.is_floating_point())


class TextToSpeech:
    """Tortoise text-to-speech, with the original's API.

    Args:
        models_dir: folder with the model files (default ``$TORTOISE_XPU_MODELS`` or the user cache).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``rocm``, ``xpu``, ``mps``, ``directml``, ``dml:0``.
        dtype: one dtype for every stage (overrides the backend policy's choice).
        batch_size: AR candidates per batch (overrides the policy).
        low_vram / high_vram: move each model to the device only for its stage / keep all resident.
        enable_redaction: allow ``[bracketed]`` prompt text to be cut from the audio (needs the
            ``redaction`` extra); off means brackets are spoken as written.
        auto_download: fetch model files missing from ``models_dir`` from the asset registry's
            sources on first use (as the original does); off, a missing file is an error that
            names the download command.
        progress: ``progress(stage, done, total)`` called during long stages.
    """

    def __init__(self, models_dir: str | Path | None = None, device: str = "auto", dtype: str | torch.dtype | None = None,
                 *, batch_size: int | None = None, low_vram: bool = False, high_vram: bool = False,
                 graph_capture: bool | None = None, enable_redaction: bool = True, tokenizer_basic: bool = False,
                 auto_download: bool = True, progress: Progress | None = None):
        from tortoise_xpu import assets
        from tortoise_xpu.backends import resolve
        from tortoise_xpu.backends.policy import Overrides

        self.backend = resolve(device)
        self.device = self.backend.device
        self.models_dir = assets.models_dir(models_dir)
        self.overrides = Overrides(dtype=dtype, batch_size=batch_size, low_vram=low_vram, high_vram=high_vram,
                                   graph_capture=graph_capture)
        self.enable_redaction = enable_redaction
        self.auto_download = auto_download
        self.progress = progress
        self._tokenizer_basic = tokenizer_basic
        self._tokenizer = None
        self._mel_norms: torch.Tensor | None = None
        self._models: dict[str, torch.nn.Module] = {}
        self._policies: dict[int, Any] = {}
        self._candidates = 16  # the candidate count of the current run; it selects the Policy
        self._plan: list[str] = []  # models the rest of the current run will use, in order (prefetching)
        self._model_shuttle = None  # per-stage model mover, made on first use
        self._decode_engine = None  # AR decode engine, kept across runs for its buffers and graphs
        self._stream_engine = None  # the same for streaming (batch 1)
        self.last_report = RunReport()

    # ------------------------------------------------------------------------------------ set-up
    def policy(self, candidates: int = 16):
        """The Policy for a run of ``candidates`` AR samples (computed once per count, before loading)."""
        from tortoise_xpu.backends.policy import policy_for

        if candidates not in self._policies:
            ov = self.overrides
            self._policies[candidates] = policy_for(
                self.backend, candidates=candidates, dtype=ov.dtype, batch_size=ov.batch_size,
                low_vram=ov.low_vram, high_vram=ov.high_vram, graph_capture=ov.graph_capture)
        return self._policies[candidates]

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tortoise_xpu.text.tokenizer import VoiceBpeTokenizer

            self._tokenizer = VoiceBpeTokenizer(self._asset_path("tokenizer.json"),
                                                use_basic_cleaners=self._tokenizer_basic)
        return self._tokenizer

    @property
    def mel_norms(self) -> torch.Tensor:
        if self._mel_norms is None:
            from tortoise_xpu.audio.mel import load_mel_norms

            self._mel_norms = load_mel_norms(self._asset_path("mel_norms.pth"))
        return self._mel_norms

    def _asset_path(self, name: str) -> Path:
        """Where asset ``name`` is in the models folder, downloading it first when allowed and missing."""
        from tortoise_xpu import assets
        from tortoise_xpu.errors import ModelFileError, TortoiseError

        path = assets.find(name, self.models_dir)
        if path is not None or not self.auto_download:
            return path if path is not None else assets.require(name, self.models_dir)
        try:
            return assets.download(name, self.models_dir, progress=self.progress is not None, retries=1)
        except TortoiseError as exc:
            raise ModelFileError(
                f"{assets.asset(name).name} is not in {self.models_dir} and could not be downloaded ({exc}). "
                f"Offline? Run `tortoise-xpu models download --models-dir DIR` on a machine with internet and "
                f"copy DIR here, or pass --models-dir pointing at a folder that has the files") from None

    def _stage_dtype(self, name: str) -> torch.dtype:
        stage = {"autoregressive": "ar", "clvp": "clvp", "cvvp": "clvp", "diffusion": "diffusion",
                 "vocoder": "vocoder", "hifidecoder": "vocoder"}.get(name)
        return self.policy(self._candidates).dtype(stage) if stage else torch.float32

    def model(self, name: str) -> torch.nn.Module:
        """The loaded model ``name`` (registry names: autoregressive, clvp, diffusion, vocoder, ...)."""
        if name not in self._models:
            from tortoise_xpu.models import registry
            from tortoise_xpu.models.loading import load_model

            path = self._asset_path(registry.spec(name).file)
            dtype = self._stage_dtype(name)
            if hasattr(registry.spec(name).model_class(), "use_layer_autocast") and dtype != torch.float32 \
                    and self.backend.supports_autocast(dtype):
                # The diffusion decoder autocasts all but its first layer (the original's use_fp16
                # scheme): much closer to float32 than casting every weight.
                m = load_model(name, self.models_dir, path=path).use_layer_autocast(dtype)
            else:
                m = load_model(name, self.models_dir, dtype=dtype, path=path)
            if hasattr(m, "use_weight_first_linears"):
                m.use_weight_first_linears(self.policy(self._candidates).ar_weight_first)
            if self.policy(self._candidates).resident:
                m = self.backend.to_device(m)
            self._models[name] = m
        return self._models[name]

    @contextlib.contextmanager
    def _on_device(self, name: str) -> Iterator[torch.nn.Module]:
        """The model on the device for one stage; in per-stage mode it goes back to the CPU afterwards."""
        m = self.model(name)
        if self.policy(self._candidates).resident:
            # The policy is per candidate count: an earlier per-stage run may have left this model on
            # the host (the shuttle points it back at its host copies), so bring it over when needed.
            if any(t.device != self.device for t in itertools.islice(m.parameters(), 1)):
                m = self.backend.to_device(m)
            yield m
            return
        shuttle = self._shuttle()
        m = shuttle.to_device(m)
        following = self._next_in_plan(name)
        if following is not None and following != name:
            shuttle.prefetch(self.model(following))  # overlaps with this stage where the backend has streams
        try:
            yield m
        finally:
            shuttle.offload(m)  # drops the device copy: the host copy is kept, nothing is copied back
            self.backend.empty_cache()

    # Models in the order the stages of ``tts`` use them (conditioning: AR then diffusion; sampling;
    # ranking; latents; diffusion; vocoder): per-stage mode prefetches the next one during each stage.
    _STAGE_PLAN = ("autoregressive", "diffusion", "autoregressive", "clvp", "autoregressive", "diffusion", "vocoder")

    def _shuttle(self):
        """The per-stage mover of models (backends/offload.py), made on first use."""
        if self._model_shuttle is None:
            from tortoise_xpu.backends.offload import ModelShuttle

            self._model_shuttle = ModelShuttle(self.backend)
        return self._model_shuttle

    def _next_in_plan(self, name: str) -> str | None:
        """Advance the per-run stage plan past ``name``; the model the stage after it needs, if known."""
        plan = self._plan
        if name not in plan:
            return None
        del plan[:plan.index(name) + 1]
        return plan[0] if plan else None

    def load_models(self, names: Sequence[str] | None = None, candidates: int | None = None) -> dict[str, float]:
        """Load the models of a run now rather than lazily in their stages; returns seconds per model.

        ``names`` default to the models every synthesis needs (autoregressive, clvp, diffusion,
        vocoder); add ``rlg_auto``/``rlg_diffuser`` for random voices or ``cvvp`` for CVVP ranking.
        ``candidates`` picks the policy (dtypes, residency) the run will use.  Benchmarks call this
        so that model-load time is reported apart from synthesis.
        """
        if candidates is not None:
            self._candidates = int(candidates)
        times = {}
        for name in names or ("autoregressive", "clvp", "diffusion", "vocoder"):
            start = time.perf_counter()
            self.model(name)
            self.backend.synchronize()
            times[name] = time.perf_counter() - start
        return times

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        self.backend.synchronize()
        start = time.perf_counter()
        try:
            with audit_stage(stage):  # names the stage for the portability audit (backends/audit.py)
                yield
            self.backend.synchronize()
        except Exception as exc:
            # A device OOM outside the AR back-off, or a driver failure: one line naming the stage and
            # what to try, instead of a driver traceback.  Anything else (a bug) passes unchanged.
            from tortoise_xpu.backends.errors import user_facing_error

            clean = user_facing_error(exc, self.backend, stage)
            if clean is None:
                raise
            raise clean from exc
        finally:
            self.last_report.stages[stage] = self.last_report.stages.get(stage, 0.0) + time.perf_counter() - start

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    # ------------------------------------------------------------------------------------ voices
    def get_conditioning_latents(self, voice_samples: Sequence[torch.Tensor], return_mels: bool = False,
                                 generator: torch.Generator | None = None):
        """Voice latents from reference clips at 22.05 kHz: ``(ar (1, 1024), diffusion (1, 2048))``.

        Each clip is padded or randomly cropped (from ``generator``) to 6 s for the AR model, and
        its first 102400 samples at 24 kHz feed the diffusion model; latents are averaged over clips.
        With ``return_mels`` the AR conditioning mels (1, n, 80, T) are returned too (CVVP uses them).
        """
        from tortoise_xpu.audio.conditioning import prepare_ar_clips, prepare_diffusion_clips
        from tortoise_xpu.audio.mel import ar_mel, univnet_mel

        if isinstance(voice_samples, torch.Tensor):
            voice_samples = [voice_samples]
        if not voice_samples:
            raise UserError("no voice clips given")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        use_complex = self.policy(self._candidates).use_complex_stft
        dev = self.device
        with torch.no_grad():
            ar_clips = prepare_ar_clips(voice_samples, generator)
            ar_mels = torch.stack([ar_mel(c.to(dev), self.mel_norms.to(dev), use_complex=use_complex)
                                   for c in ar_clips], dim=1)  # (1, n, 80, T)
            with self._on_device("autoregressive") as ar:
                ar_latent = ar.get_conditioning(ar_mels.to(self._stage_dtype("autoregressive"))).float()
            diff_mels = [univnet_mel(c.to(dev), use_complex=use_complex)
                         for c in prepare_diffusion_clips(voice_samples)]
            with self._on_device("diffusion") as diffusion:
                dt = _weight_dtype(diffusion)
                diff_latent = diffusion.get_conditioning([m.to(dt) for m in diff_mels]).float()
        if return_mels:
            return ar_latent, diff_latent, ar_mels
        return ar_latent, diff_latent

    def _check_latents(self, latents) -> tuple[torch.Tensor, torch.Tensor]:
        """Saved latents as (1, D) float tensors, checked against the loaded models' widths."""
        ar, diff = (t.detach().float().reshape(1, -1) for t in latents)
        want = (self.model("autoregressive").config.model_dim, 2 * self.model("diffusion").config.model_channels)
        if (ar.shape[1], diff.shape[1]) != want:
            raise UserError(f"conditioning latents of widths {ar.shape[1]} and {diff.shape[1]} do not fit these "
                            f"models ({want[0]} and {want[1]}): they were made with other model files")
        return ar, diff

    def get_random_conditioning_latents(self, generator: torch.Generator | None = None):
        """A random voice from the random-latent generators: ``(ar (1, 1024), diffusion (1, 2048))``."""
        ref = torch.zeros(1)
        with torch.no_grad(), self._on_device("rlg_auto") as rlg_a, self._on_device("rlg_diffuser") as rlg_d:
            return rlg_a(ref, generator=generator).float(), rlg_d(ref, generator=generator).float()

    # ------------------------------------------------------------------------------------ text
    def text_tokens(self, text: str) -> torch.Tensor:
        """Token ids as the original ``tts()`` feeds them: the BPE ids plus one trailing 0, (1, n+1)."""
        from tortoise_xpu.text.tokenizer import check_text_length, tts_text_tokens

        ids = self.tokenizer.encode(text) if text.strip() else []
        if not ids or not any(ch.isalnum() for ch in self.tokenizer.decode(ids)):
            raise UserError("the text is empty after cleaning; nothing to say")
        check_text_length(ids)
        return torch.tensor([tts_text_tokens(ids)], dtype=torch.long)

    # ------------------------------------------------------------------------------------ AR
    def _decoder(self):
        """The AR decode engine (pipeline/decode.py); its buffers and graphs are reused across batches."""
        from tortoise_xpu.pipeline.decode import DecodeEngine

        graphs = self.policy(self._candidates).graph_capture
        engine = self._decode_engine
        if engine is None or engine.graphs_requested != graphs:
            engine = DecodeEngine(self.backend, graphs=graphs, progress=lambda d, t: self._report("ar", d, t))
            self._decode_engine = engine
        return engine

    def _stream_decoder(self):
        """The decode engine of ``tts_stream`` (batch 1): its own, so a stream does not drop the
        buffers and graphs that ``tts`` keeps for its candidate batch, nor the other way round.
        While a stream is paused mid-way, another stream gets a private engine of its own."""
        from tortoise_xpu.pipeline.decode import DecodeEngine

        graphs = self.policy(1).graph_capture
        engine = self._stream_engine
        if engine is not None and engine.busy:
            return DecodeEngine(self.backend, graphs=graphs)
        if engine is None or engine.graphs_requested != graphs:
            engine = self._stream_engine = DecodeEngine(self.backend, graphs=graphs)
        return engine

    def _decode_batch(self, ar, cond: torch.Tensor, text: torch.Tensor, u: torch.Tensor, s: SamplingSettings,
                      max_tokens: int, force: bool) -> torch.Tensor:
        """Sample ``u.shape[0]`` candidates; returns codes (B, max_tokens) padded with the stop token."""
        # The cache must hold what the model computes (SDPA refuses mixed q/k dtypes): the weights'
        # dtype, whatever loaded or cast the model, rather than what the policy would choose.
        result = self._decoder().decode(ar, cond, text, u, s, max_tokens, force,
                                        cache_dtype=_weight_dtype(ar))
        self.last_report.ar_steps = max(self.last_report.ar_steps, result.steps)
        return result.codes

    def sample_codes(self, cond: torch.Tensor, text: torch.Tensor, num_samples: int, settings: SamplingSettings,
                     max_tokens: int, generator: torch.Generator, force_tokens: bool = False) -> torch.Tensor:
        """``num_samples`` candidate code sequences (num_samples, max_tokens), in OOM-safe batches.

        Each candidate's uniforms are drawn up front from ``generator``, so a candidate's codes do not
        depend on the batch size (nor on an out-of-memory back-off).
        """
        from tortoise_xpu.backends.oom import run_with_backoff

        policy = self.policy(num_samples)
        u = uniforms(generator, max_tokens, num_samples).t().contiguous()  # (num_samples, steps)
        with self._on_device("autoregressive") as ar:
            cond = cond.to(self.device)
            text = text.to(self.device)

            def work(ids: Sequence[int]) -> list[torch.Tensor]:
                rows = u[list(ids)]
                with torch.no_grad():
                    codes = self._decode_batch(ar, cond, text, rows, settings, max_tokens, force_tokens)
                return list(codes.unbind(0))

            rows = run_with_backoff(work, list(range(num_samples)), policy.ar_batch_size, backend=self.backend)
            if not policy.resident:
                # Per-stage mode: the KV cache and graphs leave with the model.  Dropped inside the
                # block, so the empty_cache() on leaving it can hand their memory back to the driver.
                self._decoder().release()
        return torch.stack(rows)

    # ------------------------------------------------------------------------------------ ranking
    def rank(self, text: torch.Tensor, codes: torch.Tensor, k: int, cvvp_amount: float = 0.0,
             ar_mels: torch.Tensor | None = None, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (N,) of fixed candidates against the text, and the indices of the best ``k``."""
        scores = []
        with torch.no_grad():
            # Without voice clips (random voice, saved latents) CVVP has nothing to compare with:
            # CLVP alone ranks, whatever cvvp_amount says (the original crashed on cvvp_amount=1 there).
            if cvvp_amount < 1 or ar_mels is None:
                with self._on_device("clvp") as clvp:
                    for i in range(0, codes.shape[0], batch):
                        chunk = codes[i:i + batch].to(self.device)
                        scores.append(clvp.score(text.to(self.device), chunk).float())
                clvp_scores = torch.cat(scores)
            if cvvp_amount > 0 and ar_mels is not None:
                with self._on_device("cvvp") as cvvp:
                    mels = ar_mels[0].to(self.device, self._stage_dtype("cvvp"))  # (clips, 80, T)
                    # CVVP.score averages over the clips, as the original's per-clip loop does
                    cvvp_scores = torch.cat([cvvp.score(mels, codes[i:i + batch].to(self.device)).float()
                                             for i in range(0, codes.shape[0], batch)])
                total = cvvp_scores if cvvp_amount >= 1 else cvvp_scores * cvvp_amount + clvp_scores * (1 - cvvp_amount)
            else:
                total = clvp_scores
        return total.cpu(), torch.topk(total, k=min(k, total.shape[0])).indices.cpu()

    # ------------------------------------------------------------------------------------ synthesis
    def tts_with_preset(self, text: str, preset: str = DEFAULT_PRESET, **kwargs: Any):
        """``tts`` with a named preset's settings; keyword arguments override the preset."""
        passthrough = {k: kwargs.pop(k) for k in list(kwargs) if k not in TTS_DEFAULTS}
        return self.tts(text, **preset_settings(preset, **kwargs), **passthrough)

    def tts(self, text: str, voice_samples: Sequence[torch.Tensor] | None = None,
            conditioning_latents: tuple[torch.Tensor, torch.Tensor] | None = None, k: int = 1, *,
            seed: int | None = None, use_deterministic_seed: int | None = None, force_tokens: int | None = None,
            return_deterministic_state: bool = False, verbose: bool = False, **settings: Any):
        """Speak ``text``; returns a (1, S) 24 kHz float tensor, or a list of k of them when k > 1.

        ``voice_samples``: clips at 22.05 kHz; else ``conditioning_latents``; else a random voice.
        ``settings``: the original's knobs (``num_autoregressive_samples``, ``temperature``,
        ``top_p``, ``top_k``, ``repetition_penalty``, ``typical_sampling``, ``max_mel_tokens``,
        ``cvvp_amount``, ``diffusion_iterations``, ``cond_free``, ``cond_free_k``,
        ``diffusion_temperature``, ``sampler``), defaulting to the original ``tts()`` defaults.
        ``force_tokens``: generate exactly this many codes, ignoring the stop token (benchmarks).
        """
        validate.check_tts_inputs(text, voice_samples, conditioning_latents, k, seed if seed is not None else use_deterministic_seed, force_tokens)  # noqa: E501
        s, sampling, max_tokens = resolve_settings(settings, force_tokens)
        seed = seed if seed is not None else use_deterministic_seed
        seed = int(time.time()) if seed is None else int(seed)
        num_samples = int(s["num_autoregressive_samples"])
        if num_samples < 1:
            raise UserError("num_autoregressive_samples must be at least 1")
        if not 1 <= k <= num_samples:
            raise UserError(f"k (candidates returned) must be between 1 and num_autoregressive_samples "
                            f"({num_samples}), got {k}")
        from tortoise_xpu.diffusion.samplers import SAMPLERS

        if s["sampler"] not in SAMPLERS:
            raise UserError(f"unknown sampler {s['sampler']!r}; choose one of: {', '.join(SAMPLERS)}")
        if s["sampler"] == "dpm++2m" and not s["cond_free"]:
            raise UserError("the dpm++2m sampler needs conditioning-free guidance (cond_free=True)")

        from tortoise_xpu.text.split import parse_redaction

        parsed = None
        if self.enable_redaction and ("[" in text or "]" in text):
            try:
                parsed = parse_redaction(text)
            except UserError as exc:
                raise UserError(f"{exc} (to read brackets aloud instead, turn redaction off: "
                                f"--disable-redaction)") from None
            if parsed.has_redaction and not any(ch.isalnum() for ch in parsed.spoken):
                raise UserError("all of the text is inside [brackets], which steer the voice but are cut from the "
                                "audio: nothing would be spoken. Put the words to say outside the brackets, or "
                                "turn redaction off (--disable-redaction) to read them aloud")
        self._candidates = num_samples
        policy = self.policy(num_samples)
        self.last_report = RunReport(seed=seed, candidates=num_samples, policy=policy.to_dict())
        self.backend.reset_peak_memory()
        self._plan = list(self._STAGE_PLAN if voice_samples is not None else self._STAGE_PLAN[2:])
        gen = torch.Generator().manual_seed(seed)

        # The models read the whole text, brackets included (as the original); redaction cuts audio later.
        text_tokens = self.text_tokens(text)
        self.last_report.tokens = max_tokens
        ar_mels = None
        with self._timed("conditioning"):
            if voice_samples is not None:
                ar_latent, diff_latent, ar_mels = self.get_conditioning_latents(voice_samples, return_mels=True,
                                                                                generator=gen)
            elif conditioning_latents is not None:
                ar_latent, diff_latent = self._check_latents(conditioning_latents)
            else:
                ar_latent, diff_latent = self.get_random_conditioning_latents(generator=gen)
        ar_latent, diff_latent = ar_latent.to(self.device), diff_latent.to(self.device)

        with self._timed("ar"):
            codes = self.sample_codes(ar_latent, text_tokens, num_samples, sampling, max_tokens, gen,
                                      force_tokens=bool(force_tokens))
        stop = self.model("autoregressive").config.stop_mel_token
        with self._timed("clvp"):
            codes = fix_autoregressive_output(codes.cpu(), stop)
            scores, best = self.rank(text_tokens, codes, k, float(s["cvvp_amount"]), ar_mels)
        self.last_report.scores = scores.tolist()
        best_codes = codes[best]
        with self._timed("latents"), torch.no_grad(), self._on_device("autoregressive") as ar:
            n = best_codes.shape[0]
            latents = ar(ar_latent.expand(n, -1), text_tokens.to(self.device).expand(n, -1),
                         torch.tensor([text_tokens.shape[1]], device=self.device), best_codes.to(self.device),
                         torch.tensor([best_codes.shape[1] * ar.config.mel_length_compression], device=self.device),
                         return_latent=True, clip_inputs=False).float()
        wavs = []
        for i in range(best_codes.shape[0]):
            keep = trim_length(best_codes[i])
            mel = self.latents_to_mel(latents[i:i + 1, :keep], diff_latent, s, gen)
            with self._timed("vocoder"), torch.no_grad(), self._on_device("vocoder") as vocoder:
                wav = vocoder.inference(mel.to(self._stage_dtype("vocoder")), generator=gen).float().cpu()
            wavs.append(wav.reshape(1, -1))
        if parsed is not None and parsed.has_redaction:
            from tortoise_xpu.pipeline.redaction import redact

            with self._timed("redaction"):
                wavs = [redact(w, parsed, self.backend) for w in wavs]
        self.last_report.audio_seconds = wavs[0].shape[-1] / SAMPLE_RATE
        self.last_report.peak_memory_bytes = self.backend.peak_memory()
        result = wavs[0] if len(wavs) == 1 else wavs
        if return_deterministic_state:
            return result, (seed, text, voice_samples, conditioning_latents)
        return result

    def latents_to_mel(self, latents: torch.Tensor, diff_latent: torch.Tensor, s: dict[str, Any],
                       generator: torch.Generator) -> torch.Tensor:
        """Diffusion from AR latents (1, S, 1024) to a denormalised log-mel (1, 100, L), float32."""
        from tortoise_xpu.diffusion.samplers import denormalize_mel, output_length, sample

        steps = int(s["diffusion_iterations"])
        with self._timed("diffusion"), torch.no_grad(), self._on_device("diffusion") as diffusion:
            dt = _weight_dtype(diffusion)
            length = output_length(latents.shape[1])
            emb = diffusion.timestep_independent(latents.to(dt), diff_latent.to(dt), length, False)
            denoise = diffusion.denoiser(emb, True)

            def model_fn(x: torch.Tensor, t: torch.Tensor, want_uncond: bool):
                cond, uncond = denoise(x.to(dt), t, want_uncond)
                return cond.float(), (uncond.float() if uncond is not None else None)

            shape = (latents.shape[0], diffusion.in_channels, length)
            mel = sample(model_fn, shape, sampler=s["sampler"],
                         steps=steps, cond_free=bool(s["cond_free"]), cond_free_k=float(s["cond_free_k"]),
                         generator=generator, temperature=float(s["diffusion_temperature"]),
                         device=self.device, progress=lambda d, t: self._report("diffusion", d, t))
            return denormalize_mel(mel)[:, :, :length]

    # ------------------------------------------------------------------------------------ streaming
    def tts_stream(self, text: str, voice_samples: Sequence[torch.Tensor] | None = None,
                   conditioning_latents: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs: Any):
        """Speak ``text`` as a generator of 24 kHz audio chunks (1-D float32 CPU tensors).

        One AR candidate decoded by the HiFi-GAN decoder as it is sampled (no CLVP, no diffusion),
        like the original's ``api_fast`` stream; see :func:`tortoise_xpu.pipeline.stream.tts_stream`
        for the keyword arguments (``seed``, ``stream_chunk_size=40``, ``overlap_wav_len=1024``, ...).
        """
        from tortoise_xpu.pipeline.stream import tts_stream

        return tts_stream(self, text, voice_samples, conditioning_latents, **kwargs)
