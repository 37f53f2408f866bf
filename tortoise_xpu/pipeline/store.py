"""The model store: every network of a device process, loaded once and shared by its runs.

A :class:`ModelStore` owns the Backend and the models folder.  It loads each network the first
time a run asks for it (one load even when several threads ask at once: a lock per model), in
the dtype and preparation the run's Policy gives it (``ModelSpec.preparation``: weight-first AR
linears, the diffusion decoder's layer autocast), from the official file or from a fine-tuned
override (``checkpoints``), always through the same strict loader.  Loaded models are keyed by
(file, preparation), so a run never finds a model prepared for another Policy.

Residency is the store's decision, made once (``resident``):

* **resident**: each model is moved to the device when it is loaded and stays there.  Runs only
  read the models, so any number of runs may use them at once.
* **per stage** (low VRAM): models live on the host; :meth:`ModelStore.on_device` copies one to
  the device for a stage and drops the device copy afterwards, prefetching the run's next model
  meanwhile.  A model's place then changes under a run's feet, so device use is serialised: a
  run holds the store's *device lease* while any of its models is on the device, and another
  run's stage waits for it.  Runs interleave stage by stage, never inside one; a stream holds
  the lease for its whole life (its AR and HiFi-GAN models stay on the device between chunks),
  so in per-stage mode other runs wait for a stream to finish.  A run started in the thread
  where a paused stream holds the lease would wait for itself: it fails with a one-line error.

The store also lends AR decode engines (pipeline/decode.py) out of a small pool: an engine's
buffers and graphs belong to one run at a time and are reused by the next run of the same shape.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from tortoise_xpu.errors import TortoiseError, UserError

__all__ = ["IDLE_ENGINES", "ModelStore", "weight_dtype"]

#: Idle decode engines kept per decode configuration (one for batch runs, one for a stream, as a
#: single-run process needs); more are made while runs overlap and dropped when they finish.
IDLE_ENGINES = 2


def weight_dtype(module: nn.Module) -> torch.dtype:
    """The floating-point dtype a prepared module's weights are stored in (its inputs must match:
    the Policy's stage dtype, or float32 for the edges of a layer-autocast diffusion decoder)."""
    return next(p.dtype for p in module.parameters() if p.is_floating_point())


class ModelStore:
    """Loads, prepares and places the networks of one device process; shared by concurrent runs.

    Args:
        backend: the Backend the models run on.
        models_dir: the folder of the official model and data files.
        resident: True: models stay on the device; False: each is moved there for its stage only
            (see the module docstring for what that means for concurrent runs).
        checkpoints: file overrides per network, e.g. ``{"autoregressive": "my-finetune.pth"}``
            (keys: registry names or aliases such as ``diffusion``, ``clvp``, ``vocoder``); each
            is loaded as strictly as the official file.
        auto_download: fetch missing official files from the asset registry's sources.
        download_progress: show a progress bar while downloading.
        tokenizer_basic: use the basic text cleaners instead of the English ones.

    Raises:
        UserError: an override names an unknown network or a file that does not exist.
    """

    def __init__(self, backend: Any, models_dir: str | os.PathLike, *, resident: bool = True,
                 checkpoints: Mapping[str, str | os.PathLike] | None = None, auto_download: bool = True,
                 download_progress: bool = False, tokenizer_basic: bool = False):
        self.backend = backend
        self.device = backend.device
        self.models_dir = Path(models_dir)
        self.resident = bool(resident)
        self.auto_download = auto_download
        self.download_progress = download_progress
        self.tokenizer_basic = tokenizer_basic
        self.checkpoints = self.check_overrides(checkpoints or {})
        self._lock = threading.Lock()  # guards the dicts below (never held while loading)
        self._key_locks: dict[Any, threading.Lock] = {}
        self._models: dict[tuple, nn.Module] = {}
        self._installed: dict[str, nn.Module] = {}
        self._assets: dict[str, Any] = {}
        self._engines: dict[tuple, list[Any]] = {}
        self._shuttle = None
        self._lease = threading.Condition()
        self._lease_owner: Any = None
        self._lease_thread: int | None = None  # the thread that last took or re-took the lease
        self._lease_depth = 0
        self._on_device_count: dict[int, int] = {}

    # ------------------------------------------------------------------ files
    @staticmethod
    def check_overrides(checkpoints: Mapping[str, str | os.PathLike]) -> dict[str, Path]:
        """``checkpoints`` keyed by checkpoint file name (``autoregressive.pth``), each path checked to
        exist; raises UserError naming an unknown network or a missing file."""
        from tortoise_xpu.models import registry

        out: dict[str, Path] = {}
        for name, path in checkpoints.items():
            if path is None:
                continue
            try:
                file = registry.spec(name).file
            except Exception:
                raise UserError(f"unknown network {name!r} for a checkpoint override; networks: "
                                f"{', '.join(sorted(s.split('.')[0] for s in registry.SPECS))}") from None
            p = Path(path).expanduser()
            if not p.is_file():
                raise UserError(f"the {file} override {p} does not exist")
            out[file] = p
        return out

    def path(self, name: str) -> Path:
        """The file network or data asset ``name`` is read from: its override if one was given, else
        the models folder's copy, downloaded first when missing and allowed."""
        from tortoise_xpu import assets

        file = assets.asset(name).name
        if file in self.checkpoints:
            return self.checkpoints[file]
        with self._lock_for(("file", file)):  # two runs missing one file download it once
            return assets.ensure(file, self.models_dir, auto_download=self.auto_download,
                                 progress=self.download_progress)

    def checkpoint_overrides(self) -> dict[str, str]:
        """The checkpoint overrides in use, file name -> path (for reports and ``--json``)."""
        return {file: str(path) for file, path in self.checkpoints.items()}

    # ------------------------------------------------------------------ data assets
    @property
    def tokenizer(self):
        """The BPE tokenizer (loaded once)."""
        def load():
            from tortoise_xpu.text.tokenizer import VoiceBpeTokenizer

            return VoiceBpeTokenizer(self.path("tokenizer.json"), use_basic_cleaners=self.tokenizer_basic)

        return self._asset("tokenizer", load)

    @property
    def mel_norms(self) -> torch.Tensor:
        """The AR conditioning mel's per-band norms (loaded once)."""
        def load():
            from tortoise_xpu.audio.mel import load_mel_norms

            return load_mel_norms(self.path("mel_norms.pth"))

        return self._asset("mel_norms", load)

    def aligner(self) -> Any:
        """The redaction stage's wav2vec2 CTC aligner on this store's backend (loaded once)."""
        def load():
            from tortoise_xpu.pipeline import redaction

            return redaction.load_aligner(self.backend)

        return self._asset("aligner", load)

    def _asset(self, key: str, load: Callable[[], Any]) -> Any:
        value = self._assets.get(key)
        if value is None:
            with self._lock_for(("asset", key)):
                value = self._assets.get(key)
                if value is None:
                    value = self._assets[key] = load()
        return value

    # ------------------------------------------------------------------ models
    def _lock_for(self, key: Any) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def model(self, name: str, policy: Any) -> nn.Module:
        """Network ``name`` prepared for ``policy``, loading it on first use (once, whatever the threads).

        Resident stores return it on the device; per-stage stores return the host copy (use
        :meth:`on_device` to run it)."""
        from tortoise_xpu.models import registry

        spec = registry.spec(name)
        installed = self._installed.get(spec.file)
        if installed is not None:
            return installed
        prep = spec.preparation(policy, self.backend)
        key = (spec.file, prep.key)
        model = self._models.get(key)
        if model is None:
            with self._lock_for(key):
                model = self._models.get(key)
                if model is None:
                    model = self._load(spec, prep, policy)
                    with self._lock:
                        self._models[key] = model
        return model

    def _load(self, spec: Any, prep: Any, policy: Any) -> nn.Module:
        from tortoise_xpu.models.loading import load_model

        model = load_model(spec.file, self.models_dir, dtype=prep.load_dtype, path=self.path(spec.file))
        model = prep.apply(model)
        model = self.backend.optimize(model, spec.run_dtype(policy))  # IPEX where asked for; else unchanged
        if self.resident:
            model = self.backend.to_device(model)
        return model

    def put(self, name: str, model: nn.Module) -> None:
        """Use ``model`` (already built and prepared) as network ``name`` for every Policy: tests and
        callers that build their networks themselves.  Resident stores move it to the device."""
        from tortoise_xpu.models import registry

        file = registry.spec(name).file
        if self.resident:
            model = self.backend.to_device(model)
        with self._lock:
            self._installed[file] = model

    def unload(self, name: str) -> None:
        """Forget every loaded copy of network ``name`` (the next run loads it again)."""
        from tortoise_xpu.models import registry

        file = registry.spec(name).file
        with self._lock:
            self._installed.pop(file, None)
            for key in [k for k in self._models if k[0] == file]:
                del self._models[key]

    def loaded(self) -> list[str]:
        """File names of the networks held (any preparation)."""
        with self._lock:
            return sorted({k[0] for k in self._models} | set(self._installed))

    def held_bytes(self) -> dict[str, int]:
        """Bytes of the tensors the held networks own, per device (``{"cpu": ..., "cuda:0": ...}``);
        shared tensors counted once."""
        with self._lock:
            models = list(self._models.values()) + list(self._installed.values())
        seen: set[int] = set()
        out: dict[str, int] = {}
        for m in models:
            for t in list(m.parameters()) + list(m.buffers()):
                if t.data_ptr() in seen:
                    continue
                seen.add(t.data_ptr())
                out[str(t.device)] = out.get(str(t.device), 0) + t.numel() * t.element_size()
        return out

    # ------------------------------------------------------------------ placement
    @contextlib.contextmanager
    def on_device(self, name: str, ctx: Any) -> Iterator[nn.Module]:
        """Network ``name`` on the device for one stage of the run ``ctx``.

        Resident: the model as loaded.  Per stage: the run takes the device lease (waiting while
        another run holds it), the model is copied over (the run's next model, from ``ctx.plan``,
        is prefetched meanwhile where the backend has a side stream), and on leaving its device copy
        is dropped and the device cache emptied; the lease is given back when the run's last
        model leaves the device.
        """
        model = self.model(name, ctx.policy)
        if self.resident:
            yield model
            return
        with self.device_lease(ctx):
            shuttle = self._get_shuttle()
            key = id(model)
            if self._on_device_count.get(key, 0) == 0:
                model = shuttle.to_device(model)
            self._on_device_count[key] = self._on_device_count.get(key, 0) + 1
            following = ctx.next_model(name)
            if following is not None and following != name:
                shuttle.prefetch(self.model(following, ctx.policy))  # overlaps with this stage
            try:
                yield model
            finally:
                self._on_device_count[key] -= 1
                if self._on_device_count[key] == 0:
                    del self._on_device_count[key]
                    shuttle.offload(model)  # drops the device copy: the host copy is kept, nothing copied back
                    self.backend.empty_cache()

    def _get_shuttle(self):
        if self._shuttle is None:
            from tortoise_xpu.backends.offload import ModelShuttle

            self._shuttle = ModelShuttle(self.backend)
        return self._shuttle

    @contextlib.contextmanager
    def device_lease(self, owner: Any) -> Iterator[None]:
        """Hold the device for ``owner`` (a run's context); re-entrant for the same owner, released
        from whichever thread the owner's last block ends in (a stream may be advanced by several)."""
        me = threading.get_ident()
        with self._lease:
            while self._lease_owner is not None and self._lease_owner is not owner:
                if self._lease_thread == me:
                    # The holder last ran in this thread and is suspended (a paused stream): waiting
                    # here would wait for ourselves.  Fail with what to do instead of hanging.
                    raise TortoiseError("per-stage mode (--low-vram): a paused stream in this thread holds the "
                                        "device; finish or close it before starting another run here")
                self._lease.wait()
            self._lease_owner = owner
            self._lease_thread = me
            self._lease_depth += 1
        try:
            yield
        finally:
            with self._lease:
                self._lease_depth -= 1
                if self._lease_depth == 0:
                    self._lease_owner = None
                    self._lease_thread = None
                    self._lease.notify_all()

    def device_holder(self) -> Any:
        """The run (context) holding the device lease now, or None."""
        with self._lease:
            return self._lease_owner

    # ------------------------------------------------------------------ AR decode engines
    @contextlib.contextmanager
    def decode_engine(self, policy: Any, progress: Callable[[int, int], None] | None = None) -> Iterator[Any]:
        """An AR decode engine configured by ``policy`` (mode, bucket, compile, graphs), lent to one
        run until the block ends; its buffers and graphs are kept for the next run of that shape."""
        from tortoise_xpu.pipeline.decode import DecodeEngine

        key = (policy.decode_mode, policy.decode_bucket, policy.compile, policy.graph_capture)
        with self._lock:
            idle = self._engines.setdefault(key, [])
            engine = idle.pop() if idle else None
        if engine is None:
            engine = DecodeEngine(self.backend, mode=policy.decode_mode, graphs=policy.graph_capture,
                                  bucket=policy.decode_bucket, compile=policy.compile)
        engine.progress = progress
        try:
            yield engine
        finally:
            engine.progress = None
            if not self.resident:
                engine.release()  # per-stage mode: the KV cache and graphs leave with the model
            with self._lock:
                idle = self._engines.setdefault(key, [])
                if len(idle) < IDLE_ENGINES:
                    idle.append(engine)
