"""Reading files a stranger can hand us (latents, checkpoints, safetensors, manifests) without
letting them run code or exhaust the machine.

Every check runs before anything is materialised:

1. The file's size on disk is bounded (:class:`Limits` ``max_file_bytes``).
2. A torch ``.pth`` is a zip archive: its central directory is read with :mod:`zipfile` and the
   declared uncompressed sizes are bounded, per entry and in total, and an entry whose compression
   ratio is absurd (a zip bomb) is refused.  ``torch.save`` never compresses, so real files pass.
3. ``torch.load(weights_only=True, mmap=True)``: only tensors and plain containers are unpickled
   (a pickle naming any other global is refused as unsafe), and the storages stay mapped from the
   file instead of being copied into memory.
4. Every tensor found is checked: a dense strided layout, an allowed dtype, a view no larger than
   its storage (a 2 kB storage viewed with stride 0 as 12 GB is refused before anything copies
   it), the sum of all views within the limit, and, where asked, finite values.

A safetensors file gets the same treatment from its JSON header (dtypes, shapes and offsets
against the file's size) before the library maps it.  Every loader takes ``label``, the name its
messages give the file (default: its file name).  Errors are :class:`UnsafeFileError` (refused
as unsafe: code, bombs, oversize, overlapping views, wrong dtype, NaN) and :class:`CorruptFileError`
(unreadable), both ``UserError`` with one line that names the file.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from tortoise_xpu.errors import UserError

__all__ = ["Limits", "UnsafeFileError", "CorruptFileError", "LATENTS", "CHECKPOINT", "MEL_NORMS", "MANIFEST", "TOKENIZER",
           "FLOAT_DTYPES", "WEIGHT_DTYPES", "Archive", "check_archive", "check_tensors", "iter_tensors", "load_torch",
           "load_safetensors", "load_json", "check_file_size"]

_KIB, _MIB, _GIB = 1 << 10, 1 << 20, 1 << 30

#: Floating-point dtypes: what latents and mel norms must be.
FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
#: What a checkpoint may hold: floats plus the integer / bool buffers some modules keep.
WEIGHT_DTYPES = FLOAT_DTYPES | frozenset({torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
                                          torch.bool})


class UnsafeFileError(UserError):
    """A file refused as unsafe: it would run code, or unpack or expand beyond the limits, or it holds
    values of the wrong kind (integer or complex latents, NaN)."""


class CorruptFileError(UserError):
    """A file that cannot be parsed (truncated, garbage, not the format its name says).

    ``reason`` is the parser's complaint without the file name, for callers that word their own message.
    """

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True)
class Limits:
    """What one kind of untrusted file may hold.

    Attributes:
        max_file_bytes: size on disk.
        max_total_bytes: the archive's uncompressed entries together, and the bytes of every tensor
            view together (what materialising all of them would cost).
        max_entry_bytes: one uncompressed archive entry (one storage).
        max_ratio: refuse an archive entry compressed more than this (a zip bomb).
        max_tensors: tensors in the file.
        max_numel: elements of one tensor.
        dtypes: allowed tensor dtypes.
        finite: refuse NaN and infinities in floating-point tensors.
        allow_legacy: accept the pre-1.6 (non-zip) torch format, whose sizes cannot be checked before
            loading (kept for old checkpoints; each storage is still bounded by the file's size).
    """

    max_file_bytes: int
    max_total_bytes: int
    max_entry_bytes: int
    max_ratio: float = 50.0
    max_tensors: int = 10_000
    max_numel: int = 1 << 31
    dtypes: frozenset = WEIGHT_DTYPES
    finite: bool = True
    allow_legacy: bool = False


#: Conditioning latents: two (1, D) float vectors of a few kB.
LATENTS = Limits(max_file_bytes=16 * _MIB, max_total_bytes=16 * _MIB, max_entry_bytes=16 * _MIB, max_tensors=16,
                 max_numel=1 << 20, dtypes=FLOAT_DTYPES)
#: Model checkpoints: the largest official one (autoregressive.pth) is 1.7 GB of float32.
CHECKPOINT = Limits(max_file_bytes=8 * _GIB, max_total_bytes=8 * _GIB, max_entry_bytes=4 * _GIB,
                    allow_legacy=True)
#: mel_norms.pth: 80 floats.
MEL_NORMS = Limits(max_file_bytes=1 * _MIB, max_total_bytes=1 * _MIB, max_entry_bytes=1 * _MIB, max_tensors=4,
                   max_numel=4096, dtypes=FLOAT_DTYPES)
#: tokenizer.json: the official one is 4.4 kB.
TOKENIZER = Limits(max_file_bytes=16 * _MIB, max_total_bytes=16 * _MIB, max_entry_bytes=16 * _MIB)
#: JSON manifests and similar small documents.
MANIFEST = Limits(max_file_bytes=256 * _MIB, max_total_bytes=256 * _MIB, max_entry_bytes=256 * _MIB)


# ------------------------------------------------------------------------------------ sizes

def check_file_size(path: str | os.PathLike, limits: Limits, label: str | None = None) -> int:
    """The size of ``path`` in bytes; :class:`UnsafeFileError` when over ``limits.max_file_bytes``,
    :class:`CorruptFileError` when it is not a readable regular file."""
    path = Path(path)
    name = label or path.name
    try:
        st = path.stat()
    except OSError as exc:
        raise CorruptFileError(f"{name}: {exc.strerror or exc}", exc.strerror or str(exc)) from None
    if not path.is_file():
        raise CorruptFileError(f"{name} is not a regular file", "not a regular file")
    if st.st_size > limits.max_file_bytes:
        raise UnsafeFileError(f"{name} was refused as unsafe: it is {_size(st.st_size)}, more than the "
                              f"{_size(limits.max_file_bytes)} such a file may be")
    return st.st_size


@dataclass(frozen=True)
class Archive:
    """What :func:`check_archive` found in a zip archive's directory."""

    entries: int
    unpacked_bytes: int
    compressed: bool  # some entry is compressed (torch never writes one: such a file cannot be mapped)


def check_archive(path: str | os.PathLike, limits: Limits, label: str | None = None) -> Archive | None:
    """Bound what a zip archive (torch's ``.pth`` format) would unpack to, from its central directory.

    Returns an :class:`Archive` for a zip archive that passes, None for a file that is not a zip
    archive (the legacy torch format, or garbage; the caller decides).  Raises :class:`UnsafeFileError` for too
    many or too large entries or an absurd compression ratio, :class:`CorruptFileError` for a
    broken archive.
    """
    path = Path(path)
    name = label or path.name
    size = check_file_size(path, limits, label)
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            entries = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, EOFError,
            struct.error) as exc:
        reason = f"broken zip archive: {_first_line(exc)}"
        raise CorruptFileError(f"{name} is truncated or corrupt ({reason})", reason) from None
    if len(entries) > limits.max_tensors + 16:
        raise UnsafeFileError(f"{name} was refused as unsafe: its archive has {len(entries)} entries, more "
                              f"than such a file holds ({limits.max_tensors + 16})")
    total = 0
    compressed = False
    for e in entries:
        if e.file_size > limits.max_entry_bytes:
            raise UnsafeFileError(f"{name} was refused as unsafe: entry {e.filename!r} would unpack to "
                                  f"{_size(e.file_size)} (at most {_size(limits.max_entry_bytes)})")
        if e.compress_type != zipfile.ZIP_STORED:
            compressed = True
            ratio = e.file_size / max(1, e.compress_size)
            if ratio > limits.max_ratio:
                raise UnsafeFileError(f"{name} was refused as unsafe: entry {e.filename!r} is compressed "
                                      f"{ratio:.0f}:1 ({_size(e.compress_size)} unpacking to {_size(e.file_size)}), "
                                      f"a zip bomb")
        elif e.file_size != e.compress_size:
            reason = f"entry {e.filename!r} declares inconsistent sizes"
            raise CorruptFileError(f"{name} is truncated or corrupt ({reason})", reason)
        total += e.file_size
    if total > limits.max_total_bytes or total > limits.max_ratio * size + _MIB:
        raise UnsafeFileError(f"{name} was refused as unsafe: its archive would unpack to {_size(total)} "
                              f"from {_size(size)} on disk (at most "
                              f"{_size(min(limits.max_total_bytes, int(limits.max_ratio * size + _MIB)))})")
    return Archive(entries=len(entries), unpacked_bytes=total, compressed=compressed)


# ------------------------------------------------------------------------------------ tensors

def _printable(key: Any) -> str:
    """A key as it can stand in a one-line message: control characters escaped, length bounded
    (a stranger's file may name its entries anything)."""
    text = str(key)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 80 else text[:77] + "..."


def iter_tensors(obj: Any, max_items: int = 1_000_000) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts / lists / tuples, with a dotted path; iterative (a deeply
    nested pickle cannot overflow the stack) and bounded in the number of objects visited."""
    stack: list[tuple[str, Any]] = [("", obj)]
    seen = 0
    while stack:
        where, item = stack.pop()
        seen += 1
        if seen > max_items:
            raise UnsafeFileError(f"holds more than {max_items} objects")
        if isinstance(item, torch.Tensor):
            yield where or "<root>", item
        elif isinstance(item, dict):
            stack.extend((f"{where}.{_printable(k)}" if where else _printable(k), v)
                         for k, v in reversed(list(item.items())))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item))))


def check_tensors(obj: Any, limits: Limits, name: str) -> None:
    """Check every tensor of a loaded object against ``limits`` without copying any of them.

    Raises :class:`UnsafeFileError` naming the file (``name``) and the tensor.
    """
    count = 0
    total = 0
    try:
        tensors = list(iter_tensors(obj))
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{name} was refused as unsafe: it {exc}") from None
    for where, t in tensors:
        count += 1
        if count > limits.max_tensors:
            raise UnsafeFileError(f"{name} was refused as unsafe: it holds more than {limits.max_tensors} tensors")
        bad = _tensor_problem(t, limits)
        if bad:
            raise UnsafeFileError(f"{name} was refused as unsafe: tensor {where} {bad}")
        total += t.numel() * t.element_size()
        if total > limits.max_total_bytes:
            raise UnsafeFileError(f"{name} was refused as unsafe: its tensors would take more than "
                                  f"{_size(limits.max_total_bytes)} once copied")
    if limits.finite:
        for where, t in tensors:
            if t.is_floating_point() and t.numel() and not _all_finite(t):
                raise UnsafeFileError(f"{name} was refused: tensor {where} holds NaN or infinite values")


def _tensor_problem(t: torch.Tensor, limits: Limits) -> str | None:
    """Why tensor ``t`` may not be used (None when fine); reads metadata only."""
    if t.layout != torch.strided or t.is_quantized or getattr(t, "is_nested", False):
        return f"has layout {t.layout}; only dense tensors are accepted"
    if t.device.type not in ("cpu", "meta"):
        return f"is on device {t.device}"
    if t.dtype not in limits.dtypes:
        kinds = ", ".join(sorted(str(d).replace("torch.", "") for d in limits.dtypes))
        return f"has dtype {str(t.dtype).replace('torch.', '')}; expected one of {kinds}"
    numel = t.numel()
    if numel > limits.max_numel:
        return f"has {numel:,} elements (shape {tuple(t.shape)}), more than {limits.max_numel:,}"
    if any(s < 0 for s in t.stride()):
        return "has negative strides"
    if numel:
        storage_bytes = t.untyped_storage().nbytes()
        view_bytes = numel * t.element_size()
        if view_bytes > storage_bytes:
            return (f"is a view of {_size(view_bytes)} (shape {tuple(t.shape)}, strides {tuple(t.stride())}) "
                    f"over {_size(storage_bytes)} of storage: an expanded or overlapping tensor that would "
                    f"grow {view_bytes / max(1, storage_bytes):.0f}-fold when copied")
    return None


def _all_finite(t: torch.Tensor, block: int = 1 << 22) -> bool:
    """``isfinite(t).all()`` in blocks, so the bool mask never costs more than a few MB."""
    flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
    for i in range(0, flat.numel(), block):
        if not bool(torch.isfinite(flat[i:i + block]).all()):
            return False
    return True


# ------------------------------------------------------------------------------------ loaders

def load_torch(path: str | os.PathLike, limits: Limits, label: str | None = None) -> Any:
    """``torch.load`` a file from a stranger: archive checks, weights-only unpickling, memory mapping,
    then :func:`check_tensors`.

    Raises:
        UnsafeFileError: code-carrying pickle, zip bomb, oversize, overlapping view, bad dtype, NaN.
        CorruptFileError: truncated, garbage, not a torch file.
    """
    path = Path(path)
    name = label or path.name
    archive = check_archive(path, limits, label)
    if archive is None and not limits.allow_legacy:
        reason = "not a torch zip archive"
        raise CorruptFileError(f"{name} is not a torch file ({reason})", reason)
    # Mapped where the storages lie in the file as they are (torch's own archives); a compressed
    # entry (within the ratio bound) must be unpacked by the reader instead.
    mmap = archive is not None and not archive.compressed
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only load failed" in text.lower() or "weightsunpickler" in text.lower():
            raise UnsafeFileError(f"{name} was refused as unsafe: it holds more than tensors "
                                  f"({unpickler_reason(text)}), and unpickling that could run code; "
                                  f"only plain weight files are accepted") from None
        reason = _first_line(exc)
        raise CorruptFileError(f"{name} is truncated or corrupt ({reason})", reason) from None
    except MemoryError:
        raise UnsafeFileError(f"{name} was refused as unsafe: loading it ran out of memory") from None
    # Garbage makes the unpickler fail in many ways (IndexError, struct.error, RuntimeError...).
    except Exception as exc:  # noqa: BLE001
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        raise CorruptFileError(f"{name} is truncated or corrupt ({reason})", reason) from None
    check_tensors(obj, limits, name)
    return obj


_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
              "BOOL": 1}
_ST_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
_ST_MAX_HEADER = 64 * _MIB


def check_safetensors_header(path: str | os.PathLike, limits: Limits,
                             label: str | None = None) -> dict[str, Any]:
    """Read and check a safetensors header: JSON within bounds, every entry's dtype allowed, its
    shape matching its byte range, every range inside the file.  Returns the header."""
    path = Path(path)
    name = label or path.name
    size = check_file_size(path, limits, label)

    def corrupt(reason: str) -> CorruptFileError:
        return CorruptFileError(f"{name} is truncated or corrupt ({reason})", reason)

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt("shorter than a safetensors header")
        n = struct.unpack("<Q", head)[0]
        if n > _ST_MAX_HEADER or n > size - 8:
            raise corrupt(f"header length {n} does not fit the file")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise corrupt(f"header is not JSON: {_first_line(exc)}") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    data_bytes = size - 8 - n
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > limits.max_tensors:
        raise UnsafeFileError(f"{name} was refused as unsafe: it holds {len(entries)} tensors "
                              f"(at most {limits.max_tensors})")
    for key, e in entries.items():
        if not (isinstance(e, dict) and isinstance(e.get("dtype"), str) and isinstance(e.get("shape"), list)
                and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                        for x in e["shape"] + e["data_offsets"])):
            raise corrupt(f"entry {key!r} is malformed")
        if e["dtype"] not in _ST_DTYPES:
            raise UnsafeFileError(f"{name} was refused as unsafe: tensor {_printable(key)} has dtype "
                                  f"{_printable(e['dtype'])}")
        if _ST_TORCH[e["dtype"]] not in limits.dtypes:
            raise UnsafeFileError(f"{name} was refused as unsafe: tensor {_printable(key)} has dtype "
                                  f"{_printable(e['dtype'])}")
        numel = 1
        for d in e["shape"]:
            numel *= d
        if numel > limits.max_numel:
            raise UnsafeFileError(f"{name} was refused as unsafe: tensor {_printable(key)} has {numel:,} elements")
        begin, end = e["data_offsets"]
        if not begin <= end <= data_bytes or end - begin != numel * _ST_DTYPES[e["dtype"]]:
            raise corrupt(f"entry {key!r} has offsets {begin}..{end} that do not fit its shape or the file")
    return header


def load_safetensors(path: str | os.PathLike, limits: Limits, label: str | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file as a dict of CPU tensors, after :func:`check_safetensors_header`, then
    :func:`check_tensors` (finiteness)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    name = label or path.name
    check_safetensors_header(path, limits, label)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = _first_line(exc)
        raise CorruptFileError(f"{name} is truncated or corrupt ({reason})", reason) from None
    check_tensors(state, limits, name)
    return state


def load_json(path: str | os.PathLike, limits: Limits = MANIFEST, label: str | None = None) -> Any:
    """A JSON document, its size bounded before it is read; :class:`CorruptFileError` when it is
    not JSON (nesting too deep for the parser included)."""
    path = Path(path)
    name = label or path.name
    check_file_size(path, limits, label)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        reason = _first_line(exc)
        raise CorruptFileError(f"{name} is not valid JSON ({reason})", reason) from None
    except OSError as exc:
        raise CorruptFileError(f"{name}: {exc.strerror or exc}", exc.strerror or str(exc)) from None


# ------------------------------------------------------------------------------------ messages

def unpickler_reason(text: str) -> str:
    """What torch's weights-only unpickler objected to, without its advice to turn the check off
    (e.g. "Unsupported global: GLOBAL os.system")."""
    for line in text.splitlines():
        if "WeightsUnpickler error" in line:
            detail = line.split("WeightsUnpickler error:", 1)[-1].strip()
            for cut in (" was not an allowed global", ". Please use", " Please use"):
                detail = detail.split(cut, 1)[0]
            if "weights_only" not in detail and detail:
                return detail[:120]
    return "objects other than tensors"


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    line = lines[0].strip() if lines else type(exc).__name__
    if "weights_only" in line:  # never echo torch's hint to load without the safety check
        line = "unreadable"
    return line if len(line) <= 160 else line[:157] + "..."


def _size(n: int) -> str:
    for unit, scale in (("GB", _GIB), ("MB", _MIB), ("kB", _KIB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
