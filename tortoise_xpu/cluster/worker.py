"""The Ray worker: an actor holding one ``ChunkEngine`` (its own model store, loaded once).

The class is plain Python; ``cluster/executor.py`` wraps it with ``ray.remote`` and the
resources of its slot, so importing this module never needs Ray.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from tortoise_xpu.pipeline.chunk_synthesis import ChunkEngine, EngineSpec, VoiceMaterial
from tortoise_xpu.pipeline.longform import Task, TaskResult


class ChunkWorker:
    """One worker: builds its engine on its own device (resolved through the backend registry)."""

    def __init__(self, spec: EngineSpec, name: str):
        self.engine = ChunkEngine(spec)
        self.name = name

    def info(self) -> dict[str, Any]:
        """Who and where this worker is, and the fingerprint of its model files."""
        return {"name": self.name, "device": self.engine.device_name, "host": socket.gethostname(),
                "pid": os.getpid(), "models": self.engine.models_fingerprint(),
                "threads": torch.get_num_threads()}

    def voice_latents(self, material: VoiceMaterial | None, seed: int) -> tuple[torch.Tensor, torch.Tensor] | dict:
        """A voice's latents (computed once per job on one worker; the result is shared by reference),
        or ``{"error": (kind, message)}`` when the voice itself is unusable."""
        from tortoise_xpu.errors import TortoiseError, UserError

        try:
            return self.engine.voice_latents(material, seed)
        except UserError as exc:
            return {"error": ("user", str(exc))}
        except TortoiseError as exc:
            return {"error": ("runtime", str(exc))}

    def run(self, task: Task, latents: tuple[torch.Tensor, torch.Tensor]) -> TaskResult:
        """Synthesise one chunk; bad input or a device failure comes back as the result's error."""
        return self.engine.run_task(task, latents, self.name)
