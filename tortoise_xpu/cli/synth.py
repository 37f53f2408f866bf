"""What ``speak`` and ``read`` share: building the pipeline from flags, voices, progress bars."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any, Iterator

import torch

STAGE_LABELS = {"ar": "AR tokens", "diffusion": "diffusion steps"}


class StageProgress:
    """Rich progress bars per pipeline stage, fed by ``TextToSpeech``'s progress callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress = None
        self._tasks: dict[str, Any] = {}
        self._last: dict[str, int] = {}

    @contextlib.contextmanager
    def running(self) -> Iterator["StageProgress"]:
        if not self.enabled:
            yield self
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      transient=True) as progress:
            self._progress = progress
            try:
                yield self
            finally:
                self._progress = None
                self._tasks.clear()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        label = STAGE_LABELS.get(stage, stage)
        task = self._tasks.get(stage)
        if task is None or done < self._last.get(stage, 0):
            if task is not None:
                self._progress.remove_task(task)
            task = self._tasks[stage] = self._progress.add_task(label, total=total)
        self._last[stage] = done
        self._progress.update(task, completed=done, total=total)

    def add(self, label: str, total: int):
        return self._progress.add_task(label, total=total) if self._progress is not None else None

    def advance(self, task, completed: int) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, completed=completed)

    def describe(self, task, description: str) -> None:
        """Change a row's label (a cluster worker's running count and rate)."""
        if self._progress is not None and task is not None:
            self._progress.update(task, description=description)


def build_tts(args: argparse.Namespace, progress: StageProgress | None = None, **policy: Any):
    """A ``TextToSpeech`` for the device / dtype / memory / models-dir / checkpoint flags; ``policy``:
    further ``TextToSpeech`` Policy keywords (``decode_mode``, ``compile``: bench)."""
    from tortoise_xpu.backends.policy import parse_ar_int8
    from tortoise_xpu.cli.common import checkpoint_overrides
    from tortoise_xpu.pipeline import TextToSpeech

    return TextToSpeech(models_dir=args.models_dir, device=args.device, dtype=args.dtype,
                        batch_size=args.batch_size, low_vram=args.low_vram, high_vram=args.high_vram,
                        enable_redaction=not getattr(args, "disable_redaction", False), progress=progress,
                        checkpoints=checkpoint_overrides(args), ar_int8=parse_ar_int8(getattr(args, "ar_int8", None)),
                        **policy)


def voice_inputs(tts, spec: str, voices_dirs: list[str], seed: int) -> dict[str, Any]:
    """Keyword arguments for ``tts.tts`` for a voice spec: clips, latents, or nothing (random)."""
    from tortoise_xpu.audio.rates import AR_SAMPLE_RATE
    from tortoise_xpu.voices import average_latents, load_voice_clips, resolve_voice, voice_search_path

    voice = resolve_voice(spec, voice_search_path(voices_dirs))
    if voice.random:
        return {}
    latents = list(voice.latents)
    if voice.clips:
        clips = load_voice_clips(voice.clips, AR_SAMPLE_RATE)  # unusable clips skipped; none usable: AudioError
        if not latents:
            return {"voice_samples": clips}
        latents.append(tts.get_conditioning_latents(clips, generator=torch.Generator().manual_seed(seed)))
    return {"conditioning_latents": average_latents(latents)}


def resolve_seed(seed: int | None) -> int:
    import time

    return int(time.time()) % (2 ** 31) if seed is None else seed
