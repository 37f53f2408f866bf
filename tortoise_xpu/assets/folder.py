"""The models folder: where it is, where each file lies in it, and its manifest of finished files.

The folder is chosen by :func:`models_dir`: ``--models-dir``, else ``$TORTOISE_XPU_MODELS``,
else the user cache (``$XDG_CACHE_HOME/tortoise-xpu/models`` or ``~/.cache/tortoise-xpu/models``).
A path that names a file (or lies under one) is refused there, with one line, before anything
tries to read or write in it.

Each finished download or generated file is recorded in a small manifest (:data:`MANIFEST_NAME`)
beside the files, so a later check can detect a file that changed on disk even where the
catalogue knows no hash.  Besides the sha256 and size, an entry may hold a ``config`` record:
the constructor arguments of the network the file was made for (see
:func:`tortoise_xpu.models.registry.config_record`), written by whoever writes a file that is
not made with the official configuration (``models random-weights --tiny``); the loader builds
that configuration instead of the official one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

from tortoise_xpu.assets.catalogue import asset
from tortoise_xpu.errors import ModelFileError

__all__ = [
    "ENV_MODELS", "MANIFEST_NAME", "download_command", "expected_checksum", "find", "is_sha256", "models_dir",
    "read_manifest", "record", "require", "sha256_file", "user_cache_dir",
]

ENV_MODELS = "TORTOISE_XPU_MODELS"

#: Per-folder record of finished downloads / generated files: {file: {sha256, size, ...}}.
MANIFEST_NAME = "tortoise-xpu-manifest.json"

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a sha256 hex digest (64 lower-case hex digits)."""
    return isinstance(value, str) and bool(_SHA256_RE.match(value))


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tortoise-xpu/models`` when XDG_CACHE_HOME is an absolute path, else
    ``~/.cache/tortoise-xpu/models``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "tortoise-xpu" / "models"


def _chosen(cli_value: str | os.PathLike | None) -> tuple[Path, str]:
    """The folder and what chose it, unchecked."""
    if cli_value:
        return Path(cli_value).expanduser(), "--models-dir"
    env = os.environ.get(ENV_MODELS)
    if env:
        return Path(env).expanduser(), f"${ENV_MODELS}"
    return user_cache_dir(), "the user cache"


def models_dir(cli_value: str | os.PathLike | None = None) -> Path:
    """The folder holding the model files: ``cli_value`` (``--models-dir``), else
    ``$TORTOISE_XPU_MODELS``, else :func:`user_cache_dir`.  The folder need not exist.

    Raises:
        ModelFileError: the path, or the first of its parents that exists, is not a folder
            (a file, a device): no model file could ever be found or written there.
    """
    d, origin = _chosen(cli_value)
    p = d
    while not p.exists():
        if p.parent == p:
            return d
        p = p.parent
    if not p.is_dir():
        what = "is a file" if p.is_file() else "is not a folder"
        where = f"{d} {what}" if p == d else f"{d} lies under {p}, which {what}"
        raise ModelFileError(f"models folder {where}; point {origin} at a folder")
    return d


def download_command(name: str, directory: Path | None = None) -> str:
    """The exact command that fetches ``name`` (with ``--models-dir`` when not the default)."""
    cmd = f"tortoise-xpu models download {name}"
    if directory is not None and Path(directory).expanduser().resolve() != _chosen(None)[0].resolve():
        cmd += f" --models-dir {_quote(str(directory))}"
    return cmd


def _quote(s: str) -> str:
    return s if re.fullmatch(r"[\w./~:\\-]+", s) else '"' + s.replace('"', '\\"') + '"'


def find(name: str, directory: str | os.PathLike | None = None) -> Path | None:
    """Where ``name`` lives in ``directory`` (default :func:`models_dir`), or None.

    Looks for, in order: a converted ``<stem>.safetensors`` (checkpoints only; skipped when the
    ``.pth`` beside it is newer), the file itself, and the original's Hugging Face cache layout
    (``models--Manmay--tortoise-tts/snapshots/<rev>/``, what tortoise-tts' own ``--model_dir``
    holds), so a folder filled by the original works as is.
    """
    a = asset(name)
    d = models_dir(directory)
    plain = d / a.name
    if a.model:
        converted = d / (Path(a.name).stem + ".safetensors")
        # A .pth fetched again after converting is newer than its stale conversion: use the .pth.
        if converted.is_file() and not (plain.is_file() and plain.stat().st_mtime > converted.stat().st_mtime):
            return converted
    if plain.is_file():
        return plain
    if a.source == "hf":
        repo_dir = d / ("models--" + a.repo.replace("/", "--"))
        snapshots = repo_dir / "snapshots"
        if snapshots.is_dir():
            ref = repo_dir / "refs" / "main"
            order = [ref.read_text().strip()] if ref.is_file() else []
            order += sorted(p.name for p in snapshots.iterdir() if p.name not in order)
            for rev in order:
                p = snapshots / rev / a.name
                if p.is_file():
                    return p
    return None


def require(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Like :func:`find`, but a missing file raises :class:`ModelFileError` naming the command
    that downloads it."""
    a = asset(name)
    d = models_dir(directory)
    p = find(a.name, d)
    if p is None:
        raise ModelFileError(f"{a.name} ({a.description}) is not in {d}; download it with: "
                             f"{download_command(a.name, d)}")
    return p


# --------------------------------------------------------------------------------------------
# Manifest of finished files
# --------------------------------------------------------------------------------------------

def read_manifest(directory: str | os.PathLike | None = None) -> dict[str, dict]:
    """The folder's record of finished downloads / generated files ({} when none or unreadable)."""
    p = models_dir(directory) / MANIFEST_NAME
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def record(directory: str | os.PathLike, name: str, **entry) -> None:
    """Add or replace ``name``'s entry in the folder's manifest (written atomically)."""
    from tortoise_xpu.fileio import atomic_write_text

    d = models_dir(directory)
    files = read_manifest(d)
    files[name] = entry
    atomic_write_text(d / MANIFEST_NAME, json.dumps({"format": 1, "files": files}, indent=1, sort_keys=True))


def sha256_file(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> str:
    """sha256 of a file, read in 1 MiB chunks; ``progress(n)`` is told each chunk's size."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def expected_checksum(name: str, directory: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """(sha256, where it comes from: ``"registry"``, ``"manifest"`` or ``"unknown"``) for ``name``."""
    a = asset(name)
    if a.sha256:
        return a.sha256, "registry"
    entry = read_manifest(directory).get(a.name) or {}
    sha = entry.get("sha256")
    if is_sha256(sha):
        return sha, "manifest"
    return None, "unknown"
