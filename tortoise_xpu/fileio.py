"""Atomic file writing: outputs appear under their final name whole, or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from tortoise_xpu.errors import TortoiseError, UserError

#: errno values that mean the user must fix the destination (exit 2); others (disk full, I/O) exit 1.
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.ENOENT,
                errno.ENAMETOOLONG, errno.EEXIST}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the same folder as ``path``; rename it over ``path`` on success.

    The temporary file lives beside the target so the final ``os.replace`` is atomic on
    every platform.  On any exception (disk full, Ctrl-C) the temporary file is removed
    and ``path`` is left as it was; an ``OSError`` (disk full, no permission) is raised again
    as the one-line error of :func:`write_error`.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.",
                                   suffix=suffix if suffix is not None else path.suffix + ".part", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the result the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError):  # disk full, permissions: one line naming the file, not a traceback
            raise write_error(path, exc) from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_error(path: str | os.PathLike, exc: OSError) -> TortoiseError:
    """A one-line error for a failed write of ``path``: ``UserError`` for a bad destination
    (permissions, read-only, not a folder), ``TortoiseError`` for disk full and I/O errors."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        reason += "; free some space or write somewhere else (nothing was left under that name)"
    cls = UserError if exc.errno in _USER_ERRNOS else TortoiseError
    return cls(f"cannot write {path}: {reason}")


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (``UserError``) when ``path`` cannot be written: it is a folder, or its folder cannot
    be created or written.  Called before long work, so a typo costs nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; give a file name")
    parent = path.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: no permission to write in {existing}")
    return path


def write_failure_reason(exc: BaseException, folder: str | os.PathLike, nbytes: int = 0) -> str:
    """Why a writer that hides the OS error (libsndfile, torch's zip writer) failed: "no space left on
    device" when the folder's disk is (nearly) full, else the writer's own message."""
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < nbytes + (1 << 20):
        return f"no space left on device ({free:,} bytes free); free some space or write somewhere else"
    text = " ".join(str(exc).split())
    return text[:200] if text else f"write failed ({type(exc).__name__})"
