"""The original Tortoise and tortoise-xpu, side by side: same weights, work unit and threads, one after the other.

    python benchmarks/side_by_side.py --ref-dir /work/ref --weights /work/ref/weights --unit batch \
        [--codes 40] [--candidates 16] [--threads 2] [--pairs 3] [--json out.json] [--ours-args "--ar-int8 off"]
    python benchmarks/side_by_side.py --ref-dir /work/ref --weights /work/ref/weights --unit stream \
        [--codes 200] [--threads 2] [--pairs 3] [--json out.json]

The original runs from the reference harness (``ref_run.py`` for the batch unit, ``stream_ref.py``
for streaming) in its own venv (``<ref-dir>/.venv``, built by its ``setup.sh``); the harness is not
part of this repository.  ``--weights`` is the reference's ``make_random_weights.py`` folder (the
official file format, with ``hifidecoder.pth``, ``tokenizer.json`` and ``mel_norms.pth`` added for
streaming and for us: docs/performance.md says how); tortoise-xpu loads the same files.

Units:

* ``batch``: one ``tts`` call, ``ultra_fast``, ``--candidates`` AR samples of ``--codes`` forced
  codes, the same text ("Hello world, this is a test.") and the same two synthetic voice clips
  (``audio.synthetic.synthetic_voice``, written as WAV files and given to the original with ``--voice``);
  the original at AR batch 16 (``--ar-batch-size 16``, its GPU heuristic, not its CPU default of 1),
  kv_cache on, after one warm-up call; ours with ``tortoise-xpu bench`` (its policy; one warm-up run).
* ``stream``: one stream of ``--codes`` codes, random voice, the original's stream text, chunks of
  40 codes after a first 60; each side after a short untimed warm-up stream (8 codes): first
  audio, total and RTF (total / audio seconds).

Each pair runs the original, then ours, each in a fresh process; the table shows both, the ratio
(original / ours, > 1: ours is faster), and the medians over the pairs.  The machine's CPU model,
flags and load average are printed and go into ``--json``.  On a shared machine the seconds are
noisy; the ratio of one pair holds better than either number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BATCH_TEXT = "Hello world, this is a test."
STREAM_TEXT = "The lighthouse keeper counted the ships as they came home."  # stream_ref.py's default
STREAM_SEED = 3
WARMUP_CODES = 8


def machine() -> dict[str, Any]:
    """CPU model, relevant flags, cores, load average, torch version of this (the runner's) interpreter."""
    sys.path.insert(0, str(REPO))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    try:
        from tortoise_xpu.backends.cpu import cpu_flags

        flags, source = cpu_flags()
    except Exception as exc:  # the runner still works without the package's probe
        flags, source = frozenset(), f"unavailable ({exc})"
    return {"cpu": model, "flags": sorted(flags), "flags_source": source, "cores": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "platform": platform.platform()}


def run_json(cmd: list[str], out_json: Path | None, env: dict | None = None, timeout: int = 3600) -> dict:
    """Run ``cmd``; return the JSON it wrote to ``out_json`` (or printed on stdout)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    data = json.loads(out_json.read_text()) if out_json is not None else json.loads(proc.stdout)
    data["_wall_s"] = wall
    return data


def write_voice(folder: Path) -> list[str]:
    """The bench's synthetic voice clips as 22.05 kHz WAV files (for the original's ``--voice``)."""
    sys.path.insert(0, str(REPO))
    import soundfile as sf

    from tortoise_xpu.audio.rates import AR_SAMPLE_RATE
    from tortoise_xpu.audio.synthetic import synthetic_voice

    paths = []
    for i, clip in enumerate(synthetic_voice()):
        path = folder / f"voice{i}.wav"
        sf.write(str(path), clip.reshape(-1).numpy(), AR_SAMPLE_RATE, subtype="FLOAT")
        paths.append(str(path))
    return paths


def ours_env(threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def batch_pair(args: argparse.Namespace, tmp: Path, voice: list[str]) -> dict:
    ref_py = str(Path(args.ref_dir) / ".venv" / "bin" / "python")
    ref_json = tmp / "ref.json"
    ref_cmd = [ref_py, str(Path(args.ref_dir) / "ref_run.py"), "--weights", args.weights, "--preset", "ultra_fast",
               "--max-mel-tokens", str(args.codes), "--ar-batch-size", "16", "--threads", str(args.threads),
               "--text", BATCH_TEXT, "--voice", *voice, "--warmup", "--quiet", "--timings-json", str(ref_json),
               "--out", str(tmp / "ref.wav")]
    if args.candidates != 16:
        ref_cmd += ["--candidates", str(args.candidates)]
    ref = run_json(ref_cmd, ref_json)
    ours_cmd = [sys.executable, "-m", "tortoise_xpu", "bench", "--models-dir", args.weights, "--device", "cpu",
                "--tokens", str(args.codes), "--candidates", str(args.candidates), "--preset", "ultra_fast",
                "--text", BATCH_TEXT, "--threads", str(args.threads), "--repeat", "1", "--json", "--quiet",
                *shlex.split(args.ours_args)]
    ours = run_json(ours_cmd, None, env=ours_env(args.threads))
    r_stages = {k: v["seconds"] for k, v in ref["stages"].items()}
    return {
        "original": {"total_s": ref["tts_total"], "ar_s": r_stages.get("AR sampling"),
                     "diffusion_s": r_stages.get("diffusion"), "stages": r_stages, "model_load_s": ref.get("model_load")},
        "ours": {"total_s": ours["total_s"], "ar_s": ours["stages"].get("ar"),
                 "diffusion_s": ours["stages"].get("diffusion"), "stages": ours["stages"],
                 "model_load_s": ours.get("model_load_s"), "policy": ours.get("policy")},
        "ratio": ref["tts_total"] / ours["total_s"],
        "commands": {"original": shlex.join(ref_cmd), "ours": shlex.join(ours_cmd)},
    }


def stream_pair(args: argparse.Namespace, tmp: Path) -> dict:
    ref_py = str(Path(args.ref_dir) / ".venv" / "bin" / "python")
    ref_json = tmp / "ref_stream.json"
    ref_cmd = [ref_py, str(Path(args.ref_dir) / "stream_ref.py"), "--weights", args.weights, "--codes",
               str(args.codes), "--threads", str(args.threads), "--seed", str(STREAM_SEED), "--text", STREAM_TEXT,
               "--warmup-codes", str(WARMUP_CODES), "--json", str(ref_json)]
    ref = run_json(ref_cmd, ref_json)
    ours_cmd = [sys.executable, str(Path(__file__).resolve()), "ours-stream", "--weights", args.weights,
                "--codes", str(args.codes), "--threads", str(args.threads), *shlex.split(args.ours_args)]
    ours = run_json(ours_cmd, None, env=ours_env(args.threads))
    keys = ("first_audio_s", "total_s", "audio_s", "rtf")
    return {
        "original": {k: ref.get(k) for k in keys} | {"model_load_s": ref.get("model_load_s"),
                                                     "stages": ref.get("stages")},
        "ours": {k: ours.get(k) for k in keys} | {"model_load_s": ours.get("model_load_s"),
                                                  "stages": ours.get("stages"), "policy": ours.get("policy")},
        "ratio": ref["total_s"] / ours["total_s"],
        "first_audio_ratio": ref["first_audio_s"] / ours["first_audio_s"],
        "commands": {"original": shlex.join(ref_cmd), "ours": shlex.join(ours_cmd)},
    }


def ours_stream(argv: list[str]) -> int:
    """Internal: one warm-up stream and one timed stream with tortoise-xpu; prints JSON (stream_ref.py's keys)."""
    p = argparse.ArgumentParser(prog="side_by_side.py ours-stream")
    p.add_argument("--weights", required=True)
    p.add_argument("--codes", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ar-int8", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default="cpu", help="our side's device (the original's stream runs on the CPU here)")
    p.add_argument("--chunk-size", type=int, default=40, help="stream_chunk_size (default 40, the original's)")
    p.add_argument("--first-buffer", type=int, default=60,
                   help="codes before the first chunk at the least (default 60, what the original hard-codes)")
    p.add_argument("--max-chunk-size", type=int, default=None,
                   help="later chunks double up to this many codes (default: --chunk-size, the original's fixed "
                        "chunks; our own default schedule is --chunk-size 20 --first-buffer 20 --max-chunk-size 80)")
    a = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(a.threads)
    from tortoise_xpu import TextToSpeech
    from tortoise_xpu.backends.policy import parse_ar_int8
    from tortoise_xpu.pipeline.stream import StreamStats

    start = time.perf_counter()
    tts = TextToSpeech(models_dir=a.weights, device=a.device, dtype=a.dtype, enable_redaction=False,
                       auto_download=False, ar_int8=parse_ar_int8(a.ar_int8))
    tts.load_models(["autoregressive", "hifidecoder", "rlg_auto"], candidates=1)
    load_s = time.perf_counter() - start
    with torch.no_grad():
        for _ in tts.tts_stream(STREAM_TEXT, seed=STREAM_SEED, force_tokens=WARMUP_CODES):
            pass
        stats = StreamStats()
        start = time.perf_counter()
        first, samples = None, 0
        for chunk in tts.tts_stream(STREAM_TEXT, seed=STREAM_SEED, force_tokens=a.codes, stats=stats,
                                    stream_chunk_size=a.chunk_size, first_buffer=a.first_buffer,
                                    max_stream_chunk_size=a.max_chunk_size if a.max_chunk_size is not None
                                    else a.chunk_size):
            first = time.perf_counter() - start if first is None else first
            samples += chunk.numel()
        total = time.perf_counter() - start
    audio_s = samples / 24000
    print(json.dumps({"first_audio_s": first, "total_s": total, "audio_s": audio_s,
                      "rtf": total / audio_s if audio_s else None, "chunks": stats.chunks, "codes": len(stats.codes),
                      "model_load_s": load_s, "stages": tts.last_report.stages,
                      "policy": tts.policy(1).to_dict(), "threads": torch.get_num_threads()}))
    return 0


def _fmt(x: Any) -> str:
    return "" if x is None else f"{x:.2f}"


def report(unit: str, pairs: list[dict], info: dict) -> str:
    lines = [f"CPU: {info['cpu']} ({info['cores']} logical cores), flags ({info['flags_source']}): "
             f"{' '.join(info['flags'])}; load average before: {info['load_average']}"]
    if unit == "batch":
        lines += ["| pair | original total s | AR | diffusion | tortoise-xpu total s | AR | diffusion | ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for i, p in enumerate(pairs, 1):
            o, u = p["original"], p["ours"]
            lines.append(f"| {i} | {_fmt(o['total_s'])} | {_fmt(o['ar_s'])} | {_fmt(o['diffusion_s'])} | "
                         f"{_fmt(u['total_s'])} | {_fmt(u['ar_s'])} | {_fmt(u['diffusion_s'])} | {p['ratio']:.2f}x |")
        med = lambda side, k: statistics.median(p[side][k] for p in pairs)  # noqa: E731
        lines.append(f"| median | {_fmt(med('original', 'total_s'))} | | | {_fmt(med('ours', 'total_s'))} | | | "
                     f"{statistics.median(p['ratio'] for p in pairs):.2f}x |")
    else:
        lines += ["| pair | original first audio s | total s | RTF | tortoise-xpu first audio s | total s | RTF | "
                  "total ratio | first-audio ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for i, p in enumerate(pairs, 1):
            o, u = p["original"], p["ours"]
            lines.append(f"| {i} | {_fmt(o['first_audio_s'])} | {_fmt(o['total_s'])} | {_fmt(o['rtf'])} | "
                         f"{_fmt(u['first_audio_s'])} | {_fmt(u['total_s'])} | {_fmt(u['rtf'])} | "
                         f"{p['ratio']:.2f}x | {p['first_audio_ratio']:.2f}x |")
        lines.append(f"| median | | | | | | | {statistics.median(p['ratio'] for p in pairs):.2f}x | "
                     f"{statistics.median(p['first_audio_ratio'] for p in pairs):.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ours-stream"]:
        return ours_stream(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref-dir", required=True, help="the reference harness folder, with its .venv built")
    p.add_argument("--weights", required=True, help="make_random_weights.py output (+ hifidecoder.pth for stream)")
    p.add_argument("--unit", choices=["batch", "stream"], default="batch")
    p.add_argument("--codes", type=int, default=None, help="forced AR codes (default 40 batch, 200 stream)")
    p.add_argument("--candidates", type=int, default=16, help="batch unit: AR candidates (default 16)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--ours-args", default="", help="extra flags for our side (e.g. \"--ar-int8 off\")")
    p.add_argument("--json", default=None, help="write every pair, the medians and the machine here")
    args = p.parse_args(argv)
    args.codes = args.codes or (40 if args.unit == "batch" else 200)
    if not (Path(args.ref_dir) / ".venv" / "bin" / "python").exists():
        p.error(f"{args.ref_dir}/.venv is missing: run `bash setup.sh` in the reference folder first")
    if not Path(args.weights).is_dir():
        p.error(f"--weights {args.weights}: no such folder")
    info = machine()
    pairs = []
    with tempfile.TemporaryDirectory(prefix="side_by_side_") as tmp_name:
        tmp = Path(tmp_name)
        voice = write_voice(tmp) if args.unit == "batch" else []
        for i in range(args.pairs):
            pair = batch_pair(args, tmp, voice) if args.unit == "batch" else stream_pair(args, tmp)
            pairs.append(pair)
            print(f"pair {i + 1}/{args.pairs}: original {pair['original']['total_s']:.2f} s, "
                  f"tortoise-xpu {pair['ours']['total_s']:.2f} s, ratio {pair['ratio']:.2f}x", file=sys.stderr)
    table = report(args.unit, pairs, info)
    print(table)
    if args.json:
        result = {"unit": args.unit, "codes": args.codes, "candidates": args.candidates, "threads": args.threads,
                  "machine": info, "pairs": pairs, "median_ratio": statistics.median(p["ratio"] for p in pairs),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "table": table}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
