"""The one place where long-form jobs (``read``, ``batch``, cluster workers) touch the pipeline.

:class:`ChunkEngine` is a worker's model store (one ``TextToSpeech``, its models loaded once)
with the two calls a job needs: voice latents, computed once per voice and job seed and then
shared by every chunk, and the synthesis of one chunk from those latents and the chunk's seed.
Everything else a job does (planning, seeds, files, distribution) is pipeline-agnostic; porting
long-form work onto another engine means re-implementing this class.

:class:`LocalExecutor` runs tasks in this process on one engine (the ``Executor`` of
``pipeline/longform.py`` used without ``--cluster``).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from tortoise_xpu.audio.rates import AR_SAMPLE_RATE
from tortoise_xpu.errors import TortoiseError, UserError
from tortoise_xpu.pipeline.longform import Task, TaskResult


@dataclass(frozen=True)
class EngineSpec:
    """How a worker builds its engine: the device and memory flags of the CLI (picklable).

    ``threads``: torch intra-op threads for this worker (None: torch's default).  ``checkpoints`` and
    ``ar_int8`` are ``TextToSpeech``'s arguments of those names.
    """

    models_dir: str | None = None
    device: str = "auto"
    dtype: str | None = None
    batch_size: int | None = None
    low_vram: bool = False
    high_vram: bool = False
    enable_redaction: bool = True
    threads: int | None = None
    #: ``--X-checkpoint`` overrides as (network, absolute path) pairs: every worker loads the same
    #: fine-tuned files (the paths must exist on the workers' machines too).
    checkpoints: tuple[tuple[str, str], ...] = ()
    ar_int8: bool | None = None


@dataclass
class VoiceMaterial:
    """A voice as read on the driver, ready to be shipped to a worker: clips at 22.05 kHz, saved
    latents, or neither (``random``: the random-latent generators pick it from the job seed)."""

    spec: str
    random: bool = False
    clips: list[torch.Tensor] = field(default_factory=list)
    latents: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def load_voice(spec: str, voices_dirs: Sequence[str] = ()) -> VoiceMaterial:
    """Resolve a voice spec and read its files (on the machine that has them: the driver)."""
    from tortoise_xpu.voices import load_voice_clips, resolve_voice, voice_search_path

    voice = resolve_voice(spec, voice_search_path(voices_dirs))
    if voice.random:
        return VoiceMaterial(spec, random=True)
    clips = load_voice_clips(voice.clips, AR_SAMPLE_RATE) if voice.clips else []  # none usable: AudioError
    return VoiceMaterial(spec, clips=list(clips), latents=list(voice.latents))


#: Model files whose identity a chunk records (the core set every synthesis reads).
_FINGERPRINT_BYTES = 1 << 20


def models_fingerprint(models_dir: str | os.PathLike | None,
                       checkpoints: Mapping[str, str | os.PathLike] | None = None) -> str:
    """A cheap identity of the core model files: name, size and sha256 of the first and last MiB.

    Not a checksum (``models verify`` is one): it tells whether chunks were made with the same
    files without reading gigabytes, and gives the same answer on every machine holding the same
    files (no paths or times in it).  ``checkpoints`` (network -> file, the ``--X-checkpoint``
    overrides) stand in for the folder's copies, so chunks of a fine-tuned model are told apart.
    """
    from tortoise_xpu import assets

    overrides = {assets.asset(network).name: Path(path) for network, path in (checkpoints or {}).items()}
    names = list(assets.resolve_names(None, core_only=True))
    names += sorted(set(overrides) - set(names))  # a fine-tuned network outside the core set too
    h = hashlib.sha256()
    for name in names:
        path = overrides.get(name) or assets.find(name, models_dir)
        h.update(name.encode() + b"\0")
        if path is None:
            h.update(b"missing\0")
            continue
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                h.update(str(size).encode() + b"\0" + f.read(_FINGERPRINT_BYTES))
                if size > 2 * _FINGERPRINT_BYTES:
                    f.seek(size - _FINGERPRINT_BYTES)
                    h.update(f.read(_FINGERPRINT_BYTES))
        except OSError:
            h.update(b"unreadable\0")
    return h.hexdigest()[:16]


class ChunkEngine:
    """One worker's model store and the two pipeline calls of a long-form job."""

    def __init__(self, spec: EngineSpec):
        from tortoise_xpu.pipeline import TextToSpeech

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self._fingerprint: str | None = None
        self.tts = TextToSpeech(models_dir=spec.models_dir, device=spec.device, dtype=spec.dtype,
                                batch_size=spec.batch_size, low_vram=spec.low_vram, high_vram=spec.high_vram,
                                enable_redaction=spec.enable_redaction, checkpoints=dict(spec.checkpoints),
                                ar_int8=spec.ar_int8)

    @property
    def device_name(self) -> str:
        """The backend this worker resolved (e.g. ``cpu``, ``cuda:0``)."""
        return str(self.tts.device)

    def models_fingerprint(self) -> str:
        """:func:`models_fingerprint` of this worker's models folder (kept once a chunk was made:
        by then every file it uses is there, downloaded on first use or not)."""
        if self._fingerprint is not None:
            return self._fingerprint
        return models_fingerprint(self.tts.models_dir, self.tts.checkpoints)

    def voice_latents(self, material: VoiceMaterial | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ar (1, D), diffusion (1, 2D))`` latents for a voice, made once per job seed.

        Clips are cropped with a generator seeded by ``seed`` (as ``speak`` does) and averaged
        with any saved latents; a random voice (``material`` None or random) comes from the
        random-latent generators seeded by ``seed``, so every chunk of a job has one voice.
        """
        from tortoise_xpu.backends.markers import stage
        from tortoise_xpu.voices import average_latents

        gen = torch.Generator().manual_seed(int(seed))
        with stage("conditioning"):  # the portability audit files these ops where tts() would
            if material is None or material.random:
                ar, diff = self.tts.get_random_conditioning_latents(generator=gen)
                return ar.detach().cpu(), diff.detach().cpu()
            latents = list(material.latents)
            if material.clips:
                latents.append(self.tts.get_conditioning_latents(material.clips, generator=gen))
            ar, diff = average_latents(latents)
        return ar.detach().cpu(), diff.detach().cpu()

    def synthesize(self, text: str, latents: tuple[torch.Tensor, torch.Tensor], seed: int,
                   settings: Mapping[str, Any], force_tokens: int | None = None) -> torch.Tensor:
        """One chunk: a (1, S) float32 CPU waveform at 24 kHz."""
        wav = self.tts.tts(text, conditioning_latents=latents, seed=int(seed), force_tokens=force_tokens,
                           **dict(settings))
        return wav.detach().float().cpu().reshape(1, -1)

    def run_task(self, task: Task, latents: tuple[torch.Tensor, torch.Tensor], worker: str) -> TaskResult:
        """:meth:`synthesize` for a task, its failure (bad text, device error) as a result."""
        t0 = time.monotonic()
        try:
            wav = self.synthesize(task.text, latents, task.seed, task.settings, task.force_tokens)
        except UserError as exc:
            return TaskResult(task.key, None, worker, time.monotonic() - t0, ("user", str(exc)))
        except TortoiseError as exc:
            return TaskResult(task.key, None, worker, time.monotonic() - t0, ("runtime", str(exc)))
        if self._fingerprint is None:
            self._fingerprint = models_fingerprint(self.tts.models_dir, self.tts.checkpoints)
        return TaskResult(task.key, wav, worker, time.monotonic() - t0, models=self._fingerprint)


class LocalExecutor:
    """The in-process :class:`~tortoise_xpu.pipeline.longform.Executor`: one engine, tasks in order."""

    def __init__(self, spec: EngineSpec, engine: ChunkEngine | None = None, name: str = "local"):
        self.engine = engine if engine is not None else ChunkEngine(spec)
        self.name = name
        self.latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.voices: Mapping[str, tuple[Any, int]] = {}

    def start(self, voices: Mapping[str, tuple[Any, int]]) -> None:
        """Remember the voices; each one's latents are made on first use (a failing voice fails
        before any chunk only when the first chunk needs it)."""
        self.voices = dict(voices)

    def _latents(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.latents:
            material, seed = self.voices[key]
            self.latents[key] = self.engine.voice_latents(material, seed)
        return self.latents[key]

    def run(self, tasks: Sequence[Task]) -> Iterator[TaskResult]:
        for task in tasks:
            yield self.engine.run_task(task, self._latents(task.voice), self.name)

    def close(self) -> None:
        """Nothing to release: the engine lives as long as its owner keeps it."""

    def stats(self) -> dict[str, Any]:
        """The one in-process worker."""
        return {"workers": [{"name": self.name, "device": self.engine.device_name}], "retries": 0}


def engine_spec_from_args(args: Any, threads: int | None = None,
                          checkpoints: Mapping[str, str] | None = None) -> EngineSpec:
    """An :class:`EngineSpec` from the CLI's device / memory / models-dir / ``--ar-int8`` flags and
    the ``--X-checkpoint`` overrides (``checkpoints``: network -> file)."""
    from tortoise_xpu.backends.policy import parse_ar_int8

    models_dir = getattr(args, "models_dir", None)
    return EngineSpec(models_dir=str(Path(models_dir).expanduser().resolve()) if models_dir else None,
                      device=args.device, dtype=args.dtype, batch_size=args.batch_size, low_vram=args.low_vram,
                      high_vram=args.high_vram, enable_redaction=not getattr(args, "disable_redaction", False),
                      threads=threads,
                      checkpoints=tuple(sorted((n, str(Path(p).expanduser().resolve()))
                                               for n, p in (checkpoints or {}).items())),
                      ar_int8=parse_ar_int8(getattr(args, "ar_int8", None)))
