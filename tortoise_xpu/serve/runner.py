"""The server's one adapter onto the synthesis pipeline.

Everything the server needs from the pipeline goes through :class:`PipelineRunner`, so that
moving the server onto another pipeline layout (a shared model store and per-run contexts) means
editing this file only.  The engine and the HTTP layer never import ``pipeline.tts`` or the models.

The runner holds one ``TextToSpeech`` for its model store (``tts.store``: every network loaded
once, shared by all requests) and its Policies; each request gets its own
:class:`~tortoise_xpu.pipeline.context.RunContext` (``tts.new_context``: Policy, CPU generator
seeded by the request's seed, settings) and runs the pipeline's stage functions on the store, as
``TextToSpeech.tts``/``tts_stream`` compose them.  Every random draw comes from the request's
generator in the order ``tts`` makes them, so a request gives the audio ``tts``/``tts_stream``
would give for the same seed.

What the runner offers, stage by stage:

* :meth:`prepare` — text tokens, settings, voice latents (the conditioning stage) and the AR
  uniforms of one request, with its run context;
* :meth:`make_decoder` / :meth:`capacity` — the continuous AR batch over the AR model;
* :meth:`stream_vocoder` — the fast path's windowed HiFi-GAN decoder of one request
  (``pipeline.stream_vocoder.StreamVocoder``: each chunk decodes its new frames plus the
  receptive field, exact against the full decode, no crossfade);
* :meth:`finish` — the quality path's stages: ranking (CLVP/CVVP), AR latents, diffusion, vocoder;
* voices: :meth:`list_voices`, :meth:`create_voice`, :meth:`delete_voice`.
"""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tortoise_xpu.audio.rates import AR_SAMPLE_RATE, SAMPLE_RATE
from tortoise_xpu.errors import AudioError, UserError
from tortoise_xpu.pipeline.context import RunContext

__all__ = ["PipelineRunner", "Prepared", "VOICE_NAME", "SAMPLE_RATE", "VoiceNotFound"]

#: Voice names over HTTP: letters, digits, ``_`` and ``-``, starting with a letter or digit.
VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Models a server run can use (random voices need the rlg pair; the fast path the HiFi-GAN).
SERVE_MODELS = ("autoregressive", "clvp", "diffusion", "vocoder", "hifidecoder", "rlg_auto", "rlg_diffuser")


class VoiceNotFound(UserError):
    """A voice name that is not stored on this server (HTTP 404)."""


@dataclass
class Prepared:
    """One request made ready for the AR batch: tokens, draws, voice, settings and run context."""

    text_tokens: torch.Tensor           # (1, T) long
    ar_latent: torch.Tensor             # (1, D) float, on the device
    diff_latent: torch.Tensor | None    # (1, 2D) float, on the device (quality path only)
    settings: dict[str, Any]            # the full tts() settings
    sampling: Any                       # SamplingSettings
    max_tokens: int
    uniforms: torch.Tensor              # (candidates, max_tokens) float, CPU
    ctx: RunContext                     # the request's run: Policy, generator (after the AR draws), settings
    force: bool = False
    ar_mels: torch.Tensor | None = None  # the clips' AR mels (CVVP ranking), when the voice has clips

    @property
    def generator(self) -> torch.Generator:
        """The request's CPU generator (the diffusion noise and the vocoder draw from it next)."""
        return self.ctx.generator


def check_voice_name(name: str) -> str:
    """``name`` if it is a valid stored-voice name, else a UserError (no paths, no dots)."""
    if not isinstance(name, str) or not VOICE_NAME.match(name) or name == "random":
        raise UserError(f"invalid voice name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a "
                        f"letter or digit ('random' is reserved)")
    return name


class PipelineRunner:
    """The pipeline, as the serving engine sees it.

    Args:
        models_dir: the model files (None: the default folder).
        device: a device spec (``auto``, ``cpu``, ``cuda``, ...).
        voices_dir: where voices uploaded over HTTP are stored (and looked up first).
        extra_voice_dirs: more folders to look voices up in (read-only to the server).
    """

    def __init__(self, models_dir: str | Path | None, device: str = "auto", voices_dir: str | Path | None = None,
                 extra_voice_dirs: Sequence[str | Path] = ()):
        from tortoise_xpu.pipeline.tts import TextToSpeech
        from tortoise_xpu.voices import user_voices_dir

        # Redaction cuts audio after the fact, which a stream cannot do: brackets are read as written.
        self.tts = TextToSpeech(models_dir=models_dir, device=device, enable_redaction=False, auto_download=False)
        self.device = self.tts.device
        self.backend = self.tts.backend
        self.voices_dir = Path(voices_dir) if voices_dir is not None else user_voices_dir()
        self.voice_dirs = [self.voices_dir, *[Path(d) for d in extra_voice_dirs]]
        self._voice_lock = threading.Lock()
        self.loaded = False

    # ----------------------------------------------------------------------------- set-up
    @property
    def store(self):
        """The model store every request shares (``pipeline.store.ModelStore``)."""
        return self.tts.store

    def load(self) -> dict[str, float]:
        """Load every model a request can need into the store, now (so no request pays for it, and no
        two load it): in the preparation of the Policy the server's runs use; seconds per model."""
        import time

        policy = self.tts.policy()
        times = {}
        for name in SERVE_MODELS:
            start = time.perf_counter()
            self.store.model(name, policy)
            self.backend.synchronize()
            times[name] = time.perf_counter() - start
        self.tts.text_tokens("warm up")  # loads the tokenizer
        self.loaded = True
        return times

    def new_context(self, seed: int, settings: dict[str, Any] | None = None,
                    cancel: Callable[[], bool] | None = None) -> RunContext:
        """A request's run context: the server's Policy, a CPU generator seeded with ``seed``, and
        ``cancel`` (true once the request should stop: its stages then raise ``errors.Cancelled``).

        Every request runs on one Policy (the store's default one), whatever its candidate count:
        the continuous AR batch mixes requests, so they share one AR model and its preparation."""
        from tortoise_xpu.pipeline.tts import DEFAULT_CANDIDATES

        return self.tts.new_context(DEFAULT_CANDIDATES, seed=int(seed), settings=settings, cancel=cancel)

    def ar_model(self) -> torch.nn.Module:
        """The AR model the continuous batch decodes with (the store's, on the server's Policy)."""
        return self.store.model("autoregressive", self.tts.policy())

    def cache_dtype(self) -> torch.dtype:
        """The KV cache dtype: the AR weights' (SDPA wants q and k of one dtype)."""
        from tortoise_xpu.pipeline.store import weight_dtype

        return weight_dtype(self.ar_model())

    def capacity(self) -> int:
        """Rows per running AR batch: the Policy's AR batch size for a 16-candidate run."""
        return int(self.tts.policy(16).ar_batch_size)

    def max_text_tokens(self) -> int:
        """The longest prompt the AR model takes, in text tokens."""
        return int(self.ar_model().config.text_positions) - 2

    # ----------------------------------------------------------------------------- requests
    def prepare(self, text: str, voice: str, settings: dict[str, Any], candidates: int, seed: int,
                quality: bool, force_tokens: int | None = None, cancel: Callable[[], bool] | None = None) -> Prepared:
        """Tokens, voice latents and AR uniforms for one request, drawing as ``tts()`` does.

        ``quality``: the diffusion path (needs the diffusion latent); else the streaming path (the AR
        half of the conditioning only, as ``tts_stream``).  ``cancel``: checked by the quality path's
        stages (the diffusion at every step), so a request whose client left or whose deadline passed
        stops there with ``errors.Cancelled``.  Raises UserError (bad text/settings), VoiceNotFound,
        AudioError (unusable clips).
        """
        from tortoise_xpu.pipeline.presets import resolve_settings
        from tortoise_xpu.pipeline.sampling import uniforms
        from tortoise_xpu.pipeline.validate import check_diffusion_settings

        s, sampling, max_tokens = resolve_settings(settings, force_tokens)
        if quality:
            check_diffusion_settings(s)  # the ranges were checked by resolve_settings
        tokens = self.tts.text_tokens(text)
        ctx = self.new_context(seed, s, cancel)
        ar_latent, diff_latent, ar_mels = self._voice_latents(voice, ctx, quality)
        u = uniforms(ctx.generator, max_tokens, candidates).t().contiguous()
        return Prepared(tokens, ar_latent.to(self.device), diff_latent.to(self.device) if quality else None,
                        s, sampling, max_tokens, u, ctx, bool(force_tokens), ar_mels)

    def _voice_latents(self, spec: str, ctx: RunContext,
                       quality: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(ar latent, diffusion latent or None, ar mels or None)`` of a voice spec (the conditioning
        stage); the streaming path computes no diffusion latent from clips (no random draws there,
        so the AR draws stay those of ``tts``)."""
        from tortoise_xpu.pipeline import conditioning
        from tortoise_xpu.voices import RANDOM_VOICE, average_latents, load_voice_clips, resolve_voice

        store = self.store
        if spec == RANDOM_VOICE:
            ar, diff = conditioning.random_latents(store, ctx)
            return ar, diff, None
        parts = spec.split("&")
        for part in parts:
            if part == RANDOM_VOICE and len(parts) > 1:
                raise UserError("'random' cannot be combined with other voices")
            check_voice_name(part)
            if part not in self.voice_names():
                raise VoiceNotFound(f"unknown voice {part!r}; GET /v1/audio/voices lists the voices")
        voice = resolve_voice(spec, self.voice_dirs)
        if not voice.clips:
            ar, diff = self._fit(voice.latents)
            return ar, diff, None
        clips = load_voice_clips(voice.clips, AR_SAMPLE_RATE)
        if quality:
            ar, diff, ar_mels = conditioning.conditioning_latents(store, ctx, clips)
        else:
            (ar, ar_mels), diff = conditioning.ar_conditioning(store, ctx, clips), None
        if voice.latents:  # a mix of clip voices and latent voices: average the two kinds
            saved_ar, saved_diff = average_latents(voice.latents)
            ar = torch.stack([ar.reshape(1, -1), saved_ar.reshape(1, -1)]).mean(0)
            if diff is not None:
                diff = torch.stack([diff.reshape(1, -1), saved_diff.reshape(1, -1)]).mean(0)
            ar_mels = None  # CVVP would compare with the clips only, not the whole mix
        return ar, diff, ar_mels

    def _fit(self, latents: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        from tortoise_xpu.voices import average_latents

        ar, diff = average_latents(latents)
        width = self.ar_model().config.model_dim
        if ar.shape[-1] != width:
            raise UserError(f"this voice's latents (width {ar.shape[-1]}) were made with other model files "
                            f"(the AR model here is {width} wide)")
        return ar.reshape(1, -1), diff.reshape(1, -1)

    def make_decoder(self, capacity: int):
        """The continuous AR batch (``pipeline.continuous.ContinuousDecoder``) over this AR model."""
        from tortoise_xpu.pipeline.continuous import ContinuousDecoder

        return ContinuousDecoder(self.ar_model(), capacity, cache_dtype=self.cache_dtype(), backend=self.backend)

    @staticmethod
    def row_spec(prep: Prepared, candidate: int, tag: Any):
        """The continuous batch's row for candidate ``candidate`` of a prepared request."""
        from tortoise_xpu.pipeline.continuous import RowSpec

        return RowSpec(cond=prep.ar_latent, text=prep.text_tokens, u=prep.uniforms[candidate],
                       settings=prep.sampling, max_tokens=prep.max_tokens, force=prep.force, tag=tag)

    @staticmethod
    def presets() -> list[str]:
        """The preset names a request may give."""
        from tortoise_xpu.pipeline.presets import PRESETS

        return list(PRESETS)

    @staticmethod
    def preset_settings(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """A preset's full settings with ``overrides`` (the original's knob names) on top."""
        from tortoise_xpu.pipeline.presets import preset_settings

        return preset_settings(preset, **overrides)

    @staticmethod
    def check_seed(seed: Any) -> int:
        """A request's seed as the pipeline takes them (an integer 0 <= seed < 2**63), else UserError."""
        from tortoise_xpu.pipeline.validate import check_seed

        return check_seed(seed)

    @staticmethod
    def check_settings(settings: dict[str, Any], force_tokens: int | None = None) -> None:
        """The pipeline's own checks of the knobs (UserError naming the bad one), before queueing."""
        from tortoise_xpu.pipeline.presets import resolve_settings

        resolve_settings(settings, force_tokens)

    def stream_vocoder(self, prep: Prepared):
        """The fast path's HiFi-GAN decoder of one request: a ``pipeline.stream_vocoder.StreamVocoder``
        over the store's decoder, conditioned on the request's voice.  ``push(hidden (1, k, D))``
        with each chunk's new AR hidden states returns the samples that are final (1-D float32,
        CPU); ``finish()`` the rest.  Joined, they are the full decode of the request's hidden states."""
        from tortoise_xpu.pipeline.stream_vocoder import StreamVocoder

        return StreamVocoder(self.store.model("hifidecoder", prep.ctx.policy), prep.ar_latent)

    def finish(self, prep: Prepared, codes: torch.Tensor) -> torch.Tensor:
        """The quality path after AR sampling, as ``TextToSpeech.tts`` composes its stages: fix the
        stop tokens, rank the candidates (CLVP, and CVVP when asked and the voice has clips), AR
        latents of the best, trimmed after its calm run, diffusion, vocoder; returns 24 kHz audio
        (S,) float32 on the CPU.

        ``codes`` (N, max_tokens) stop-padded, one row per candidate in the order of the uniforms.
        """
        from tortoise_xpu.pipeline import diffusion, latents, ranking, vocoding
        from tortoise_xpu.pipeline.codes import fix_autoregressive_output, trim_length

        store, ctx = self.store, prep.ctx
        codes = fix_autoregressive_output(codes.cpu(), self.ar_model().config.stop_mel_token)
        if codes.shape[0] > 1:  # one candidate is its own best: ranking draws nothing, so skipping it changes nothing
            with ctx.timed("clvp"):
                scores, best = ranking.rank(store, ctx, prep.text_tokens, codes, 1,
                                            float(prep.settings["cvvp_amount"]), prep.ar_mels)
            ctx.report.scores = scores.tolist()
            codes = codes[best]
        with ctx.timed("latents"):
            lat = latents.ar_latents(store, ctx, prep.ar_latent, prep.text_tokens, codes)
        with ctx.timed("diffusion"):
            mel = diffusion.latents_to_mel(store, ctx, lat[:, :trim_length(codes[0])], prep.diff_latent)
        with ctx.timed("vocoder"):
            wav = vocoding.vocode(store, ctx, mel)
        return wav.reshape(-1)

    # ----------------------------------------------------------------------------- voices
    def voice_names(self) -> list[str]:
        """Every voice a request can name (stored ones and those in the extra folders)."""
        from tortoise_xpu.voices import list_voices

        return sorted(n for n in list_voices(self.voice_dirs) if VOICE_NAME.match(n))

    def list_voices(self) -> list[dict[str, Any]]:
        """The voices as ``{"name", "kind" (latents|clips), "stored" (uploaded here)}`` records."""
        from tortoise_xpu.voices import LATENT_SUFFIXES, list_voices

        out = []
        for name, folder in sorted(list_voices(self.voice_dirs).items()):
            if not VOICE_NAME.match(name):
                continue
            kinds = {p.suffix.lower() for p in folder.iterdir() if p.is_file()}
            out.append({"name": name, "kind": "latents" if kinds <= set(LATENT_SUFFIXES) else "clips",
                        "stored": folder.parent == self.voices_dir})
        return out

    def create_voice(self, name: str, clips: Sequence[tuple[str, bytes]], max_seconds: float) -> dict[str, Any]:
        """Store a voice from uploaded clips: latents computed once and kept (voices.py's format).

        ``clips``: (file name, bytes).  Raises UserError (bad name, exists), AudioError naming the
        file (unreadable, silent, too long).
        """
        from tortoise_xpu.audio.io import load_audio
        from tortoise_xpu.voices import save_latents

        check_voice_name(name)
        if not clips:
            raise UserError("no clips uploaded: send one or more audio files as 'files'")
        with self._voice_lock:
            if name in self.voice_names() or (self.voices_dir / name).exists():
                raise UserError(f"voice {name!r} already exists; DELETE it first")
            staging = self.voices_dir / f".upload-{name}"
            shutil.rmtree(staging, ignore_errors=True)
            (staging / "clips").mkdir(parents=True)
            try:
                tensors = []
                for i, (filename, data) in enumerate(clips):
                    safe = Path(filename or f"clip{i}").name
                    suffix = Path(safe).suffix.lower() or ".wav"
                    path = staging / "clips" / f"{i:02d}{suffix}"
                    path.write_bytes(data)
                    try:
                        clip = load_audio(path, AR_SAMPLE_RATE, max_seconds=None)
                    except AudioError as exc:
                        raise AudioError(f"{safe}: {str(exc).replace(str(path), '').strip(': ')}") from None
                    seconds = clip.shape[-1] / AR_SAMPLE_RATE
                    if seconds > max_seconds:
                        raise AudioError(f"{safe}: {seconds:.1f} s is longer than the {max_seconds:g} s allowed")
                    tensors.append(clip)
                from tortoise_xpu.pipeline import conditioning

                ar, diff, _ = conditioning.conditioning_latents(self.store, self.new_context(0), tensors)
                save_latents(staging / f"{name}.pth", ar, diff)
                staging.rename(self.voices_dir / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return {"name": name, "kind": "latents", "stored": True, "clips": len(clips)}

    def delete_voice(self, name: str) -> None:
        """Remove a voice stored over HTTP (voices of the read-only folders cannot be deleted)."""
        check_voice_name(name)
        with self._voice_lock:
            folder = self.voices_dir / name
            if not folder.is_dir():
                raise VoiceNotFound(f"no stored voice {name!r}")
            shutil.rmtree(folder)
