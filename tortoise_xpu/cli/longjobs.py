"""What ``read`` and ``batch`` share: job flags, the executor (local or Ray), cluster progress, summary."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any, Callable, Iterator, Mapping


def add_job_args(p: argparse.ArgumentParser) -> None:
    """Every flag ``read`` and ``batch`` share: --cluster / --restart / --text-split / --float32 / -q /
    --json, then the voice, generation, device and models-folder flags of every synthesis command."""
    from tortoise_xpu.cli.common import add_device_args, add_generation_args, add_models_dir_arg, add_voice_args

    p.add_argument("--cluster", default=None, metavar="WHERE",
                   help="spread chunks over a Ray cluster: auto (the running cluster), ray://HOST:PORT, or "
                        "local[:N] (N workers on this machine); needs the cluster extra")
    p.add_argument("--restart", action="store_true",
                   help="make again the finished chunks that were made with other settings, seed or model "
                        "files (default: keep them; the new settings apply to unfinished chunks)")
    p.add_argument("--text-split", default="200,300", help="desired,max characters per chunk (default 200,300)")
    p.add_argument("--float32", action="store_true", help="write 32-bit float WAVs instead of 16-bit PCM")
    p.add_argument("--disable-redaction", action="store_true", help="speak [bracketed] text instead of cutting it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_voice_args(p)
    add_generation_args(p)
    add_device_args(p)
    add_models_dir_arg(p)


def parse_text_split(value: str) -> tuple[int, int]:
    """``--text-split desired,max``."""
    from tortoise_xpu.errors import UserError

    try:
        desired, maximum = (int(x) for x in value.split(","))
    except ValueError:
        raise UserError(f"--text-split takes two numbers 'desired,max', got {value!r}") from None
    if not 0 < desired <= maximum:
        raise UserError(f"--text-split needs 0 < desired <= max, got {value!r}")
    return desired, maximum


def check_cluster(args: argparse.Namespace):
    """Parse ``--cluster`` and make sure Ray imports, before any work (None without ``--cluster``)."""
    if not args.cluster:
        return None
    from tortoise_xpu.cluster import import_ray, parse_cluster

    target = parse_cluster(args.cluster)
    import_ray()
    return target


class JobProgress:
    """Rich progress for a long-form job: chunks done/total with ETA, and one row per worker
    (chunks done, chunks per minute).  Also feeds the per-stage bars of an in-process engine."""

    def __init__(self, enabled: bool):
        from tortoise_xpu.cli.synth import StageProgress

        self.stages = StageProgress(enabled)
        self.enabled = enabled
        self.chunk_task = None
        self.worker_tasks: dict[str, Any] = {}
        self.worker_done: dict[str, int] = {}
        self.t0 = time.monotonic()

    @contextlib.contextmanager
    def running(self) -> Iterator["JobProgress"]:
        with self.stages.running():
            yield self

    def workers(self, infos: list[dict[str, Any]]) -> None:
        """Add a row per worker once the cluster's workers are up."""
        for info in infos:
            self.worker_done.setdefault(info["name"], 0)
            self.worker_tasks[info["name"]] = self.stages.add(f"  {info['name']} ({info['host']})", 0)

    def event(self, kind: str, info: Mapping[str, Any]) -> None:
        """``run_units``'s progress events."""
        if kind == "plan":
            self.t0 = time.monotonic()
            self.chunk_task = self.stages.add("chunks", info["todo"])
        elif kind == "done":
            self.stages.advance(self.chunk_task, info["done"])
            name = info["worker"]
            self.worker_done[name] = self.worker_done.get(name, 0) + 1
            minutes = max(time.monotonic() - self.t0, 1e-6) / 60
            self.stages.describe(self.worker_tasks.get(name), f"  {name}: {self.worker_done[name]} chunks, "
                                                              f"{self.worker_done[name] / minutes:.1f}/min")


def job_models(args: argparse.Namespace) -> str:
    """The fingerprint of the model files a job's chunks are made with: the models folder's, with
    the ``--X-checkpoint`` overrides in place of the official files they replace."""
    from tortoise_xpu.cli.common import checkpoint_overrides
    from tortoise_xpu.pipeline.chunk_synthesis import models_fingerprint

    return models_fingerprint(args.models_dir, checkpoint_overrides(args))


def make_executor(args: argparse.Namespace, target, models: str, progress: JobProgress) -> Callable[[], Any]:
    """A factory of the run's executor: Ray workers with ``--cluster``, else one in-process engine."""
    from tortoise_xpu.cli.common import checkpoint_overrides
    from tortoise_xpu.pipeline.chunk_synthesis import engine_spec_from_args

    spec = engine_spec_from_args(args, checkpoints=checkpoint_overrides(args))
    if target is not None:
        from tortoise_xpu.cluster.executor import RayExecutor

        return lambda: RayExecutor(target, spec, models, on_workers=progress.workers)

    def local():
        from tortoise_xpu.pipeline.chunk_synthesis import ChunkEngine, LocalExecutor

        engine = ChunkEngine(spec)
        engine.tts.progress = progress.stages  # per-stage bars of the one local engine
        return LocalExecutor(spec, engine)

    return local


def summary(result, total: int, seed: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``--json`` summary shared by read and batch."""
    workers = {}
    for name, w in result.workers.items():
        minutes = max(result.wall_s, 1e-6) / 60
        workers[name] = {"chunks": w["chunks"], "busy_s": w["busy_s"], "chunks_per_min": round(w["chunks"] / minutes, 2)}
    return {"chunks": total, "synthesised_count": len(result.synthesised), "skipped_count": len(result.skipped),
            "kept_other_settings": len(result.kept_stale), "seed": seed, "wall_s": result.wall_s,
            "start_s": result.timing.get("start_s"), "work_s": result.timing.get("work_s"),
            "workers": workers, "retries": result.executor.get("retries", 0),
            "devices": {w["name"]: w["device"] for w in result.executor.get("workers", [])},
            "notice": result.notice, **(extra or {})}


def print_summary(args: argparse.Namespace, data: Mapping[str, Any], line: str) -> None:
    """``--json``: the summary on stdout; else one line on stderr (unless ``-q``)."""
    import json

    if args.json:
        print(json.dumps(data, indent=2))
    elif not args.quiet:
        print(line, file=sys.stderr)


def wav_joiner(subtype: str) -> Callable[[Any, Any], None]:
    """``join(target, parts)``: the chunk WAVs copied block by block into one WAV, atomically.

    Samples are copied as they are stored (16-bit ints stay ints), so the joined file holds
    exactly the chunks' samples, and memory stays at one block whatever the book's length.
    """
    def join(target, parts) -> None:
        import soundfile as sf

        from tortoise_xpu.audio.rates import SAMPLE_RATE
        from tortoise_xpu.errors import TortoiseError
        from tortoise_xpu.fileio import atomic_path, write_failure_reason

        dtype = "float32" if subtype == "FLOAT" else "int16"
        with atomic_path(target) as tmp:
            try:
                with sf.SoundFile(tmp, "w", samplerate=SAMPLE_RATE, channels=1, subtype=subtype, format="WAV") as out:
                    for part in parts:
                        with sf.SoundFile(part) as f:
                            for block in f.blocks(blocksize=1 << 16, dtype=dtype, always_2d=False):
                                out.write(block)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise TortoiseError(f"cannot write {target}: {write_failure_reason(exc, tmp.parent)}") from None

    return join


def interrupted(out: Any) -> int:
    """Ctrl-C: finished chunks are on disk whole and recorded; say how to resume."""
    print(f"interrupted: finished chunks are kept in {out}; run the same command again to resume", file=sys.stderr)
    return 130
