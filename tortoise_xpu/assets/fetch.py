"""Fetching model files: streamed into ``<name>.part``, resumed, checked, then renamed into place.

:func:`download` fetches one file into the models folder: it streams into ``<name>.part``,
resumes a partial ``.part`` with an HTTP ``Range`` request, shows a progress bar, checks the size
and the sha256 (from the catalogue, else from the hash the Hugging Face server announces) and only
then renames the file to its final name, so a half file never sits under the final name; the
finished file is recorded in the folder's manifest.  :func:`ensure` is what a run uses on first
start: the file if present, else a download, and when that fails a message naming every core
file the folder still lacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from tortoise_xpu.assets.catalogue import DATA_ENDPOINT, Asset, asset, resolve_names
from tortoise_xpu.assets.folder import (download_command, expected_checksum, find, is_sha256, models_dir, record,
                                        require, sha256_file)
from tortoise_xpu.errors import ModelFileError, TortoiseError

__all__ = ["ENV_DATA_ENDPOINT", "ENV_HF_ENDPOINT", "ENV_HF_REVISION", "asset_url", "download", "ensure",
           "missing_files"]

ENV_HF_ENDPOINT = "TORTOISE_XPU_HF_ENDPOINT"
ENV_HF_REVISION = "TORTOISE_XPU_HF_REVISION"
ENV_DATA_ENDPOINT = "TORTOISE_XPU_DATA_ENDPOINT"

_CHUNK = 1 << 20
_RETRY_DELAY = 1.0  # seconds before the first resume attempt; doubled per attempt, at most 8


def asset_url(a: Asset, endpoint: str | None = None, revision: str | None = None) -> str:
    """The download URL of ``a``, under ``endpoint`` when given (a mirror or a test server)."""
    if a.source == "hf":
        from huggingface_hub import hf_hub_url

        endpoint = endpoint or os.environ.get(ENV_HF_ENDPOINT) or None
        rev = revision or os.environ.get(ENV_HF_REVISION) or a.revision
        return hf_hub_url(a.repo, a.path or a.name, revision=rev, endpoint=endpoint)
    base = (endpoint or os.environ.get(ENV_DATA_ENDPOINT) or DATA_ENDPOINT).rstrip("/")
    return f"{base}/{a.repo}/{revision or a.revision}/{a.path}"


class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib does, keeping the headers of each hop.

    The Hugging Face ``resolve`` endpoint answers with a redirect to its CDN; the sha256 of an
    LFS file (``X-Linked-Etag``), its size (``X-Linked-Size``) and the commit served
    (``X-Repo-Commit``) are headers of that first answer, not of the CDN's.
    """

    def __init__(self) -> None:
        self.hops: list = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _announced(headers_list: list) -> dict:
    """Size / sha256 / commit the server announced in any hop's headers."""
    out: dict = {}
    for h in headers_list:
        # Only the hub's own answers (X-Linked-* / X-Repo-Commit) are trusted to name a sha256:
        # a CDN's ETag may be 64 hex digits that hash something else.
        keys = ("X-Linked-Etag", "ETag") if h.get("X-Repo-Commit") else ("X-Linked-Etag",)
        for key in keys:
            v = (h.get(key) or "").strip().strip('"').lower()
            if is_sha256(v) and "sha256" not in out:
                out["sha256"] = v
        size = h.get("X-Linked-Size")
        if size and size.isdigit() and "size" not in out:
            out["size"] = int(size)
        commit = h.get("X-Repo-Commit")
        if commit and "commit" not in out:
            out["commit"] = commit.strip()
    return out


def _total_from(resp, offset: int) -> int | None:
    """Full file size from Content-Range (206) or Content-Length (200)."""
    cr = resp.headers.get("Content-Range") or ""
    m = re.match(r"bytes\s+\d+-\d+/(\d+)", cr)
    if m:
        return int(m.group(1))
    cl = resp.headers.get("Content-Length")
    if cl and cl.isdigit():
        return int(cl) + (offset if resp.status == 206 else 0)
    return None


@contextlib.contextmanager
def _progress_bar(enabled: bool, label: str, total: int | None, done: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n_bytes)``.  A no-op when disabled."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def download(name: str, directory: str | os.PathLike | None = None, progress: bool = True, *,
             endpoint: str | None = None, revision: str | None = None, force: bool = False,
             retries: int = 3, timeout: float = 60.0) -> Path:
    """Fetch ``name`` into the models folder and return its final path.

    The bytes stream into ``<name>.part``; an existing ``.part`` (an interrupted earlier run) is
    continued with an HTTP ``Range`` request, and a transfer that breaks off is resumed the same
    way up to ``retries`` times.  When complete, the size and sha256 are checked against this
    catalogue, else against what the server announced (Hugging Face sends the sha256 of LFS
    files); on a mismatch the ``.part`` is deleted and :class:`ModelFileError` is raised.  Only a
    checked file is renamed to its final name, and then recorded in the folder's manifest.

    A file already present is kept (checked against a known sha256) unless ``force``.
    ``endpoint`` replaces the server: the Hugging Face endpoint for checkpoints (default
    ``$TORTOISE_XPU_HF_ENDPOINT``, then huggingface_hub's, normally https://huggingface.co) and
    the raw-file base for the data files (``$TORTOISE_XPU_DATA_ENDPOINT``, then GitHub's).
    """
    a = asset(name)
    d = models_dir(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # no permission, read-only file system
        raise ModelFileError(f"cannot create the models folder {d}: {exc.strerror or exc}") from None
    final = d / a.name
    part = d / (a.name + ".part")
    if final.is_file() and not force:
        want, _ = expected_checksum(a.name, d)
        if want is None or sha256_file(final) == want:
            return final
        # A file that fails its known checksum is fetched again rather than trusted.
        print(f"{a.name}: the file on disk does not match its sha256; downloading it again", file=sys.stderr)
    url = asset_url(a, endpoint, revision)
    attempt = 0
    while True:
        try:
            info = _fetch(url, part, label=a.name, progress=progress, timeout=timeout)
            break
        except _Interrupted as exc:
            attempt += 1
            if attempt > retries:
                if exc.have:
                    raise TortoiseError(f"download of {a.name} from {url} broke off after {exc.have:,} bytes "
                                        f"({exc.reason}); the partial file is kept: run the same command again "
                                        f"to resume") from None
                raise TortoiseError(f"download of {a.name} from {url} failed ({exc.reason})") from None
            time.sleep(min(_RETRY_DELAY * 2.0 ** (attempt - 1), 8.0))

    size_on_disk = part.stat().st_size
    want_size = a.size or info.get("size")
    want_sha = a.sha256 or info.get("sha256")
    if want_size is not None and size_on_disk != want_size:
        part.unlink(missing_ok=True)
        raise ModelFileError(f"{a.name}: downloaded {size_on_disk:,} bytes but expected {want_size:,}; "
                             f"the partial file was deleted, run {download_command(a.name, d)} again")
    got_sha = info["sha256_computed"]
    if want_sha is not None and got_sha != want_sha:
        part.unlink(missing_ok=True)
        raise ModelFileError(f"{a.name}: checksum mismatch (sha256 {got_sha[:16]}…, expected {want_sha[:16]}…); "
                             f"the download was deleted, run {download_command(a.name, d)} again")
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, final)
    record(d, a.name, sha256=got_sha, size=size_on_disk, url=url, commit=info.get("commit"),
           verified_against=("registry" if a.sha256 else "server" if info.get("sha256") else "none"),
           source="download", time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return final


class _Interrupted(Exception):
    def __init__(self, have: int, reason: str) -> None:
        super().__init__(reason)
        self.have = have
        self.reason = reason


def _open(url: str, offset: int, timeout: float):
    from tortoise_xpu import __version__

    headers = {"User-Agent": f"tortoise-xpu/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    redirects = _RecordingRedirects()
    opener = urllib.request.build_opener(redirects)
    resp = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    return resp, redirects.hops


def _fetch(url: str, part: Path, label: str, progress: bool, timeout: float) -> dict:
    """Bring ``part`` to the full file (appending from its current size); return what the server
    announced plus ``sha256_computed``.  A broken transfer raises :class:`_Interrupted` with
    the ``.part`` kept for the next attempt."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        resp, hops = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range past the end: the .part is already whole (or longer than the file); the
            # size/sha256 checks decide which, after we learn the size without a Range.
            info = _probe(url, timeout)
            if info.get("size") is not None and offset == info["size"]:
                return {**info, "sha256_computed": sha256_file(part)}
            part.unlink(missing_ok=True)
            return _fetch(url, part, label, progress, timeout)
        if exc.code in (401, 403, 404):
            raise ModelFileError(f"{label}: the server answered {exc.code} {exc.reason} for {url}") from None
        raise _Interrupted(offset, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Interrupted(offset, str(reason)) from None

    with contextlib.closing(resp):
        info = _announced(hops + [resp.headers])
        if offset and resp.status != 206:
            offset = 0  # the server ignored Range: start over
        total = _total_from(resp, offset)
        if info.get("size") is None and total is not None:
            info["size"] = total
        hasher = hashlib.sha256()
        mode = "ab" if offset else "wb"
        if offset:
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    hasher.update(chunk)
        have = offset
        with open(part, mode) as out, _progress_bar(progress, label, info.get("size") or total, offset) as advance:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
                    out.flush()
                    raise _Interrupted(have, f"{type(exc).__name__}: {exc}") from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:  # disk full, permissions: retrying would not help
                    raise TortoiseError(f"cannot write {part}: {exc}") from None
                hasher.update(chunk)
                have += len(chunk)
                advance(len(chunk))
        expected = total if total is not None else info.get("size")
        if expected is not None and have < expected:
            raise _Interrupted(have, f"connection closed at {have:,} of {expected:,} bytes")
    info["sha256_computed"] = hasher.hexdigest()
    return info


def _probe(url: str, timeout: float) -> dict:
    """What the server announces for ``url`` (size, sha256, commit), read from the headers only."""
    try:
        resp, hops = _open(url, 0, timeout)
    except (urllib.error.URLError, OSError):
        return {}
    with contextlib.closing(resp):
        info = _announced(hops + [resp.headers])
        if info.get("size") is None:
            info["size"] = _total_from(resp, 0)
        return info




def ensure(name: str, directory: str | os.PathLike | None = None, *, auto_download: bool = True,
           progress: bool = True) -> Path:
    """Where ``name`` lies in the models folder, downloading it first when it is missing.

    What a run calls for each file it needs.  With ``auto_download`` off, a missing file raises
    :class:`ModelFileError` naming the command that fetches it.  When the download fails
    (offline, a firewall, a server error) the error names the file that failed, why, and every
    core file the folder still lacks, so one message tells a user on an offline machine all
    that must be copied over.
    """
    a = asset(name)
    d = models_dir(directory)
    path = find(a.name, d)
    if path is not None:
        return path
    if not auto_download:
        return require(a.name, d)
    try:
        return download(a.name, d, progress=progress, retries=1)
    except TortoiseError as exc:
        lacking = missing_files(d, extra=(a.name,))
        raise ModelFileError(
            f"{a.name} is not in {d} and could not be downloaded ({exc}). Missing there: {', '.join(lacking)}. "
            f"Offline? Run `tortoise-xpu models download --models-dir DIR` on a machine with internet and copy "
            f"DIR here, or pass --models-dir pointing at a folder that has the files") from None


def missing_files(directory: str | os.PathLike | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """The core files (plus ``extra``) that the models folder lacks, in catalogue order."""
    d = models_dir(directory)
    wanted = set(resolve_names(None, core_only=True)) | {asset(n).name for n in extra}
    return [n for n in resolve_names(None) if n in wanted and find(n, d) is None]
