"""Reading and writing checkpoint files, and loading them strictly into their networks.

* :func:`load_state` reads a ``.pth`` or ``.safetensors`` file through :mod:`tortoise_xpu.safeload`
  (archive sizes bounded, ``torch.load(weights_only=True, mmap=True)``, every tensor's dtype, view
  size and finiteness checked); a truncated, corrupt or unsafe file raises :class:`ModelFileError`
  naming it.
* :func:`load_model` builds the network of a file, converts the file content with the class's
  ``convert_state_dict`` and loads it with ``strict=True``.  Any missing, unexpected or
  mis-shaped key fails with a short report, and names the file the content looks like instead
  when it fits another known network better.
* :func:`convert_to_safetensors` writes the converted state dict as safetensors (no pickle,
  memory-mapped loading); :func:`write_random_weights` writes random weights in the official
  file format for benchmarks and load tests.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from tortoise_xpu import safeload
from tortoise_xpu.assets import catalogue, folder
from tortoise_xpu.errors import ModelFileError
from tortoise_xpu.fileio import atomic_path
from tortoise_xpu.models import registry

#: safetensors metadata marking a file written by :func:`convert_to_safetensors`: it already holds
#: the module's state dict, so no ``convert_state_dict`` is applied when loading it.
_ST_FORMAT = "tortoise-xpu/module-state-dict"


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def load_state(path: str | os.PathLike) -> Any:
    """The content of a checkpoint file, tensors on the CPU.

    ``.safetensors`` files give a flat dict of tensors; anything else goes through
    :func:`tortoise_xpu.safeload.load_torch` with the ``CHECKPOINT`` limits (memory-mapped; files in
    the pre-1.6 legacy format, which cannot be mapped, are read whole).  Missing, empty, truncated, corrupt or
    code-carrying files raise :class:`ModelFileError` with the file name.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ModelFileError(f"{name}: no such file ({path})")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{name} is empty (0 bytes): an interrupted download? fetch it again")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:  # bounded archive, weights-only unpickling, memory-mapped, every tensor checked (safeload.py)
        return safeload.load_torch(path, safeload.CHECKPOINT)
    except safeload.CorruptFileError as exc:
        raise ModelFileError(f"{name} is truncated or corrupt ({exc.reason}); fetch it again") from None
    except safeload.UnsafeFileError as exc:
        raise ModelFileError(str(exc)) from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safeload.load_safetensors(path, safeload.CHECKPOINT)
    except safeload.CorruptFileError as exc:
        raise ModelFileError(f"{path.name} is truncated or corrupt ({exc.reason}); "
                             f"convert or fetch it again") from None
    except safeload.UnsafeFileError as exc:
        raise ModelFileError(str(exc)) from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file ({} when none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."


# --------------------------------------------------------------------------------------------
# Strict loading with a readable report
# --------------------------------------------------------------------------------------------

@dataclass
class LoadReport:
    """How a state dict fits a module: keys missing from the file, extra in the file, mis-shaped."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, file shape, model shape

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 3) -> str:
        """``2 missing keys (a, b), 1 unexpected key (c), 1 shape mismatch (d: file (2,) vs model (3,))``."""
        parts = []

        def few(items: list[str]) -> str:
            shown = ", ".join(items[:limit])
            return shown + (f", … {len(items) - limit} more" if len(items) > limit else "")

        if self.missing:
            parts.append(f"{_n(len(self.missing), 'missing key')} ({few(self.missing)})")
        if self.unexpected:
            parts.append(f"{_n(len(self.unexpected), 'unexpected key')} ({few(self.unexpected)})")
        if self.mismatched:
            items = [f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched]
            parts.append(f"{_n(len(self.mismatched), 'shape mismatch', 'shape mismatches')} ({few(items)})")
        return ", ".join(parts) if parts else "all keys match"


def _n(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def check_state_dict(model: nn.Module, state_dict: dict[str, Any]) -> LoadReport:
    """Compare ``state_dict`` with ``model.state_dict()`` (names and shapes; works on meta)."""
    want = model.state_dict()
    report = LoadReport()
    for key, ref in want.items():
        if key not in state_dict:
            report.missing.append(key)
            continue
        got = state_dict[key]
        got_shape = tuple(got.shape) if isinstance(got, torch.Tensor) else None
        if got_shape != tuple(ref.shape):
            report.mismatched.append((key, got_shape if got_shape is not None else (type(got).__name__,),
                                      tuple(ref.shape)))
    report.unexpected = [k for k in state_dict if k not in want]
    return report


def recorded_config(name: str, directory: str | os.PathLike | None, st_meta: dict[str, str] | None = None) -> Any:
    """The config the file of ``name`` was written with, where that was recorded; else None.

    Two places record it, both as :func:`~tortoise_xpu.models.registry.config_record` (the
    constructor arguments): the ``config`` metadata of a safetensors file written by
    :func:`convert_to_safetensors`, and the ``config`` of the file's entry in the folder's manifest
    (written by :func:`write_random_weights`).  Official files carry no record: None means the
    official config.
    """
    s = registry.spec(name)
    record: Any = None
    if st_meta and st_meta.get("config"):
        try:
            record = json.loads(st_meta["config"])
        except ValueError:
            record = None
    if record is None and directory is not None:
        record = (folder.read_manifest(directory).get(s.file) or {}).get("config")
    return s.config_from_record(record) if isinstance(record, dict) else None


def load_model(name: str, models_dir: str | os.PathLike | None = None, config: Any = None,
               dtype: torch.dtype | None = None, *, path: str | os.PathLike | None = None) -> nn.Module:
    """Build the network of checkpoint ``name`` and load its file strictly; returns it in eval
    mode on the CPU.

    The file is found with :func:`tortoise_xpu.assets.require` (a converted ``.safetensors``
    first) unless ``path`` is given.  ``config`` is a config instance, a preset name
    (``"official"``, ``"tiny"``) or None: the config the file records (:func:`recorded_config`),
    else the official one.  ``dtype`` casts the floating-point weights (default: the network's
    own, float32).

    The network is built on the meta device and the file's tensors are assigned to it, so a
    full-size model costs no random initialisation and no second copy of its weights (when the
    module keeps non-persistent buffers or shares parameters it is built on the CPU instead).
    Raises :class:`ModelFileError` for a missing, unreadable or non-matching file.
    """
    s = registry.spec(name)
    if path is not None:
        file_path = Path(path)
        directory = Path(models_dir) if models_dir is not None else file_path.parent
    else:
        directory = folder.models_dir(models_dir)
        file_path = folder.require(s.file, directory)
    raw = load_state(file_path)
    st_meta = safetensors_metadata(file_path) if file_path.suffix == ".safetensors" else {}
    if st_meta.get("format") == _ST_FORMAT:
        state = raw  # converted by us: already the module's state dict
    else:
        state = _convert_or_explain(s, raw, file_path.name)
    if config is None:
        config = recorded_config(s.file, directory, st_meta)

    model = registry.build(s.file, config, device="meta")
    report = check_state_dict(model, state)
    if s.extra_keys_ignored and report.unexpected and not (report.missing or report.mismatched):
        import warnings

        warnings.warn(f"{file_path.name}: ignoring {report.summary()} that the network does not use "
                      f"(the original loads this file with strict=False too)", stacklevel=2)
        state = {k: v for k, v in state.items() if k not in set(report.unexpected)}
        report = check_state_dict(model, state)
    if not report.ok:
        raise ModelFileError(_mismatch_message(file_path.name, s, report, raw))

    state = _cast_like(model, state, dtype)
    if _assign_is_safe(model):
        model.load_state_dict(state, strict=True, assign=True)
        if _has_meta_tensors(model):
            model = _load_copy(s, config, state)
    else:
        model = _load_copy(s, config, state)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _convert_or_explain(s: registry.ModelSpec, raw: Any, file_name: str) -> dict[str, torch.Tensor]:
    """``convert_state_dict`` of the spec's class, with foreign content reported as a ModelFileError."""
    try:
        state = registry.convert(s.file, raw)
        problem = None if isinstance(state, dict) else f"it holds a {type(raw).__name__}"
    except ModelFileError:
        raise
    except Exception as exc:  # the converter choked on content it was not made for
        problem = f"{type(exc).__name__}: {_first_line(exc)}"
    if problem is not None:
        raise ModelFileError(f"{file_name} cannot be read as {s.file} ({problem}){_looks_like(raw, s.file)}")
    return state


def _cast_like(model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Cast floating tensors to ``dtype`` (or to the module's own dtype for each key)."""
    ref = model.state_dict()
    out = {}
    for k, v in state.items():
        target = dtype if (dtype is not None and v.is_floating_point()) else ref[k].dtype
        out[k] = v if v.dtype == target or not v.is_floating_point() else v.to(target)
    return out


def _assign_is_safe(model: nn.Module) -> bool:
    """Assigning tensors breaks shared parameters and leaves non-persistent buffers on meta."""
    seen = set()
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            return False
        seen.add(id(p))
    # A buffer missing from state_dict() is non-persistent: assigning would leave it on meta.
    return {k for k, _ in model.named_buffers()} <= set(model.state_dict())


def _has_meta_tensors(model: nn.Module) -> bool:
    """Whether any tensor of the module is still on meta: a parameter or buffer, or a plain tensor
    attribute (e.g. a cached reference to a weight taken in ``__init__``) that assigning missed."""
    for m in model.modules():
        tensors = list(m._parameters.values()) + list(m._buffers.values())
        tensors += [v for v in vars(m).values() if isinstance(v, torch.Tensor)]
        if any(t is not None and t.is_meta for t in tensors):
            return True
    return False


def _load_copy(s: registry.ModelSpec, config: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    model = registry.build(s.file, config, device="cpu")
    model.load_state_dict(state, strict=True)
    return model


def _mismatch_message(file_name: str, s: registry.ModelSpec, report: LoadReport, raw: Any) -> str:
    msg = f"{file_name} does not fit {s.class_name} ({s.file}): {report.summary()}"
    hint = _looks_like(raw, s.file)
    if hint:
        return msg + hint
    if not report.missing and not report.unexpected:
        return msg + "; every key is there but shapes differ, so the file was made with another configuration"
    return msg


def _looks_like(raw: Any, target: str) -> str:
    """``"; this looks like clvp2.pth, not autoregressive.pth"`` when another network fits better."""
    ranked = registry.identify(raw)
    if not ranked:
        return ""
    best, keys, shapes = ranked[0]
    if best == target:
        return ""
    own = next((r for r in ranked if r[0] == target), (target, 0.0, 0.0))
    if (keys, shapes) <= (own[1], own[2]) or keys < 0.6:
        return ""
    return f"; this looks like {best}, not {target}"


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each owning its memory (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().contiguous()
        key = (v.untyped_storage().data_ptr(), v.device.type)
        if key in seen or v.untyped_storage().nbytes() != v.numel() * v.element_size():
            v = v.clone()
        seen.add((v.untyped_storage().data_ptr(), v.device.type))
        out[k] = v
    return out


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike | None = None,
                           name: str | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write checkpoint ``src`` as safetensors holding the module's state dict; returns ``dst``.

    ``name`` is the checkpoint it holds (default: ``src``'s file name, which must be a known one);
    the file is converted with that network's ``convert_state_dict`` and checked strictly against
    the network of the config the file records (:func:`recorded_config`; else the official one)
    first, so a broken file is not converted; the config goes into the safetensors metadata.
    ``dst`` defaults to ``src`` with the ``.safetensors`` suffix; it is written atomically.
    """
    from safetensors.torch import save_file

    src = Path(src)
    s = registry.spec(name or src.name)
    dst = Path(dst) if dst is not None else src.with_suffix(".safetensors")
    if dst.resolve() == src.resolve():
        raise ModelFileError(f"{src.name}: the destination is the source")
    raw = load_state(src)
    state = _convert_or_explain(s, raw, src.name)
    config = recorded_config(s.file, src.parent) or s.config("official")
    report = check_state_dict(registry.build(s.file, config, device="meta"), state)
    if not report.ok:
        raise ModelFileError(_mismatch_message(src.name, s, report, raw))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = {"format": _ST_FORMAT, "model": s.file, "class": s.class_name, "source": src.name,
            "config": json.dumps(registry.config_record(config), sort_keys=True)}
    with atomic_path(dst) as tmp:
        save_file(_unshared(state), str(tmp), metadata=meta)
    return dst


def save_checkpoint(name: str, state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a module state dict to ``path`` in the official file format of ``name`` (atomic)."""
    obj = registry.to_checkpoint(name, {k: v.detach().contiguous() for k, v in state_dict.items()})
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # Saved through a file object, the archive's inner folder is "archive" rather than the
        # (random) temporary file name, so equal weights give byte-identical files.
        torch.save(obj, f)
    return path


@torch.no_grad()
def _perturb_constants(model: nn.Module, generator: torch.Generator, std: float = 0.02) -> int:
    """Add N(0, std) noise to every parameter whose values are all equal (zero biases, unit norm
    scales, zero-initialised output layers), so no path of a random model is multiplied by 0 or 1."""
    n = 0
    for p in model.parameters():
        if p.numel() and p.is_floating_point():
            flat = p.reshape(-1)
            if bool((flat == flat[0]).all()):
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)
                n += 1
    return n


@dataclass
class RandomWeightsRow:
    file: str
    model: str
    parameters: int
    bytes: int
    seconds: float
    sha256: str | None


def write_random_weights(out_dir: str | os.PathLike, names: Iterable[str] | None = None, seed: int = 1234,
                         tiny: bool = False, perturb: bool = True, sha: bool = True,
                         progress=None) -> list[RandomWeightsRow]:
    """Write random weights for ``names`` (default: every checkpoint) into ``out_dir``.

    Each network is built with its official config (or ``tiny()``) after
    ``torch.manual_seed(seed + i)`` (i: the file's index in the registry, so each file is
    reproducible on its own), constants perturbed unless ``perturb=False``, and saved in the
    official file format (``vocoder.pth`` as ``{'model_g': ...}`` with weight-norm pairs).  The
    folder's manifest records each file's sha256, seed and, for tiny files, the config record
    (:func:`~tortoise_xpu.models.registry.config_record`) that :func:`load_model` builds them with.  ``progress(file_name)`` is called
    before each file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [catalogue.asset(n).name for n in names] if names else list(registry.SPECS)
    preset = "tiny" if tiny else "official"
    rows = []
    for index, file in enumerate(registry.SPECS):
        if file not in wanted:
            continue
        if progress:
            progress(file)
        t0 = time.perf_counter()
        torch.manual_seed(seed + index)
        gen = torch.Generator().manual_seed(seed + index + 10_000)
        config = registry.SPECS[file].config(preset)
        model = registry.build(file, config, device="cpu")
        if perturb:
            _perturb_constants(model, gen)
        path = save_checkpoint(file, model.state_dict(), out / file)
        digest = folder.sha256_file(path) if sha else None
        size = path.stat().st_size
        extra = {"config": registry.config_record(config)} if tiny else {}
        folder.record(out, file, sha256=digest, size=size, source="random-weights", seed=seed + index,
                      init="perturb" if perturb else "torch", time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra)
        rows.append(RandomWeightsRow(file, registry.SPECS[file].class_name,
                                     registry.checkpoint_parameter_count(file, model), size,
                                     time.perf_counter() - t0, digest))
        del model
    return rows


def copy_data_files(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Copy tokenizer.json / mel_norms.pth from ``src_dir`` (e.g. an installed tortoise-tts'
    ``tortoise/data``) into ``out_dir`` after checking their sha256; returns the names copied."""
    from tortoise_xpu.fileio import atomic_write_bytes

    copied = []
    for a in catalogue.ASSETS.values():
        if a.model:
            continue
        src = Path(src_dir) / a.name
        if not src.is_file():
            continue
        data = src.read_bytes()
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        if a.sha256 and digest != a.sha256:
            raise ModelFileError(f"{src} is not the official {a.name} (sha256 {digest[:12]}…)")
        atomic_write_bytes(Path(out_dir) / a.name, data)
        folder.record(out_dir, a.name, sha256=digest, size=len(data), source=f"copy of {src}",
                      time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        copied.append(a.name)
    return copied


def write_standin_data(out_dir: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Write stand-ins for ``tokenizer.json`` and ``mel_norms.pth`` where ``out_dir`` has none.

    For random-weight folders (tests, benchmarks) on machines that cannot fetch the real files:
    a character-level BPE vocabulary with the official special and single-character ids
    (``[STOP]`` 0, ``[UNK]`` 1, ``[SPACE]`` 2, punctuation 3-13, a-z 14-39) and no merges, and
    80 mel norms spread over the official files' range.  They are recorded in the folder's manifest
    as ``stand-in``; ``models verify`` reports their checksum as different from the official one.
    """
    from tortoise_xpu.fileio import atomic_path, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if overwrite or not (out / catalogue.TOKENIZER_FILE).exists():
        symbols = ["[STOP]", "[UNK]", "[SPACE]", *"!'(),-./:;?", *"abcdefghijklmnopqrstuvwxyz"]
        vocab = {s: i for i, s in enumerate(symbols)}
        tokenizer = {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "special": True, "content": s, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False} for i, s in enumerate(symbols[:3])],
            "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "dropout": None, "unk_token": "[UNK]", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "vocab": vocab, "merges": []},
        }
        atomic_write_text(out / catalogue.TOKENIZER_FILE, json.dumps(tokenizer, indent=1))
        written.append(catalogue.TOKENIZER_FILE)
    if overwrite or not (out / catalogue.MEL_NORMS_FILE).exists():
        norms = torch.linspace(-9.482, -1.604, catalogue.N_MEL_NORMS)
        with atomic_path(out / catalogue.MEL_NORMS_FILE) as tmp:
            torch.save(norms, tmp)
        written.append(catalogue.MEL_NORMS_FILE)
    for name in written:
        folder.record(out, name, sha256=folder.sha256_file(out / name), source="stand-in",
                      time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return written
