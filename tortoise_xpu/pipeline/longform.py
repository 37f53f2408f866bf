"""Long-form jobs (``read``, ``batch``): chunks, what made each one, resume, takes, a journal.

A job is a list of :class:`Unit` s (one chunk of text each, the unit of work everywhere, on one
machine or on a cluster) that become WAV files in one output folder, plus the outputs joined
from them (``combined.wav`` for ``read``, one file per job for ``batch``).

The folder's state
    ``manifest.json`` (version 2) lists every chunk with the record of what made it: the text's
    sha256, the job seed, the chunk's own seed and take, the settings (a key into the manifest's
    ``settings`` table), the model files' fingerprint, the WAV's sha256 and the worker.
    ``journal.jsonl`` holds one JSON line per chunk finished since the manifest was last written,
    appended and fsync'd as each chunk is written, so recording a chunk costs the same for a
    page as for a book; the journal is replayed on load and compacted into the manifest at the
    start and at the end of every run (also after Ctrl-C or an error), then removed.

Rules of a rerun
    A chunk is *finished* when its record's text hash and its file's sha256 still match.  A
    finished chunk made with the current settings, seed and model files is skipped.  A finished
    chunk made with other ones is *kept* (never silently redone or dropped): one line says how
    many and what differs, the new settings apply to the pending chunks only, and ``restart``
    makes those chunks again with the current settings.  ``regenerate`` makes a new take of a
    chunk: its seed is ``chunk_seed(job_seed, index, take + 1)`` and the old file is replaced
    atomically only once the new one is whole.

Executors
    The work itself is done by an :class:`Executor` (in-process: ``pipeline/chunk_synthesis.py``;
    Ray: ``tortoise_xpu/cluster``), which gets :class:`Task` s and yields :class:`TaskResult` s
    in any order; this module alone writes files, so output is the same whatever ran it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import torch

from tortoise_xpu.audio.rates import SAMPLE_RATE
from tortoise_xpu.errors import TortoiseError, UserError
from tortoise_xpu.fileio import atomic_write_text, write_error

MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
LOCK = ".tortoise-xpu.lock"
COMBINED = "combined.wav"
MANIFEST_VERSION = 2
#: Models fingerprint of a caller that does not know it (tests, simple callers).
UNKNOWN = "unknown"
#: Models fingerprint recorded for chunks migrated from a version-1 manifest (which kept none):
#: it matches no current fingerprint, so such chunks are kept (with the notice) or remade on --restart.
MIGRATED = "manifest-v1"


# ------------------------------------------------------------------------------------- seeds, keys

def chunk_seed(job_seed: int, index: int, take: int = 0) -> int:
    """The seed of chunk ``index`` (0-based) of a job, for its ``take`` (0 first, +1 per regeneration).

    The first 8 bytes (little-endian) of ``sha256("tortoise-xpu/chunk/{job_seed}/{index}/{take}")``
    masked to 63 bits: a pure function of its arguments, so any process on any machine gives a
    chunk the same seed, and chunks finish identically in whatever order they are run.
    """
    digest = hashlib.sha256(f"tortoise-xpu/chunk/{job_seed}/{index}/{take}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def text_sha256(text: str) -> str:
    """Hex sha256 of a chunk's text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short stable key for a settings dict (canonical JSON, sha256, 16 hex digits)."""
    canon = json.dumps(settings, sort_keys=True, default=str, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def chunk_filename(index: int) -> str:
    """File name of chunk ``index`` (1-based in names, so listings sort and read naturally)."""
    return f"chunk_{index + 1:04d}.wav"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- the lock

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


# ------------------------------------------------------------------------------------- units, tasks

@dataclass(frozen=True)
class Unit:
    """One chunk of a job: the unit of work and of resumption.

    Attributes:
        job: the batch job id (None for ``read``).
        index: the chunk's index within its job, 0-based (it feeds :func:`chunk_seed`).
        text: the chunk's text.
        file: its WAV's path relative to the output folder.
        job_seed: the job's seed.
        settings: key of its settings in the job's settings table.
        voice: key of its voice in the job's voices table.
    """

    job: str | None
    index: int
    text: str
    file: str
    job_seed: int
    settings: str
    voice: str

    @property
    def key(self) -> str:
        """Unique name of the chunk within the folder (``"3"``, or ``"jobid/3"`` in a batch)."""
        return str(self.index) if self.job is None else f"{self.job}/{self.index}"

    @property
    def label(self) -> str:
        """How messages name the chunk (1-based)."""
        return f"chunk {self.index + 1}" if self.job is None else f"job {self.job} chunk {self.index + 1}"


@dataclass(frozen=True)
class Task:
    """What an executor is asked to synthesise: one chunk with its seed, settings and voice.

    ``settings`` are the keyword arguments of ``TextToSpeech.tts`` (the preset's values plus
    overrides); ``force_tokens`` the benchmark knob; ``voice`` a key of the voices passed to
    :meth:`Executor.start`.
    """

    key: str
    text: str
    seed: int
    take: int
    settings: Mapping[str, Any]
    voice: str
    force_tokens: int | None = None


@dataclass
class TaskResult:
    """A finished task: its (1, S) 24 kHz float waveform, or the one-line error that stopped it.

    ``error`` is ``(kind, message)`` with kind ``"user"`` (bad input, exit 2) or ``"runtime"``
    (exit 1); a failure of the machinery (a dead worker) is never a result: the executor retries.
    ``models`` is recorded as what made the chunk (files downloaded on first use count).
    """

    key: str
    wav: torch.Tensor | None
    worker: str = "local"
    compute_s: float = 0.0
    error: tuple[str, str] | None = None
    models: str | None = None  # the worker's model files fingerprint, taken after its models loaded


class Executor(Protocol):
    """Runs tasks; :func:`run_units` owns the folder and writes what it returns.

    ``start(voices)`` is called once, only when some chunk needs work, with every voice the
    pending tasks name: ``voices[key] = (material, seed)`` where ``material`` is a
    ``chunk_synthesis.VoiceMaterial`` and ``seed`` the job seed its latents are made with
    (computed once, not per chunk).  ``run(tasks)`` yields one :class:`TaskResult` per task, in
    any order, each task exactly once (a worker lost mid-task has the task run again elsewhere).
    ``close()`` releases workers; it is called whatever happened.  ``stats()`` says what the
    machinery did (workers, retried tasks), for the run's summary.
    """

    def start(self, voices: Mapping[str, tuple[Any, int]]) -> None: ...

    def run(self, tasks: Sequence[Task]) -> Iterator[TaskResult]: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------------- manifest + journal

def _manifest_error(path: Path, why: str) -> UserError:
    return UserError(f"{path} {why}; move it away to start the folder afresh")


def load_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest with its journal replayed (None when the folder has no manifest).

    A version-1 manifest (which recorded no per-chunk provenance) is migrated: its finished
    chunks are kept as made by an unknown earlier setup.  A journal line that does not parse
    (the tail of a line cut by a crash) is ignored: its chunk is simply made again.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        return None
    from tortoise_xpu import safeload

    try:  # size-bounded before it is read (safeload.MANIFEST)
        data = safeload.load_json(path, safeload.MANIFEST, label=str(path))
    except UserError as exc:
        raise _manifest_error(path, f"is unreadable ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("chunks"), list):
        raise _manifest_error(path, "is not a tortoise-xpu manifest")
    version = data.get("version")
    if version == 1:
        data = _migrate_v1(data)
    elif version != MANIFEST_VERSION:
        raise _manifest_error(path, f"has manifest version {version!r}, which this tortoise-xpu does not know "
                                    f"(it writes version {MANIFEST_VERSION})")
    by_key = {}
    for c in data["chunks"]:
        if not isinstance(c, dict) or not isinstance(c.get("index"), int):
            raise _manifest_error(path, "has a malformed chunk entry")
        by_key[_entry_key(c)] = c
    journal = folder / JOURNAL
    if journal.exists():
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
                key = rec["key"]
            except (ValueError, KeyError, TypeError):
                continue
            entry = by_key.get(key)
            if entry is not None:
                entry.update(status="done", sha256=rec.get("sha256"), seconds=rec.get("seconds"),
                             made=rec.get("made"))
    return data


def _entry_key(entry: Mapping[str, Any]) -> str:
    job = entry.get("job")
    return str(entry["index"]) if job is None else f"{job}/{entry['index']}"


def _migrate_v1(old: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest in the version-2 shape; its chunks' provenance is marked unknown."""
    settings = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    key = settings_key(settings)
    chunks = []
    for c in old.get("chunks", []):
        if not isinstance(c, dict) or not isinstance(c.get("index"), int):
            continue
        text = c.get("text") if isinstance(c.get("text"), str) else ""
        made = None
        if c.get("status") == "done":
            # Version 1 spoke every chunk with the job seed itself; it kept no model fingerprint.
            made = {"job_seed": old.get("seed"), "seed": old.get("seed"), "take": 0, "settings": key,
                    "models": MIGRATED, "text_sha256": text_sha256(text), "worker": None}
        chunks.append({"job": None, "index": c["index"], "file": c.get("file") or chunk_filename(c["index"]),
                       "text": text, "status": c.get("status"), "sha256": c.get("sha256"),
                       "seconds": c.get("seconds"), "made": made})
    return {"version": MANIFEST_VERSION, "kind": "read", "seed": old.get("seed"), "settings": {key: settings},
            "chunks": chunks, "outputs": {}, "combined": None, "migrated_from": 1}


class Journal:
    """The append-only record of chunks finished since the manifest was written (one fsync'd line each)."""

    def __init__(self, folder: Path):
        self.path = folder / JOURNAL
        self._file = None
        self.bytes_written = 0

    def append(self, record: Mapping[str, Any]) -> int:
        """Append one record as a JSON line, flushed and fsync'd; returns the bytes written."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            if self._file is None:
                self._file = open(self.path, "ab")
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self.bytes_written += len(line)
        return len(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Write the manifest atomically, then drop the journal it now contains."""
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    (folder / JOURNAL).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- planning

@dataclass
class Plan:
    """What a run will do: tasks per unit key, and the finished chunks it keeps."""

    tasks: dict[str, Task] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    kept_stale: list[str] = field(default_factory=list)
    remade: list[str] = field(default_factory=list)      # finished but not matching: --restart
    damaged: list[str] = field(default_factory=list)     # recorded done, but the file is gone or changed


def _finished(folder: Path, unit: Unit, entry: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The record that made ``unit``'s file, when the file is there and still what it records."""
    if not entry or entry.get("status") != "done" or not isinstance(entry.get("made"), dict):
        return None
    made = entry["made"]
    if made.get("text_sha256") != text_sha256(unit.text):
        return None
    f = folder / unit.file
    if not f.is_file() or file_sha256(f) != entry.get("sha256"):
        return None
    return made


def _matches(made: Mapping[str, Any], unit: Unit, models: str) -> bool:
    return made.get("job_seed") == unit.job_seed and made.get("settings") == unit.settings \
        and made.get("models") == models


def plan_units(folder: Path, units: Sequence[Unit], entries: Mapping[str, Mapping[str, Any]],
               settings_table: Mapping[str, Mapping[str, Any]], models: str, regenerate: set[str],
               restart: bool, force_tokens: int | None = None) -> Plan:
    """Decide per unit: skip (finished, current), keep (finished, other settings), or make (a take)."""
    plan = Plan()
    for u in units:
        entry = entries.get(u.key)
        made = _finished(folder, u, entry)
        take = 0
        if made is not None:
            current = _matches(made, u, models)
            if u.key in regenerate:
                take = int(made.get("take") or 0) + 1 if made.get("job_seed") == u.job_seed else 0
            elif current:
                plan.skipped.append(u.key)
                continue
            elif not restart:
                plan.kept_stale.append(u.key)
                continue
            else:
                plan.remade.append(u.key)
        else:
            if entry and entry.get("status") == "done":
                plan.damaged.append(u.key)
                old = entry.get("made") or {}
                if isinstance(old, dict) and _matches(old, u, models):
                    take = int(old.get("take") or 0)  # remake the take the record names
        settings = dict(settings_table[u.settings])
        ft = settings.pop("force_tokens", force_tokens)
        settings.pop("voice", None)
        plan.tasks[u.key] = Task(u.key, u.text, chunk_seed(u.job_seed, u.index, take), take, settings, u.voice, ft)
    return plan


def describe_difference(old: Mapping[str, Any] | None, new: Mapping[str, Any], old_seed: Any, new_seed: int,
                        old_models: Any, new_models: str) -> str:
    """A short 'what changed' list: ``seed 5→6, temperature 0.8→0.7``."""
    parts = []
    if old_seed != new_seed:
        parts.append(f"seed {old_seed}→{new_seed}")
    if old is None:
        parts.append("settings unknown")
    else:
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                parts.append(f"{k} {old.get(k)}→{new.get(k)}")
    if old_models != new_models:
        parts.append("made by an older tortoise-xpu" if old_models == MIGRATED else "model files")
    return ", ".join(parts[:6]) + (", ..." if len(parts) > 6 else "") or "nothing"


# ------------------------------------------------------------------------------------- running

@dataclass
class RunResult:
    """What a run did.  Unit keys: ``synthesised`` (made now), ``skipped`` (finished, current),
    ``kept_stale`` (finished with other settings, kept); ``outputs`` the joined files written.
    ``timing``: ``start_s`` (workers up, voices prepared) and ``work_s`` (first task sent to last
    chunk written), when there was work."""

    synthesised: list[str]
    skipped: list[str]
    kept_stale: list[str]
    outputs: dict[str, Path]
    manifest: Path
    workers: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_s: float = 0.0
    journal_bytes: int = 0
    notice: str | None = None
    executor: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)


Event = Callable[[str, Mapping[str, Any]], None]


def run_units(folder: str | os.PathLike, units: Sequence[Unit], *, settings_table: Mapping[str, Mapping[str, Any]],
              voices: Mapping[str, tuple[Any, int]], executor: Callable[[], Executor],
              save_wav: Callable[[Path, torch.Tensor], None], load_wav: Callable[[Path], torch.Tensor],
              outputs: Mapping[str, Sequence[str]], models: str = UNKNOWN, kind: str = "read",
              job_seed: int | None = None, regenerate: Iterable[str] = (), restart: bool = False,
              on_event: Event | None = None, warn: Callable[[str], None] | None = None,
              extra: Mapping[str, Any] | None = None,
              join: Callable[[Path, Sequence[Path]], None] | None = None) -> RunResult:
    """Make every unit not yet finished into ``folder``, then join the ``outputs``.

    Args:
        units: the chunks, in output order.
        settings_table: settings key → settings dict (``TextToSpeech.tts`` keywords plus
            ``voice`` and ``force_tokens``, all part of what made a chunk).
        voices: voice key → ``(VoiceMaterial, seed)``, handed to the executor.
        executor: makes the :class:`Executor`; called only when some chunk needs work.
        outputs: output file (relative) → the unit keys joined into it, in order.
        models: fingerprint of the model files (a chunk made with others is not current).
        regenerate: unit keys to make a new take of.
        restart: make finished chunks whose settings differ again instead of keeping them.
        on_event: ``on_event(kind, info)`` for progress: ``"plan"``, ``"done"``.
        warn: where the one-line notices go (default: standard error).
        join: ``join(target, chunk_paths)`` writes a joined output atomically (default: load the
            chunks with ``load_wav``, concatenate, ``save_wav``).
    """
    t0 = time.monotonic()
    folder = Path(folder)
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise UserError("two chunks share one name")
    by_key = {u.key: u for u in units}
    regenerate = set(regenerate)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    with FolderLock(folder):
        old = load_state(folder) or {}
        old_entries = {_entry_key(c): c for c in old.get("chunks", [])}
        table = dict(old.get("settings") or {})
        table.update(settings_table)
        manifest: dict[str, Any] = {
            "version": MANIFEST_VERSION, "kind": kind, "seed": job_seed, "models": models,
            "settings": table, "outputs": {}, "combined": None, **(extra or {}), "chunks": []}
        old_outputs = old.get("outputs") or {}
        for u in units:
            prev = old_entries.get(u.key)
            keep = prev if prev and prev.get("status") == "done" and prev.get("file") == u.file else None
            manifest["chunks"].append({
                "job": u.job, "index": u.index, "file": u.file, "text": u.text,
                "status": "done" if keep else "pending", "sha256": keep.get("sha256") if keep else None,
                "seconds": keep.get("seconds") if keep else None, "made": keep.get("made") if keep else None})
        entries = {_entry_key(c): c for c in manifest["chunks"]}
        plan = plan_units(folder, units, entries, table, models, regenerate, restart)
        for key in plan.damaged:
            entries[key].update(status="pending")
        if plan.damaged:
            warn(f"{len(plan.damaged)} chunk(s) recorded as done have a missing or changed file "
                 f"({by_key[plan.damaged[0]].file}...); they are made again")
        notice = None
        if plan.kept_stale or plan.remade:
            stale = plan.kept_stale or plan.remade
            first = entries[stale[0]]["made"]
            u0 = by_key[stale[0]]
            diff = describe_difference(table.get(first.get("settings")), table[u0.settings], first.get("job_seed"),
                                       u0.job_seed, first.get("models"), models)
            if plan.kept_stale:
                notice = (f"{len(plan.kept_stale)} finished chunk(s) were made with other settings ({diff}); "
                          f"they are kept and the new settings apply to the {len(plan.tasks)} chunk(s) still to "
                          f"make; add --restart to make them again with the new settings")
            else:
                notice = (f"--restart: {len(plan.remade)} finished chunk(s) made with other settings ({diff}) "
                          f"are made again; each old file stays until its new one is written")
            warn(notice)
        _write_manifest(folder, manifest)
        if on_event:
            on_event("plan", {"total": len(units), "todo": len(plan.tasks), "skipped": len(plan.skipped),
                              "kept": len(plan.kept_stale)})
        journal = Journal(folder)
        synthesised: list[str] = []
        workers: dict[str, dict[str, float]] = {}
        ex = None
        stats: dict[str, Any] = {}
        timing: dict[str, float] = {}
        failed = False
        try:
            if plan.tasks:
                t_start = time.monotonic()
                ex = executor()
                wanted = {t.voice for t in plan.tasks.values()}
                ex.start({k: v for k, v in voices.items() if k in wanted})
                t_work = time.monotonic()
                timing["start_s"] = round(t_work - t_start, 3)
                for res in ex.run(list(plan.tasks.values())):
                    if res.key in synthesised or res.key not in plan.tasks:
                        continue  # a duplicate from a retried task: written once only
                    if res.error is not None:
                        cls = UserError if res.error[0] == "user" else TortoiseError
                        raise cls(f"{by_key[res.key].label}: {res.error[1]}")
                    unit, task = by_key[res.key], plan.tasks[res.key]
                    path = folder / unit.file
                    save_wav(path, res.wav)  # atomic: the old take stays until this one is whole
                    sha = file_sha256(path)
                    seconds = round(res.wav.shape[-1] / SAMPLE_RATE, 3)
                    made = {"job_seed": unit.job_seed, "seed": task.seed, "take": task.take,
                            "settings": unit.settings, "models": res.models or models,
                            "text_sha256": text_sha256(unit.text),
                            "worker": res.worker}
                    journal.append({"key": res.key, "sha256": sha, "seconds": seconds, "made": made})
                    entries[res.key].update(status="done", sha256=sha, seconds=seconds, made=made)
                    synthesised.append(res.key)
                    w = workers.setdefault(res.worker, {"chunks": 0, "busy_s": 0.0})
                    w["chunks"] += 1
                    w["busy_s"] = round(w["busy_s"] + res.compute_s, 3)
                    if on_event:
                        on_event("done", {"key": res.key, "worker": res.worker, "compute_s": res.compute_s,
                                          "done": len(synthesised), "todo": len(plan.tasks)})
                timing["work_s"] = round(time.monotonic() - t_work, 3)
        except BaseException:
            failed = True
            raise
        finally:
            if ex is not None:
                stats = ex.stats()
                ex.close()
            journal.close()
            # Compact: the journal's lines are in `entries` already; one atomic manifest write.
            if journal.bytes_written:
                try:
                    _write_manifest(folder, manifest)
                except TortoiseError:
                    if not failed:
                        raise
                    # Already failing (disk full?): the journal stays and is replayed by the next run.
        written: dict[str, Path] = {}
        for name, members in outputs.items():
            if any(entries[k]["status"] != "done" for k in members):
                continue
            shas = [entries[k]["sha256"] for k in members]
            target = folder / name
            prev = old_outputs.get(name)
            if prev and prev.get("chunks") == shas and target.is_file() and file_sha256(target) == prev.get("sha256"):
                manifest["outputs"][name] = prev
            else:
                paths = [folder / by_key[k].file for k in members]
                if join is not None:
                    join(target, paths)  # streamed: a book's audio never sits in memory whole
                else:
                    save_wav(target, torch.cat([load_wav(p).reshape(1, -1) for p in paths], dim=-1))
                manifest["outputs"][name] = {"chunks": shas, "sha256": file_sha256(target)}
            written[name] = target
        if kind == "read" and COMBINED in written:
            manifest["combined"] = COMBINED
        _write_manifest(folder, manifest)
    return RunResult(synthesised, plan.skipped, plan.kept_stale, written, folder / MANIFEST, workers,
                     round(time.monotonic() - t0, 3), journal.bytes_written, notice, stats, timing)


# ------------------------------------------------------------------------------------- read

@dataclass
class ReadResult:
    """What a read run did: chunk indices synthesised, skipped and kept, and the combined file."""

    synthesised: list[int]
    skipped: list[int]
    combined: Path
    manifest: Path
    kept_stale: list[int] = field(default_factory=list)
    run: RunResult | None = None


def read_units(chunks: Sequence[str], job_seed: int, settings: Mapping[str, Any], voice: str = "voice"
               ) -> tuple[list[Unit], dict[str, dict[str, Any]]]:
    """The units of a ``read`` job and its one-entry settings table."""
    key = settings_key(settings)
    units = [Unit(None, i, text, chunk_filename(i), job_seed, key, voice) for i, text in enumerate(chunks)]
    return units, {key: dict(settings)}


def read_job(chunks: Sequence[str], folder: str | os.PathLike, executor: Callable[[], Executor],
             save_wav: Callable[[Path, torch.Tensor], None], load_wav: Callable[[Path], torch.Tensor],
             settings: Mapping[str, Any], seed: int, voices: Mapping[str, tuple[Any, int]] | None = None,
             regenerate: Iterable[int] = (), restart: bool = False, models: str = UNKNOWN,
             on_event: Event | None = None, warn: Callable[[str], None] | None = None,
             join: Callable[[Path, Sequence[Path]], None] | None = None) -> ReadResult:
    """``read``: every chunk into ``folder`` (``chunk_NNNN.wav``), then ``combined.wav``.

    ``regenerate`` holds 1-based chunk numbers to make a new take of.
    """
    if not chunks:
        raise UserError("nothing to read: the text is empty after cleaning")
    redo = {int(i) - 1 for i in regenerate}
    bad = sorted(i + 1 for i in redo if not 0 <= i < len(chunks))
    if bad:
        raise UserError(f"--regenerate names chunk(s) {bad} but the text has {len(chunks)} chunks")
    units, table = read_units(chunks, seed, settings)
    voices = voices if voices is not None else {"voice": (None, seed)}
    res = run_units(folder, units, settings_table=table, voices=voices, executor=executor, save_wav=save_wav,
                    load_wav=load_wav, outputs={COMBINED: [u.key for u in units]}, models=models, kind="read",
                    job_seed=seed, regenerate={str(i) for i in redo}, restart=restart, on_event=on_event,
                    warn=warn, join=join)
    return ReadResult([int(k) for k in res.synthesised], [int(k) for k in res.skipped],
                      Path(folder) / COMBINED, res.manifest, [int(k) for k in res.kept_stale], res)


class CallableExecutor:
    """An in-process executor around ``synthesize(text, seed) -> (1, S) tensor`` (tests, simple callers)."""

    def __init__(self, synthesize: Callable[[str, int], torch.Tensor]):
        self.synthesize = synthesize

    def start(self, voices: Mapping[str, tuple[Any, int]]) -> None:
        """Nothing to prepare: the callable knows its voice."""

    def run(self, tasks: Sequence[Task]) -> Iterator[TaskResult]:
        for t in tasks:
            t0 = time.monotonic()
            wav = self.synthesize(t.text, t.seed)
            yield TaskResult(t.key, wav, "local", time.monotonic() - t0)

    def close(self) -> None:
        """Nothing to release."""

    def stats(self) -> dict[str, Any]:
        """Nothing to tell: one process, no retries."""
        return {}


def read_chunks(chunks: list[str], folder: str | os.PathLike, synthesize: Callable[[str, int], torch.Tensor],
                save_wav: Callable[[Path, torch.Tensor], None], load_wav: Callable[[Path], torch.Tensor],
                settings: dict[str, Any], seed: int, regenerate: Iterable[int] = (),
                on_chunk: Callable[[int, int, str], None] | None = None, restart: bool = False,
                warn: Callable[[str], None] | None = None) -> ReadResult:
    """:func:`read_job` with a plain ``synthesize(text, chunk_seed)`` callable, run in this process.

    ``on_chunk(i, n, status)`` reports progress (``"done"`` as each chunk is written).
    """
    n = len(chunks)

    def event(kind: str, info: Mapping[str, Any]) -> None:
        if on_chunk is not None and kind == "done":
            on_chunk(int(info["key"]), n, "done")

    return read_job(chunks, folder, lambda: CallableExecutor(synthesize), save_wav, load_wav, settings, seed,
                    regenerate=regenerate, restart=restart, on_event=event, warn=warn)
