"""Chunks per minute of ``read`` with 1 and 2 Ray workers on this machine, and the driver's per-chunk cost.

    python benchmarks/cluster_scale.py [--chunks 24] [--workers 1,2] [--json out.json]

What it runs (tiny random models: the shape of scaling, not the speed of real ones):

1. ``read`` of a book of ``--chunks`` chunks in one process (no cluster, one thread): the baseline;
2. ``read --cluster local:N`` for each N of ``--workers`` (a private Ray started and stopped by the run);
3. the driver's own work per chunk (what bounds a cluster however many GPUs it has): write one
   chunk of ``--chunk-seconds`` of audio as a 16-bit WAV atomically, hash it, append its journal
   line (fsync'd); and the bytes a worker sends back per chunk (float32 samples).

Every run is checked to write byte-identical audio.  Ray runs inside a private network namespace
(``unshare -n``, loopback only) when this is root and namespaces are allowed, so nothing leaves the
machine; ``--no-netns`` runs it as is.  Prints a table and, with ``--json``, writes the numbers.
Numbers measured on a shared machine are noisy: say so beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Heavier than the tests' settings, so a chunk's compute (~1 s here) outweighs the per-chunk overheads
# as real models' seconds per chunk do.
TINY = ["--preset", "ultra_fast", "--num-autoregressive-samples", "4", "--diffusion-iterations", "16",
        "--max-mel-tokens", "48", "--device", "cpu", "--seed", "7", "-q", "--json"]


def _in_netns(argv: list[str]) -> int | None:
    """Re-run this script in a loopback-only network + PID namespace; None when that is not possible."""
    if os.environ.get("CLUSTER_SCALE_NETNS") or shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    env = {**os.environ, "CLUSTER_SCALE_NETNS": "1"}
    cmd = ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", 'ip link set lo up && "$0" "$@"',
           sys.executable, __file__, *argv]
    return subprocess.call(cmd, env=env)


def _read(book: Path, out: Path, models: Path, extra: list[str]) -> tuple[float, dict]:
    # One intra-op thread everywhere: each local Ray worker gets one core, and the same thread count
    # is what makes the one-process run and the cluster runs write the same bytes.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tortoise_xpu", "read", str(book), "-o", str(out),
                           "--models-dir", str(models), *TINY, *extra], capture_output=True, text=True, env=env)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"read failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout)


def _row(name: str, chunks: int, wall: float, summary: dict, same: bool) -> dict:
    """One table row: process wall time, worker start-up, and the chunks/min once workers are up."""
    return {"run": name, "workers": len(summary["workers"]), "wall_s": round(wall, 2),
            "start_s": summary["start_s"], "work_s": summary["work_s"],
            "chunks_per_min": round(chunks / summary["work_s"] * 60, 1), "identical": same,
            "per_worker": summary["workers"]}


def _driver_cost(folder: Path, seconds: float, n: int = 40) -> dict:
    """Per-chunk driver work: atomic 16-bit WAV write + sha256 + one fsync'd journal line."""
    import torch

    from tortoise_xpu.audio.io import save_wav
    from tortoise_xpu.pipeline.longform import Journal, file_sha256

    folder.mkdir(parents=True, exist_ok=True)
    wav = 0.1 * torch.randn(1, int(24000 * seconds))
    journal = Journal(folder)
    t0 = time.perf_counter()
    for i in range(n):
        p = folder / f"c{i}.wav"
        save_wav(p, wav, 24000)
        sha = file_sha256(p)
        journal.append({"key": str(i), "sha256": sha, "seconds": seconds,
                        "made": {"job_seed": 7, "seed": 123456789012345678, "take": 0, "settings": "0" * 16,
                                 "models": "0" * 16, "text_sha256": sha, "worker": "w0-cpu"}})
    per = (time.perf_counter() - t0) / n
    journal.close()
    return {"chunk_audio_s": seconds, "driver_ms_per_chunk": round(per * 1000, 2),
            "wav_bytes_per_chunk": (folder / "c0.wav").stat().st_size,
            "transfer_bytes_per_chunk": wav.numel() * 4, "journal_bytes_per_chunk": journal.bytes_written // n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=24)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--chunk-seconds", type=float, default=17.0, help="audio per chunk for the driver cost")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--no-netns", action="store_true", help="do not isolate Ray in a network namespace")
    args = ap.parse_args()
    if not args.no_netns:
        code = _in_netns(sys.argv[1:])
        if code is not None:
            return code
    if not args.no_netns and not os.environ.get("CLUSTER_SCALE_NETNS"):
        print("note: no private network namespace (not root, or not permitted): Ray uses this machine's "
              "addresses", file=sys.stderr)
    sys.path.insert(0, str(REPO))
    from tortoise_xpu.models.loading import write_random_weights, write_standin_data

    work = Path(tempfile.mkdtemp(prefix="cluster-scale-"))
    os.environ.setdefault("RAY_TMPDIR", str(work))
    try:
        models = work / "models"
        write_random_weights(models, tiny=True, seed=1234, sha=False)
        write_standin_data(models)
        book = work / "book.txt"
        book.write_text(" | ".join(f"Sentence {i} of the benchmark book." for i in range(args.chunks)))
        rows = []
        wall, summary = _read(book, work / "single", models, [])
        rows.append(_row("one process", args.chunks, wall, summary, True))
        reference = (work / "single" / "combined.wav").read_bytes()
        for n in [int(x) for x in args.workers.split(",")]:
            wall, summary = _read(book, work / f"ray{n}", models, ["--cluster", f"local:{n}"])
            same = (work / f"ray{n}" / "combined.wav").read_bytes() == reference
            rows.append(_row(f"--cluster local:{n}", args.chunks, wall, summary, same))
        driver = _driver_cost(work / "driver", args.chunk_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"chunks": args.chunks, "cpus": os.cpu_count(), "rows": rows, "driver": driver,
              "load_average": os.getloadavg(), "note": "tiny random models on a shared, loaded machine"}
    print(f"{args.chunks} chunks, tiny models, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"| run | workers | process wall s | workers up s | chunks s | chunks/min | identical |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['run']} | {r['workers']} | {r['wall_s']} | {r['start_s']} | {r['work_s']} | "
              f"{r['chunks_per_min']} | {r['identical']} |")
    print(f"driver per chunk of {driver['chunk_audio_s']} s audio: {driver['driver_ms_per_chunk']} ms "
          f"(WAV {driver['wav_bytes_per_chunk']:,} B, from worker {driver['transfer_bytes_per_chunk']:,} B, "
          f"journal {driver['journal_bytes_per_chunk']} B)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
