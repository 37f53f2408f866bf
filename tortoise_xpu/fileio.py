"""Atomic file writing: outputs appear under their final name whole, or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
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
        # The temporary name is bounded (the target's name may be up to NAME_MAX itself).
        tail = suffix if suffix is not None else path.suffix[:16] + ".part"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=tail, dir=path.parent)
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
        with contextlib.suppress(OSError):
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):  # never replace a device node, FIFO or socket with a file
                raise UserError(f"cannot write {path}: it exists and is {_kind(mode)}, not a regular file")
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
    """Fail early (``UserError``, one line) when ``path`` cannot be written as a regular file.

    Checked before long work, so a typo costs nothing: the name must be encodable in the filesystem
    encoding (a non-UTF-8 name from the command line is refused, not written under a mangled name),
    each component and the whole path must fit the filesystem's NAME_MAX / PATH_MAX, an existing
    target must be a regular file (a device node such as /dev/null, a FIFO, a socket or a folder is
    never replaced), and the nearest existing folder must be a writable folder (missing folders
    below it are created when writing).
    """
    path, existing = _check_name(path)
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a folder; give a file name")
    if os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = None  # a dangling symlink: replaced by the file
        if mode is not None and not stat.S_ISREG(mode):
            raise UserError(f"cannot write {path}: it exists and is {_kind(mode)}, not a regular file; "
                            f"choose another name")
    _check_folders(path.parent, existing, path)
    return path


def check_writable_folder(path: str | os.PathLike, room: int = 64) -> Path:
    """Like :func:`check_writable` for an output folder: an existing ``path`` must be a folder, and
    ``room`` bytes are kept under PATH_MAX for the names of the files written inside it."""
    path, existing = _check_name(path, room)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"cannot write into {path}: it exists and is not a folder")
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"cannot write into {path}: no permission")
        return path
    _check_folders(path, existing, path)
    return path


def _check_name(path: str | os.PathLike, room: int = 0) -> tuple[Path, Path]:
    """The checks of a name alone: encodable, NAME_MAX per component, PATH_MAX (less ``room``).
    Returns the path and its nearest existing folder (``stat`` of an over-long name raises
    ENAMETOOLONG, so the lengths are checked before anything asks the filesystem about it)."""
    raw = os.fspath(path)
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not raw or not raw.strip():
        raise UserError("the output name is empty")
    try:
        raw.encode(sys.getfilesystemencoding(), "strict")
    except UnicodeEncodeError:
        shown = raw.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise UserError(f"cannot write {shown}: the name is not valid {sys.getfilesystemencoding()} "
                        f"(a name in another encoding?); choose a name in plain text") from None
    path = Path(raw)
    existing = path.parent
    while not os.path.isdir(existing) and existing != existing.parent:
        existing = existing.parent
    name_max, path_max = _limits(existing)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise UserError(f"cannot write {_short(path)}: the name {_short(part)} is {len(os.fsencode(part))} "
                            f"bytes long; this filesystem allows {name_max}")
    full = os.fsencode(os.path.abspath(path))
    if len(full) + room >= path_max:
        raise UserError(f"cannot write {_short(path)}: the path is {len(full)} bytes long; this filesystem "
                        f"allows {path_max - 1 - room}")
    return path, existing


def _check_folders(folder: Path, existing: Path, target: Path) -> None:
    """No file where a folder of ``target`` should be, and write permission in the nearest existing one."""
    blocker = folder
    while blocker != existing and blocker != blocker.parent:
        if os.path.lexists(blocker):
            raise UserError(f"cannot write {target}: {blocker} is a file, not a folder")
        blocker = blocker.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {target}: no permission to write in {existing}")


def _limits(folder: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the filesystem holding ``folder``; 255 / 4096 where it cannot say."""
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
        path_max = os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # Windows has no pathconf
        return 255, 4096
    return (name_max if name_max and name_max > 0 else 255), (path_max if path_max and path_max > 0 else 4096)


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return word
    return "not a regular file"


def _short(text: object, width: int = 60) -> str:
    s = str(text)
    return s if len(s) <= width else s[:width - 1] + "\u2026"


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
