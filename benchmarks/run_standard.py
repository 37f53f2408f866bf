#!/usr/bin/env python3
"""Run the standard benchmark set on full-size random weights; write JSON and a markdown table.

The units (each 16 candidates, preset ultra_fast, seed 42, the synthetic voice of
``tortoise-xpu bench``, forced token counts):

* ``500``: 500 tokens of "Hello world, this is a test." (the anchor's long unit)
* ``40``: 40 tokens of the same text (the anchor's short unit)
* ``textA``: 108 tokens of the fast fork's text A, "I'm looking for contributors who can do
  optimizations better than me."
* ``500-lowvram``: the 500-token unit again with ``--low-vram`` (skipped on devices whose memory
  is the host's, where per-stage residency frees nothing)

Usage (from the repository root)::

    python benchmarks/run_standard.py --models-dir /tmp/fullsize --make-weights [--device D] \\
        [--out-dir benchmarks/results/NAME] [--repeat 3] [--units 500,40,textA,500-lowvram] [--dtype bfloat16]

``--make-weights`` writes the full-size random weights first when the folder has none
(``tortoise-xpu models random-weights --out DIR --no-sha``: about 4 GB and a minute or two).
Results: ``results.json`` (a list of ``tortoise-xpu bench --json`` objects), ``results.md``
(the table, plus old/new ratios against ``benchmarks/anchor-original.json``, the original's
numbers) and the same table on standard output.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANCHOR = HERE / "anchor-original.json"
TEXT = "Hello world, this is a test."
TEXT_A = "I'm looking for contributors who can do optimizations better than me."

#: name -> (tokens, text, low_vram)
UNITS = {
    "500": (500, TEXT, False),
    "40": (40, TEXT, False),
    "textA": (108, TEXT_A, False),
    "500-lowvram": (500, TEXT, True),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", required=True, help="folder with full-size (random) weights")
    p.add_argument("--make-weights", action="store_true", help="write random weights there first if missing")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--units", default=",".join(UNITS), help=f"comma-separated subset of {', '.join(UNITS)}")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per unit (median reported; default 3)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--decode", choices=["auto", "eager", "static", "graph"], default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out-dir", default=None,
                   help="where results.json / results.md go (default benchmarks/results/<backend>-<date>)")
    return p.parse_args(argv)


def ensure_weights(models_dir: Path) -> None:
    if (models_dir / "autoregressive.pth").is_file():
        return
    print(f"writing full-size random weights to {models_dir} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "tortoise_xpu", "models", "random-weights", "--out", str(models_dir),
                    "--no-sha"], check=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from tortoise_xpu.cli.bench import (Unit, comparison_table, decode_overrides, load_for_bench,
                                        markdown_table, match_result, run_unit)
    from tortoise_xpu.fileio import atomic_write_text
    from tortoise_xpu.pipeline import TextToSpeech

    names = [u.strip() for u in args.units.split(",") if u.strip()]
    unknown = [u for u in names if u not in UNITS]
    if unknown:
        print(f"unknown unit(s) {', '.join(unknown)}; choose from {', '.join(UNITS)}", file=sys.stderr)
        return 2
    models_dir = Path(args.models_dir)
    if args.make_weights:
        ensure_weights(models_dir)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = []
    for low_vram in (False, True):
        todo = [n for n in names if UNITS[n][2] == low_vram]
        if not todo:
            continue
        tts = TextToSpeech(models_dir=models_dir, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                           low_vram=low_vram, **decode_overrides(args.decode, args.compile))
        caps = tts.backend.capabilities()
        if low_vram and (caps.is_cpu or caps.unified_memory):
            log(f"skipping {', '.join(todo)}: {tts.backend.name} shares the host's memory (nothing to offload)")
            continue
        load_s = load_for_bench(tts, 16)
        log(f"{tts.backend.name} ({tts.backend.device_name()}), {'low-VRAM' if low_vram else 'resident'}: "
            f"models loaded in {load_s:.2f} s; policy {tts.policy(16).summary()}")
        for name in todo:
            tokens, text, _ = UNITS[name]
            log(f"unit {name}: {tokens} tokens, {text!r}")
            result = run_unit(tts, Unit(tokens=tokens, text=text), repeat=args.repeat, warmup=args.warmup, log=log,
                              load_s=load_s)
            result["unit_name"] = name
            if low_vram:
                result["label"] += ", low-VRAM"
            results.append(result)
        del tts
        gc.collect()

    if not results:
        log("nothing was run")
        return 1
    backend = results[0]["backend"]
    out_dir = Path(args.out_dir or HERE / "results" / f"{backend}-{datetime.date.today().isoformat()}")
    out_dir.mkdir(parents=True, exist_ok=True)
    anchors = json.loads(ANCHOR.read_text(encoding="utf-8")) if ANCHOR.is_file() else []
    command = "python benchmarks/run_standard.py " + " ".join(sys.argv[1:] if argv is None else argv)
    parts = [f"Command: `{command}`", "", markdown_table(results), ""]
    for r in results:
        old = match_result(r, [a for a in anchors if a.get("backend") == r["backend"]], strict=True)
        if old is not None and "lowvram" not in r.get("unit_name", ""):
            parts += [f"### {r['unit_name']}", "", comparison_table(r, old, "the original"), ""]
    table = "\n".join(parts)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / "results.md", table + "\n")
    print(table)
    log(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
