"""The server's one adapter onto the synthesis pipeline.

Everything the server needs from the pipeline goes through :class:`PipelineRunner`, so that
moving the server onto another pipeline layout (a shared model store and per-run contexts) means
editing this file only.  The engine and the HTTP layer never import ``pipeline.tts`` or the models.

What the runner offers, stage by stage (every random draw from the request's CPU generator, in
the order ``TextToSpeech.tts`` makes them, so a request gives the audio ``tts``/``tts_stream``
would give for the same seed):

* :meth:`prepare` — text tokens, settings, voice latents and the AR uniforms of one request;
* :meth:`make_decoder` / :meth:`capacity` — the continuous AR batch over the AR model;
* :meth:`vocode_stream` / :meth:`vocode_stream_batch` / :meth:`crossfader` — HiFi-GAN audio from
  the AR hidden states so far, and the crossfade that joins the chunks (the fast path);
* :meth:`finish` — rank candidates (CLVP), AR latents, diffusion and vocoder (the quality path);
* voices: :meth:`list_voices`, :meth:`create_voice`, :meth:`delete_voice`.
"""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from tortoise_xpu.errors import AudioError, UserError

__all__ = ["PipelineRunner", "Prepared", "VOICE_NAME", "SAMPLE_RATE", "VoiceNotFound"]

SAMPLE_RATE = 24000
AR_SAMPLE_RATE = 22050
#: Voice names over HTTP: letters, digits, ``_`` and ``-``, starting with a letter or digit.
VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Models a server run can use (random voices need the rlg pair; the fast path the HiFi-GAN).
SERVE_MODELS = ("autoregressive", "clvp", "diffusion", "vocoder", "hifidecoder", "rlg_auto", "rlg_diffuser")


class VoiceNotFound(UserError):
    """A voice name that is not stored on this server (HTTP 404)."""


@dataclass
class Prepared:
    """One request made ready for the AR batch: tokens, draws, voice and settings."""

    text_tokens: torch.Tensor           # (1, T) long
    ar_latent: torch.Tensor             # (1, D) float, on the device
    diff_latent: torch.Tensor | None    # (1, 2D) float, on the device (quality path only)
    settings: dict[str, Any]            # the full tts() settings
    sampling: Any                       # SamplingSettings
    max_tokens: int
    uniforms: torch.Tensor              # (candidates, max_tokens) float, CPU
    generator: torch.Generator          # the request's generator, after the AR draws
    force: bool = False


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
    def load(self) -> dict[str, float]:
        """Load every model a request can need, now (so no request pays for it, and no two load it)."""
        times = self.tts.load_models(SERVE_MODELS, candidates=1)
        self.tts.text_tokens("warm up")  # loads the tokenizer
        self.loaded = True
        return times

    def ar_model(self) -> torch.nn.Module:
        """The AR model the continuous batch decodes with."""
        return self.tts.model("autoregressive")

    def cache_dtype(self) -> torch.dtype:
        """The KV cache dtype: the AR weights' (SDPA wants q and k of one dtype)."""
        return next(p.dtype for p in self.ar_model().parameters() if p.is_floating_point())

    def capacity(self) -> int:
        """Rows per running AR batch: the Policy's AR batch size for a 16-candidate run."""
        return int(self.tts.policy(16).ar_batch_size)

    def max_text_tokens(self) -> int:
        """The longest prompt the AR model takes, in text tokens."""
        return int(self.ar_model().config.text_positions) - 2

    # ----------------------------------------------------------------------------- requests
    def prepare(self, text: str, voice: str, settings: dict[str, Any], candidates: int, seed: int,
                quality: bool, force_tokens: int | None = None) -> Prepared:
        """Tokens, voice latents and AR uniforms for one request, drawing as ``tts()`` does.

        ``quality``: the diffusion path (needs the diffusion latent); else the streaming path.
        Raises UserError (bad text/settings), VoiceNotFound, AudioError (unusable clips).
        """
        from tortoise_xpu.pipeline.presets import resolve_settings
        from tortoise_xpu.pipeline.sampling import uniforms

        s, sampling, max_tokens = resolve_settings(settings, force_tokens)
        if quality:
            from tortoise_xpu.diffusion.samplers import SAMPLERS

            if s["sampler"] not in SAMPLERS:
                raise UserError(f"unknown sampler {s['sampler']!r}; choose one of: {', '.join(SAMPLERS)}")
            if s["sampler"] == "dpm++2m" and not s["cond_free"]:
                raise UserError("the dpm++2m sampler needs conditioning-free guidance (cond_free=True)")
        tokens = self.tts.text_tokens(text)
        gen = torch.Generator().manual_seed(int(seed))
        ar_latent, diff_latent = self._voice_latents(voice, gen)
        u = uniforms(gen, max_tokens, candidates).t().contiguous()
        return Prepared(tokens, ar_latent.to(self.device), diff_latent.to(self.device) if quality else None,
                        s, sampling, max_tokens, u, gen, bool(force_tokens))

    def _voice_latents(self, spec: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from tortoise_xpu.voices import RANDOM_VOICE, average_latents, load_voice_clips, resolve_voice

        if spec == RANDOM_VOICE:
            return self.tts.get_random_conditioning_latents(generator=gen)
        parts = spec.split("&")
        for part in parts:
            if part == RANDOM_VOICE and len(parts) > 1:
                raise UserError("'random' cannot be combined with other voices")
            check_voice_name(part)
            if part not in self.voice_names():
                raise VoiceNotFound(f"unknown voice {part!r}; GET /v1/audio/voices lists the voices")
        voice = resolve_voice(spec, self.voice_dirs)
        if voice.clips:
            clips = load_voice_clips(voice.clips, AR_SAMPLE_RATE)
            ar, diff = self.tts.get_conditioning_latents(clips, generator=gen)
            if voice.latents:  # a mix of clip voices and latent voices: average the two kinds
                ar, diff = average_latents([(ar, diff), average_latents(voice.latents)])
            return ar, diff
        return self._fit(voice.latents)

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
    def check_settings(settings: dict[str, Any], force_tokens: int | None = None) -> None:
        """The pipeline's own checks of the knobs (UserError naming the bad one), before queueing."""
        from tortoise_xpu.pipeline.presets import resolve_settings

        resolve_settings(settings, force_tokens)

    @staticmethod
    def crossfader(overlap: int):
        """The streaming path's chunk joiner (``tts_stream``'s crossfade of successive decodes)."""
        from tortoise_xpu.pipeline.stream import Crossfader

        return Crossfader(overlap)

    def vocode_stream(self, hidden: torch.Tensor, ar_latent: torch.Tensor) -> torch.Tensor:
        """HiFi-GAN audio (1-D float32, device) of AR hidden states (1, n, D), conditioned on the voice."""
        hifi = self.tts.model("hifidecoder")
        with torch.no_grad():
            dt = next(hifi.parameters()).dtype
            return hifi.inference(hidden.to(self.device, dt), g=ar_latent).float().reshape(-1)

    def vocode_stream_batch(self, hiddens: Sequence[torch.Tensor], ar_latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`vocode_stream` for several requests at once; every ``hiddens[i]`` is (1, n, D) with
        the same n (HiFi-GAN's convolutions see the whole sequence, so padding would change the audio)."""
        if len(hiddens) == 1:
            return [self.vocode_stream(hiddens[0], ar_latents[0])]
        hifi = self.tts.model("hifidecoder")
        with torch.no_grad():
            dt = next(hifi.parameters()).dtype
            x = torch.cat([h.to(self.device, dt) for h in hiddens])
            g = torch.cat([a.reshape(1, -1).to(self.device) for a in ar_latents])
            out = hifi.inference(x, g=g).float()
        return [row.reshape(-1) for row in out]

    def finish(self, prep: Prepared, codes: torch.Tensor) -> torch.Tensor:
        """The quality path after AR sampling: CLVP picks the best candidate, then AR latents,
        diffusion and vocoder; returns 24 kHz audio (S,) float32 on the CPU.

        ``codes`` (N, max_tokens) stop-padded, one row per candidate in the order of the uniforms.
        """
        from tortoise_xpu.pipeline.codes import fix_autoregressive_output, trim_length

        tts = self.tts
        ar = self.ar_model()
        codes = fix_autoregressive_output(codes.cpu(), ar.config.stop_mel_token)
        if codes.shape[0] > 1:
            _, best = tts.rank(prep.text_tokens, codes, 1, float(prep.settings["cvvp_amount"]), None)
            codes = codes[best]
        text = prep.text_tokens.to(self.device)
        with torch.no_grad():
            latents = ar(prep.ar_latent, text, torch.tensor([text.shape[1]], device=self.device),
                         codes.to(self.device),
                         torch.tensor([codes.shape[1] * ar.config.mel_length_compression], device=self.device),
                         return_latent=True, clip_inputs=False).float()
            keep = trim_length(codes[0])
            mel = tts.latents_to_mel(latents[:, :keep], prep.diff_latent, prep.settings, prep.generator)
            vocoder = tts.model("vocoder")
            dt = next(vocoder.parameters()).dtype
            wav = vocoder.inference(mel.to(dt), generator=prep.generator).float().cpu()
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
                ar, diff = self.tts.get_conditioning_latents(tensors, generator=torch.Generator().manual_seed(0))
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
