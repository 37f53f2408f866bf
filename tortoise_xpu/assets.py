"""The files Tortoise needs: where each comes from, where it lives, how it is fetched and checked.

Nine checkpoints come from the Hugging Face repository ``Manmay/tortoise-tts`` (the one the
original's ``get_model_path`` downloads from); the two small data files the original ships in its
package (``tokenizer.json``, ``mel_norms.pth``) come from a pinned commit of
``neonbjb/tortoise-tts`` on GitHub.  Every file is described by an :class:`Asset`.

The models folder is chosen by :func:`models_dir`: ``--models-dir``, else ``$TORTOISE_XPU_MODELS``,
else the user cache (``$XDG_CACHE_HOME/tortoise-xpu/models`` or ``~/.cache/tortoise-xpu/models``).

:func:`download` fetches one file into that folder: it streams into ``<name>.part``, resumes a
partial ``.part`` with an HTTP ``Range`` request, shows a progress bar, checks the size and the
sha256 (from this registry, else from the hash the Hugging Face server announces) and only then
renames the file to its final name, so a half file never sits under the final name.  Each
finished download is recorded in a small manifest (:data:`MANIFEST_NAME`) beside the files, so
:func:`verify` can later detect a file that changed on disk even where this registry knows no hash.

This module imports neither torch nor the models; :func:`verify` loads them lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tortoise_xpu.errors import ModelFileError, TortoiseError, UserError

# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

HF_REPO = "Manmay/tortoise-tts"
#: The Hugging Face revision every checkpoint is fetched at.  It SHOULD be the 40-hex commit sha
#: of ``Manmay/tortoise-tts`` (see https://huggingface.co/Manmay/tortoise-tts/commits/main): this
#: registry was written offline, where the sha could not be looked up, so it still names the
#: branch.  Replace it with the sha (and fill in the sizes / sha256 below) once known; every
#: download records the commit the server actually served (``X-Repo-Commit``) in the manifest,
#: so the first real download tells you the value.  ``$TORTOISE_XPU_HF_REVISION`` overrides it.
HF_REVISION = "main"

#: The GitHub repository and commit the two small data files are fetched from.  The commit's
#: setup.py says version 3.0.0; the sha256 below are those of the files PyPI's
#: tortoise-tts==3.0.0 ships, so a different file at this commit fails the check.
DATA_REPO = "neonbjb/tortoise-tts"
DATA_COMMIT = "09566627fa9d348e2528524afacaee23456e336b"
DATA_ENDPOINT = "https://raw.githubusercontent.com"

ENV_MODELS = "TORTOISE_XPU_MODELS"
ENV_HF_ENDPOINT = "TORTOISE_XPU_HF_ENDPOINT"
ENV_HF_REVISION = "TORTOISE_XPU_HF_REVISION"
ENV_DATA_ENDPOINT = "TORTOISE_XPU_DATA_ENDPOINT"

#: Per-folder record of finished downloads / generated files: {file: {sha256, size, ...}}.
MANIFEST_NAME = "tortoise-xpu-manifest.json"

_CHUNK = 1 << 20
_RETRY_DELAY = 1.0  # seconds before the first resume attempt; doubled per attempt, at most 8
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Asset:
    """One file Tortoise uses.

    ``source`` is ``"hf"`` (``repo`` / ``revision`` on the Hugging Face hub) or ``"github"``
    (``repo`` / ``revision`` / ``path`` as a raw file).  ``size`` and ``sha256`` are None where
    not known; ``approx_bytes`` is an fp32 estimate (parameters × 4) for display only.
    ``model`` is True for checkpoints that load into a network (see
    :mod:`tortoise_xpu.models.registry`).  ``core`` files are what speech synthesis needs;
    the others serve optional features (CVVP re-ranking, tortoise-detect, streaming).
    """

    name: str
    description: str
    source: str
    repo: str
    revision: str
    path: str = ""
    size: int | None = None
    sha256: str | None = None
    approx_bytes: int | None = None
    model: bool = True
    core: bool = True
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def url(self, endpoint: str | None = None, revision: str | None = None) -> str:
        """The download URL, under ``endpoint`` when given (a mirror or a test server)."""
        if self.source == "hf":
            from huggingface_hub import hf_hub_url

            endpoint = endpoint or os.environ.get(ENV_HF_ENDPOINT) or None
            rev = revision or os.environ.get(ENV_HF_REVISION) or self.revision
            return hf_hub_url(self.repo, self.path or self.name, revision=rev, endpoint=endpoint)
        base = (endpoint or os.environ.get(ENV_DATA_ENDPOINT) or DATA_ENDPOINT).rstrip("/")
        return f"{base}/{self.repo}/{revision or self.revision}/{self.path}"


def _hf(name: str, description: str, params: int, core: bool = True, aliases: tuple[str, ...] = ()) -> Asset:
    return Asset(name=name, description=description, source="hf", repo=HF_REPO, revision=HF_REVISION,
                 approx_bytes=params * 4, core=core, aliases=aliases)


#: Every file, keyed by its file name.  Order: what synthesis needs first.
ASSETS: dict[str, Asset] = {a.name: a for a in (
    _hf("autoregressive.pth", "autoregressive model", 421_526_786,
        aliases=("autoregressive", "ar", "gpt")),
    _hf("diffusion_decoder.pth", "diffusion decoder", 292_334_380,
        aliases=("diffusion_decoder", "diffusion")),
    _hf("clvp2.pth", "CLVP candidate ranker", 243_846_145, aliases=("clvp2", "clvp")),
    _hf("vocoder.pth", "UnivNet vocoder", 14_865_506, aliases=("vocoder", "univnet")),
    _hf("rlg_auto.pth", "random voice, AR latent", 6_297_600,
        aliases=("rlg_auto",)),
    _hf("rlg_diffuser.pth", "random voice, diffusion latent", 25_178_112,
        aliases=("rlg_diffuser", "rlg_diffusion")),
    _hf("cvvp.pth", "CVVP voice ranker (off by default)", 37_780_225, core=False,
        aliases=("cvvp",)),
    _hf("classifier.pth", "tortoise-detect classifier", 15_224_002, core=False, aliases=("classifier",)),
    _hf("hifidecoder.pth", "HiFi-GAN decoder (streaming)", 17_844_226, core=False,
        aliases=("hifidecoder", "hifigan")),
    Asset(name="tokenizer.json", description="BPE text tokenizer", source="github",
          repo=DATA_REPO, revision=DATA_COMMIT, path="tortoise/data/tokenizer.json", size=4409,
          sha256="d1fa6e9b4741bb75b284331b833347c166ba8b0518e187f7370f123149ed87bb", model=False,
          aliases=("tokenizer",)),
    Asset(name="mel_norms.pth", description="mel band norms", source="github",
          repo=DATA_REPO, revision=DATA_COMMIT, path="tortoise/data/mel_norms.pth", size=1067,
          sha256="1f69422a8a8f344c4fca2f0c6b8d41d2151d6615b7321e48e6bb15ae949b119c", model=False,
          aliases=("mel_norms",)),
)}


def asset(name: str) -> Asset:
    """Look up a file by its name (``clvp2.pth``), stem (``clvp2``) or alias (``clvp``)."""
    if name in ASSETS:
        return ASSETS[name]
    key = name.strip().lower()
    for a in ASSETS.values():
        if key == a.name or key in a.aliases or key == Path(a.name).stem:
            return a
    raise UserError(f"unknown model file {name!r}; known: {', '.join(ASSETS)}")


def resolve_names(names: Iterable[str] | None, core_only: bool = False) -> list[str]:
    """File names for ``names`` (None: every file, or only the core ones), in registry order."""
    if not names:
        return [a.name for a in ASSETS.values() if a.core or not core_only]
    wanted = {asset(n).name for n in names}
    return [n for n in ASSETS if n in wanted]


# --------------------------------------------------------------------------------------------
# The models folder
# --------------------------------------------------------------------------------------------

def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tortoise-xpu/models`` when XDG_CACHE_HOME is an absolute path, else
    ``~/.cache/tortoise-xpu/models``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "tortoise-xpu" / "models"


def models_dir(cli_value: str | os.PathLike | None = None) -> Path:
    """The folder holding the model files: ``cli_value`` (``--models-dir``), else
    ``$TORTOISE_XPU_MODELS``, else :func:`user_cache_dir`.  The folder need not exist."""
    if cli_value:
        return Path(cli_value).expanduser()
    env = os.environ.get(ENV_MODELS)
    if env:
        return Path(env).expanduser()
    return user_cache_dir()


def download_command(name: str, directory: Path | None = None) -> str:
    """The exact command that fetches ``name`` (with ``--models-dir`` when not the default)."""
    cmd = f"tortoise-xpu models download {name}"
    if directory is not None and Path(directory).expanduser().resolve() != models_dir().resolve():
        cmd += f" --models-dir {_quote(str(directory))}"
    return cmd


def _quote(s: str) -> str:
    return s if re.fullmatch(r"[\w./~:\\-]+", s) else '"' + s.replace('"', '\\"') + '"'


def find(name: str, directory: str | os.PathLike | None = None) -> Path | None:
    """Where ``name`` lives in ``directory`` (default :func:`models_dir`), or None.

    Looks for, in order: a converted ``<stem>.safetensors`` (checkpoints only; skipped when the
    ``.pth`` beside it is newer), the file itself, and the original's Hugging Face cache layout (``models--Manmay--tortoise-tts/snapshots/<rev>/``,
    what tortoise-tts' own ``--model_dir`` holds), so a folder filled by the original works as is.
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
# Manifest of finished downloads
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
    if isinstance(sha, str) and _SHA256_RE.match(sha):
        return sha, "manifest"
    return None, "unknown"


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------

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
            if _SHA256_RE.match(v) and "sha256" not in out:
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
    registry, else against what the server announced (Hugging Face sends the sha256 of LFS
    files); on a mismatch the ``.part`` is deleted and :class:`ModelFileError` is raised.  Only a
    checked file is renamed to its final name, and then recorded in the folder's manifest.

    A file already present is kept (checked against a known sha256) unless ``force``.
    ``endpoint`` replaces the server: the Hugging Face endpoint for checkpoints (default
    ``$TORTOISE_XPU_HF_ENDPOINT``, then huggingface_hub's, normally https://huggingface.co) and
    the raw-file base for the data files (``$TORTOISE_XPU_DATA_ENDPOINT``, then GitHub's).
    """
    a = asset(name)
    d = models_dir(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / a.name
    part = d / (a.name + ".part")
    if final.is_file() and not force:
        want, _ = expected_checksum(a.name, d)
        if want is None or sha256_file(final) == want:
            return final
        # A file that fails its known checksum is fetched again rather than trusted.
        print(f"{a.name}: the file on disk does not match its sha256; downloading it again", file=sys.stderr)
    url = a.url(endpoint, revision)
    attempt = 0
    while True:
        try:
            info = _fetch(url, part, label=a.name, progress=progress, timeout=timeout)
            break
        except _Interrupted as exc:
            attempt += 1
            if attempt > retries:
                raise TortoiseError(f"download of {a.name} from {url} broke off after {exc.have:,} bytes "
                                    f"({exc.reason}); run the same command again to resume") from None
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


# --------------------------------------------------------------------------------------------
# Verify
# --------------------------------------------------------------------------------------------

@dataclass
class VerifyRow:
    """One line of ``tortoise-xpu models verify``.

    ``status`` is ``ok``, ``missing`` (not present: not a failure) or ``failed`` (``reason``
    says why).  ``checksum`` is ``match``, ``mismatch``, ``unknown`` (no hash known) or
    ``skipped``.
    """

    file: str
    model: str
    path: str | None
    parameters: int | None
    status: str
    checksum: str
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def verify(directory: str | os.PathLike | None = None, names: Iterable[str] | None = None, *,
           load: bool = True, checksums: bool = True) -> list[VerifyRow]:
    """Check every present file of ``names`` (default: all) in the models folder.

    A file is checked against its sha256 (registry, else the folder's manifest) and, with
    ``load``, loaded into its model with ``strict=True`` (data files: parsed).  Missing files get
    status ``missing``; a file that fails either check gets ``failed`` with the reason.
    """
    d = models_dir(directory)
    rows = []
    for n in resolve_names(names):
        rows.append(_verify_one(n, d, load=load, checksums=checksums))
    return rows


def _verify_one(name: str, d: Path, load: bool, checksums: bool) -> VerifyRow:
    a = asset(name)
    path = find(a.name, d)
    model_label = _model_label(a)
    if path is None:
        return VerifyRow(a.name, model_label, None, None, "missing", "skipped",
                         f"not downloaded: {download_command(a.name, d)}")
    checksum = "skipped"
    standin = (read_manifest(d).get(a.name) or {}).get("source") == "stand-in"
    if standin:
        # written by `models random-weights` for offline tests: not the official file, and says so
        checksum = "stand-in"
    elif checksums and path.suffix != ".safetensors":
        want, origin = expected_checksum(a.name, d)
        if want is None:
            checksum = "unknown"
        else:
            got = sha256_file(path)
            checksum = "match" if got == want else "mismatch"
            if got != want:
                return VerifyRow(a.name, model_label, str(path), None, "failed", checksum,
                                 f"sha256 {got[:12]}… differs from the {origin}'s {want[:12]}…; "
                                 f"fetch it again: {download_command(a.name, d)} --force")
    if not load:
        return VerifyRow(a.name, model_label, str(path), None, "ok", checksum)
    try:
        n_params = _load_check(a, path, d)
    except ModelFileError as exc:
        return VerifyRow(a.name, model_label, str(path), None, "failed", checksum, str(exc))
    return VerifyRow(a.name, model_label, str(path), n_params, "ok", checksum)


def _model_label(a: Asset) -> str:
    if not a.model:
        return {"tokenizer.json": "BPE tokenizer", "mel_norms.pth": "mel norms"}.get(a.name, "data")
    from tortoise_xpu.models.registry import SPECS

    spec = SPECS.get(a.name)
    return spec.class_name if spec else "?"


def _load_check(a: Asset, path: Path, d: Path) -> int | None:
    """Load ``path`` the way the pipeline will; return the parameter count (None for data)."""
    if a.name == "tokenizer.json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"tokenizer.json is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or "model" not in data:
            raise ModelFileError("tokenizer.json has no 'model' section; not a tokenizers file")
        return None
    from tortoise_xpu.models import loading

    if a.name == "mel_norms.pth":
        t = loading.load_state(path)
        import torch

        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            raise ModelFileError(f"mel_norms.pth holds {type(t).__name__}, not a 1-D tensor")
        return None
    from tortoise_xpu.models import registry

    model = loading.load_model(a.name, d, path=path)
    # Counted as the file stores them (weight-norm gains included): the published figures.
    return registry.checkpoint_parameter_count(a.name, model)
