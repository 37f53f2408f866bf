"""Long-form reading: one WAV per chunk, a manifest, resume, a lock, a combined WAV.

The output folder is always consistent: a chunk's WAV appears under its final name
only when complete, and the manifest (``manifest.json``) is rewritten atomically after
every chunk.  Re-running on the same folder skips chunks already done (their text,
settings and file hash match) and never touches their files; ``regenerate`` names
chunks to redo.  A lock file keeps two runs from writing the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from tortoise_xpu.errors import UserError
from tortoise_xpu.fileio import atomic_write_text

MANIFEST = "manifest.json"
LOCK = ".tortoise-xpu.lock"
COMBINED = "combined.wav"
MANIFEST_VERSION = 1


def chunk_filename(index: int) -> str:
    """File name of chunk ``index`` (1-based in names, so listings sort and read naturally)."""
    return f"chunk_{index + 1:04d}.wav"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class FolderLock:
    """An exclusive lock on an output folder (a file holding the owner's pid; stale locks are taken over)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.held = False

    def __enter__(self) -> "FolderLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and _pid_alive(pid):  # our own pid too: another thread or instance of this process
                    raise UserError(f"{self.path.parent} is in use by another tortoise-xpu run (pid {pid}); "
                                    f"wait for it to finish or remove {self.path} if it is not running") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise UserError(f"could not lock {self.path.parent}")

    def __exit__(self, *exc: Any) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


@dataclass
class ReadResult:
    """What a read run did: chunk indices synthesised and skipped, and the combined file."""

    synthesised: list[int]
    skipped: list[int]
    combined: Path
    manifest: Path


def load_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    from tortoise_xpu import safeload

    try:  # size-bounded before it is read (safeload.MANIFEST)
        data = safeload.load_json(path, safeload.MANIFEST, label=str(path))
    except UserError as exc:
        raise UserError(f"{exc}; move it away to start the folder afresh") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a manifest (a JSON object); move it away to start the folder afresh")
    if data.get("version") != MANIFEST_VERSION:
        raise UserError(f"{path} was written by an incompatible version; use a new output folder")
    return data


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def read_chunks(chunks: list[str], folder: str | os.PathLike, synthesize: Callable[[str, int], torch.Tensor],
                save_wav: Callable[[Path, torch.Tensor], None], load_wav: Callable[[Path], torch.Tensor],
                settings: dict[str, Any], seed: int, regenerate: Iterable[int] = (),
                on_chunk: Callable[[int, int, str], None] | None = None) -> ReadResult:
    """Synthesise every chunk not yet done into ``folder``, then write the combined WAV.

    ``synthesize(text, seed)`` returns a (1, S) 24 kHz waveform; ``regenerate`` holds
    1-based chunk numbers to redo.  ``on_chunk(i, n, status)`` reports progress.
    """
    if not chunks:
        raise UserError("nothing to read: the text is empty after cleaning")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    redo = {int(i) - 1 for i in regenerate}
    bad = sorted(i + 1 for i in redo if not 0 <= i < len(chunks))
    if bad:
        raise UserError(f"--regenerate names chunk(s) {bad} but the text has {len(chunks)} chunks")
    settings_key = json.dumps(settings, sort_keys=True, default=str)
    with FolderLock(folder):
        old = load_manifest(folder) or {}
        old_chunks = {c["index"]: c for c in old.get("chunks", [])} if old.get("settings_key") == settings_key \
            and old.get("seed") == seed else {}
        manifest: dict[str, Any] = {"version": MANIFEST_VERSION, "seed": seed, "settings": settings,
                                    "settings_key": settings_key, "combined": None, "chunks": []}
        for i, text in enumerate(chunks):
            prev = old_chunks.get(i)
            entry = {"index": i, "text": text, "file": chunk_filename(i), "status": "pending", "sha256": None,
                     "seconds": None}
            if prev and prev.get("text") == text and prev.get("status") == "done" and i not in redo:
                f = folder / prev["file"]
                if f.exists() and file_sha256(f) == prev.get("sha256"):
                    entry.update(status="done", sha256=prev["sha256"], seconds=prev.get("seconds"))
            manifest["chunks"].append(entry)
        _write_manifest(folder, manifest)
        done, skipped = [], []
        for entry in manifest["chunks"]:
            i = entry["index"]
            if entry["status"] == "done":
                skipped.append(i)
                if on_chunk:
                    on_chunk(i, len(chunks), "skipped")
                continue
            if on_chunk:
                on_chunk(i, len(chunks), "start")
            wav = synthesize(entry["text"], seed)
            path = folder / entry["file"]
            save_wav(path, wav)
            entry.update(status="done", sha256=file_sha256(path), seconds=round(wav.shape[-1] / 24000, 3))
            _write_manifest(folder, manifest)
            done.append(i)
            if on_chunk:
                on_chunk(i, len(chunks), "done")
        parts = [load_wav(folder / e["file"]).reshape(1, -1) for e in manifest["chunks"]]
        combined = folder / COMBINED
        save_wav(combined, torch.cat(parts, dim=-1))
        manifest["combined"] = COMBINED
        _write_manifest(folder, manifest)
    return ReadResult(done, skipped, combined, folder / MANIFEST)
