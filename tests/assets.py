"""The original package's data files for tests, obtained the way a user could.

``tokenizer.json``, ``mel_norms.pth`` and the built-in voice clips are not ours to
ship.  Tests that need them take them from the ``tortoise-tts==3.0.0`` sdist on
PyPI: ``pip download --no-deps`` (about 30 MB) into ``<repo>/.cache/`` (git-ignored),
then only ``tortoise/data/*`` and ``tortoise/voices/**`` are extracted, once.

The folder returned by :func:`official_data_dir` holds the data files at its top
level (so it also works as a ``--models-dir`` for the tokenizer and mel norms) and
the voices under ``voices/<name>/``::

    official/tortoise-tts-3.0.0/tokenizer.json
    official/tortoise-tts-3.0.0/mel_norms.pth
    official/tortoise-tts-3.0.0/riding_hood.txt ...
    official/tortoise-tts-3.0.0/voices/emma/1.wav ...

Environment:
    TORTOISE_XPU_OFFICIAL_DATA  a folder laid out as above; used as is, nothing downloaded.
    TORTOISE_XPU_NO_DOWNLOAD=1  never run pip; use the cache if it is there, else unavailable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
PACKAGE = "tortoise-tts"
VERSION = "3.0.0"
SDIST = f"{PACKAGE}-{VERSION}.tar.gz"
EXTRACTED = CACHE / "official" / f"{PACKAGE}-{VERSION}"
ENV_DIR = "TORTOISE_XPU_OFFICIAL_DATA"
ENV_NO_DOWNLOAD = "TORTOISE_XPU_NO_DOWNLOAD"

# sha256 of the two data files of tortoise-tts 3.0.0 (what the tests were written against).
KNOWN_SHA256 = {
    "tokenizer.json": "d1fa6e9b4741bb75b284331b833347c166ba8b0518e187f7370f123149ed87bb",
    "mel_norms.pth": "1f69422a8a8f344c4fca2f0c6b8d41d2151d6615b7321e48e6bb15ae949b119c",
}


class Unavailable(Exception):
    """The official data cannot be had here; the message says why."""


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def official_data_dir() -> Path:
    """The folder with the original's data files and voices (see the module doc).

    Raises:
        Unavailable: no network / pip failure / unexpected archive content.
    """
    env = os.environ.get(ENV_DIR)
    if env:
        folder = Path(env).expanduser()
        if not (folder / "tokenizer.json").is_file():
            raise Unavailable(f"${ENV_DIR}={env} has no tokenizer.json")
        return folder
    if not (EXTRACTED / "tokenizer.json").is_file():
        _extract(_sdist())
    _verify(EXTRACTED)
    return EXTRACTED


def _sdist() -> Path:
    archive = CACHE / SDIST
    if archive.is_file():
        return archive
    if os.environ.get(ENV_NO_DOWNLOAD):
        raise Unavailable(f"{archive} is not cached and ${ENV_NO_DOWNLOAD} is set")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", PACKAGE,
               "--disable-pip-version-check", "--timeout", "30", "--retries", "1",
               f"{PACKAGE}=={VERSION}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"pip download failed: {exc}") from None
        got = Path(tmp) / SDIST
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"pip download {PACKAGE}=={VERSION} failed: {tail[0]}")
        os.replace(got, archive)  # atomic: a concurrent run sees the whole file or none
    return archive


def _wanted(name: str) -> str | None:
    """Where an archive member goes (relative), or None to skip it."""
    prefix = f"{PACKAGE}-{VERSION}/tortoise/"
    if not name.startswith(prefix):
        return None
    rel = name[len(prefix):]
    parts = Path(rel).parts
    if not parts or ".." in parts or Path(rel).is_absolute():
        return None
    if parts[0] == "data" and len(parts) == 2:
        return parts[1]
    if parts[0] == "voices" and len(parts) >= 2:
        return rel
    return None


def _extract(archive: Path) -> None:
    EXTRACTED.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=EXTRACTED.parent, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar.getmembers():
                    rel = _wanted(member.name)
                    if rel is None or not member.isfile():
                        continue
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    with open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
        except (tarfile.TarError, OSError, EOFError) as exc:
            archive.unlink(missing_ok=True)  # a truncated download: fetch again next time
            raise Unavailable(f"cannot read {archive.name}: {exc}") from None
        if not (tmp / "tokenizer.json").is_file():
            raise Unavailable(f"{archive.name} has no tortoise/data/tokenizer.json")
        try:
            os.replace(tmp, EXTRACTED)
        except OSError:
            if not (EXTRACTED / "tokenizer.json").is_file():  # not a concurrent run that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _verify(folder: Path) -> None:
    for name, digest in KNOWN_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise Unavailable(f"{folder} has no {name}")
        if sha256(path) != digest:
            raise Unavailable(f"{path} is not the tortoise-tts {VERSION} file (sha256 differs)")


def voice_clip(folder: Path, voice: str = "emma", name: str = "1.wav") -> Path:
    """A built-in voice clip of the original package."""
    path = folder / "voices" / voice / name
    if not path.is_file():
        raise Unavailable(f"{path} is missing")
    return path
