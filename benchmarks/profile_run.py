#!/usr/bin/env python3
"""Where the time of one synthesis goes, op by op: a torch.profiler run of the benchmark unit.

Usage (from the repository root; full-size random weights in DIR)::

    python benchmarks/profile_run.py --models-dir DIR [--device cuda] [--tokens 500] [--candidates 16]
        [--top 25] [--json OUT.json]

One warm-up run (graph capture, autotuning), then one run under ``torch.profiler`` with the CPU
and, where the backend has one, the device activity.  Prints the top operators by device time
(by CPU time on the CPU), the number of device kernels launched, and the run's per-stage
seconds, so that a stage can be judged against its floor: kernels x launch cost for a
launch-bound stage, bytes / bandwidth for a memory-bound one, FLOPs / peak for a compute-bound one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--preset", default="ultra_fast")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tortoise_xpu import TextToSpeech
    from tortoise_xpu.audio.synthetic import synthetic_voice

    tts = TextToSpeech(models_dir=args.models_dir, device=args.device, auto_download=False)
    voice = synthetic_voice()
    kwargs = dict(voice_samples=voice, seed=42, force_tokens=args.tokens,
                  num_autoregressive_samples=args.candidates)
    start = time.perf_counter()
    tts.tts_with_preset("Hello world, this is a test.", preset=args.preset, **kwargs)  # warm-up
    print(f"warm-up: {time.perf_counter() - start:.2f} s", file=sys.stderr)

    activities = [ProfilerActivity.CPU]
    on_device = tts.device.type != "cpu"
    if on_device and torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        tts.tts_with_preset("Hello world, this is a test.", preset=args.preset, **kwargs)
    stages = dict(tts.last_report.stages)

    events = prof.key_averages()
    device_key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    key = device_key if len(activities) > 1 else "self_cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)[:args.top]
    # Kernels are the profiler's device-side events (one per launch).
    kernels = sum(1 for e in prof.events() if e.device_type.name == "CUDA") if len(activities) > 1 else None

    table = [{"op": e.key, "calls": e.count, "ms": getattr(e, key, 0.0) / 1e3} for e in rows]
    total_ms = sum(getattr(e, key, 0.0) for e in events) / 1e3
    print(f"device {tts.device}; stages (s): " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()))
    print(f"profiled {'device' if len(activities) > 1 else 'CPU self'} time {total_ms:.1f} ms"
          + (f"; device kernels launched: {kernels}" if kernels is not None else ""))
    print(f"| op | calls | ms | share |\n|---|---:|---:|---:|")
    for r in table:
        print(f"| {r['op'][:60]} | {r['calls']} | {r['ms']:.2f} | {100 * r['ms'] / max(total_ms, 1e-9):.1f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(tts.device), "stages": stages, "total_ms": total_ms,
                                               "kernels": kernels, "top": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
