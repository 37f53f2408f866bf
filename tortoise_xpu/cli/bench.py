"""``tortoise-xpu bench``: time a fixed unit of synthesis work, stage by stage.

    tortoise-xpu bench --models-dir DIR [--device D] [--tokens 500] [--candidates 16] [--preset ultra_fast]
                       [--text T] [--repeat R] [--no-warmup] [--json] [--out FILE] [--compare OLD.json]
                       [--low-vram] [--dtype bfloat16]

A unit is one ``tts`` call with a fixed text, seed (42) and voice, and a forced number of AR
codes (random weights never emit the stop token; real ones would stop at different lengths).
The voice is synthetic so that no voice files are needed: two clips of 5.90 s and 5.19 s at
22.05 kHz (the lengths of the anchor run's clips), harmonic tones on a drifting pitch under a
syllable-rate envelope plus a little noise, made from a fixed seed
(:func:`tortoise_xpu.audio.synthetic.synthetic_voice`, the voice ``doctor`` uses too).
They go through the whole conditioning stage, as real clips do.

Models are loaded first and timed on their own (``model_load_s``); then one warm-up run
(graph capture, allocator growth, kernel autotuning) unless ``--no-warmup``; then ``--repeat``
timed runs, each device-synchronised per stage.  The median is reported (total, CPU time and
each stage the median over the runs; with an even count the mean of the middle two):
total and per-stage seconds, AR ms per decode step of one batch and tokens/s over all
candidates, the real-time factor (total / audio seconds), peak device memory (``None`` where the
backend cannot say) and the host's peak RSS.  ``--json`` prints one JSON object; ``--compare``
reads an earlier JSON (one object or a list, e.g. ``benchmarks/anchor-original.json``) and prints
old/new ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from tortoise_xpu.cli.common import add_device_args, add_models_dir_arg
from tortoise_xpu.pipeline.validate import positive_int_arg, seed_arg

DEFAULT_TEXT = "Hello world, this is a test."
DEFAULT_SEED = 42
#: Stage names of ``RunReport.stages`` in pipeline order (others, e.g. redaction, follow).
STAGE_ORDER = ("conditioning", "ar", "clvp", "latents", "diffusion", "vocoder")
SCHEMA = 1


@dataclass(frozen=True)
class Unit:
    """One benchmark work unit."""

    tokens: int = 500
    candidates: int = 16
    preset: str = "ultra_fast"
    text: str = DEFAULT_TEXT
    seed: int = DEFAULT_SEED

    @property
    def label(self) -> str:
        text = self.text if len(self.text) <= 32 else self.text[:29] + "..."
        return f"{self.tokens} tokens x {self.candidates}, {self.preset}, \"{text}\""


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="time a fixed synthesis unit stage by stage (JSON, markdown)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_models_dir_arg(p)
    add_device_args(p)
    p.add_argument("--tokens", type=int, default=500, help="AR codes generated per candidate, forced (default 500)")
    p.add_argument("--candidates", type=positive_int_arg, default=16, help="AR candidates (default 16)")
    p.add_argument("--preset", default="ultra_fast", help="generation preset (default ultra_fast)")
    p.add_argument("--text", default=DEFAULT_TEXT, help=f"text to speak (default {DEFAULT_TEXT!r})")
    p.add_argument("--seed", type=seed_arg, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("--repeat", type=int, default=1, help="timed runs; the median is reported (default 1)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="one untimed run first (default: on)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--decode", choices=["auto", "eager", "static", "graph"], default="auto",
                   help="AR decode mode (default auto: graphs where the backend and policy allow)")
    p.add_argument("--compile", action="store_true", help="torch.compile the static decode step")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.add_argument("--compare", default=None, metavar="OLD.json", help="print old/new ratios against a JSON result")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------- measuring
def peak_rss_bytes() -> int | None:
    """The process's peak resident set size, where the OS reports it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _median(values: list[float]) -> float:
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def _median_run(runs: list[dict]) -> dict:
    """The median of the runs: total, CPU time and each stage the median over runs (with an even
    count, the mean of the middle two, so ``--repeat 2`` reports their mean, not the faster)."""
    if len(runs) == 1:
        return runs[0]
    middle = sorted(runs, key=lambda r: r["total_s"])[(len(runs) - 1) // 2]
    out = dict(middle)
    out["total_s"] = _median([r["total_s"] for r in runs])
    out["cpu_time_s"] = _median([r["cpu_time_s"] for r in runs])
    stages = list(middle["stages"])
    out["stages"] = {k: _median([r["stages"].get(k, 0.0) for r in runs]) for k in stages}
    out["other_s"] = max(0.0, out["total_s"] - sum(out["stages"].values()))
    return out


def run_unit(tts: Any, unit: Unit, *, repeat: int = 1, warmup: bool = True, voice: list | None = None,
             log: Any = None, load_s: float | None = None) -> dict:
    """Run ``unit`` on a loaded ``TextToSpeech``; returns the result dict (see the module docstring).
    ``load_s``: the model-load seconds to report (:func:`load_for_bench`)."""
    import torch

    if repeat < 1:
        from tortoise_xpu.errors import UserError

        raise UserError(f"--repeat must be at least 1, got {repeat}")
    from tortoise_xpu.audio.rates import AR_SAMPLE_RATE, SAMPLE_RATE
    from tortoise_xpu.audio.synthetic import VOICE_SECONDS, synthetic_voice

    voice = voice if voice is not None else synthetic_voice()
    kwargs = dict(voice_samples=voice, seed=unit.seed, force_tokens=unit.tokens,
                  num_autoregressive_samples=unit.candidates)

    def once() -> dict:
        tts.backend.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.no_grad():
            wav = tts.tts_with_preset(unit.text, preset=unit.preset, **kwargs)
        tts.backend.synchronize()
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        r = tts.last_report
        stages = {k: r.stages[k] for k in STAGE_ORDER if k in r.stages}
        stages.update({k: v for k, v in r.stages.items() if k not in stages})
        return {"total_s": total, "cpu_time_s": cpu, "stages": stages, "other_s": max(0.0, total - sum(stages.values())),
                "ar_steps": r.ar_steps, "audio_s": r.audio_seconds or wav.shape[-1] / SAMPLE_RATE,
                "peak_memory_bytes": r.peak_memory_bytes, "policy": r.policy, "decode_mode": r.decode_mode,
                "graph_captures": r.graph_captures}

    captures = 0
    if warmup:
        start = time.perf_counter()
        captures += once()["graph_captures"]
        if log:
            log(f"warm-up run: {time.perf_counter() - start:.2f} s")
    runs = []
    for i in range(repeat):
        runs.append(once())
        if log:
            log(f"run {i + 1}/{repeat}: {runs[-1]['total_s']:.2f} s")
    captures += sum(r["graph_captures"] for r in runs)
    best = _median_run(runs)
    policy = best["policy"]
    batch = int(policy.get("ar_batch_size") or unit.candidates)
    batches = math.ceil(unit.candidates / batch)
    ar_s = best["stages"].get("ar", 0.0)
    steps = best["ar_steps"] or unit.tokens
    backend = tts.backend
    return {
        "schema": SCHEMA,
        "unit": asdict(unit),
        "label": unit.label,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(backend.device),
        "backend": backend.name,
        "device_name": backend.device_name(),
        "torch": _torch_version(),
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "policy": policy,
        "decode_mode": best["decode_mode"],
        "graph_captures": captures,
        "tokens": unit.tokens,
        "candidates": unit.candidates,
        "text": unit.text,
        "preset": unit.preset,
        "seed": unit.seed,
        "voice": f"synthetic clips {VOICE_SECONDS} s at {AR_SAMPLE_RATE} Hz (tortoise_xpu.audio.synthetic.synthetic_voice)",
        "warmup": warmup,
        "repeat": repeat,
        "total_s": best["total_s"],
        # Host CPU seconds of the process during the run (all threads): on a shared, loaded machine
        # this says what the run cost when the wall time says mostly how busy the machine was.
        "cpu_time_s": best["cpu_time_s"],
        "stages": best["stages"],
        "other_s": best["other_s"],
        "ar_steps": best["ar_steps"],
        "ar_batches": batches,
        "ar_ms_per_step": 1000.0 * ar_s / (steps * batches) if ar_s else None,
        "tokens_per_s": unit.candidates * steps / ar_s if ar_s else None,
        "audio_s": best["audio_s"],
        "rtf": best["total_s"] / best["audio_s"] if best["audio_s"] else None,
        "peak_memory_bytes": best["peak_memory_bytes"],
        "peak_rss_bytes": peak_rss_bytes(),
        "model_load_s": load_s,
        # Tells full-size runs from tiny test models (421,526,786 for the official AR model).
        "ar_parameters": sum(p.numel() for p in tts.model("autoregressive").parameters()),
        "runs": [{"total_s": r["total_s"], "cpu_time_s": r["cpu_time_s"], "stages": r["stages"]} for r in runs],
    }


def _torch_version() -> str:
    import torch

    return torch.__version__


def load_for_bench(tts: Any, candidates: int) -> float:
    """Load every model of a bench unit up front; returns the seconds it took (for ``run_unit``'s ``load_s``)."""
    start = time.perf_counter()
    tts.load_models(candidates=candidates)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------- output
def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / (1 << 30):.2f} GiB"


def _s(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def markdown_table(results: Sequence[dict]) -> str:
    """One markdown row per result: the anchor table's columns plus speed, memory and load time."""
    head = ["work", "device", "total s", "cond.", "AR s (ms/step)", "CLVP", "latents", "diffusion", "vocoder",
            "other", "RTF", "tokens/s", "peak device mem", "peak RSS", "model load s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        st = r.get("stages", {})
        ar, ms, tps = st.get("ar"), r.get("ar_ms_per_step"), r.get("tokens_per_s")
        name = r.get("device_name") or r.get("device")
        dtype = (r.get("policy") or {}).get("dtypes", {}).get("ar", "?")
        mode = f", {r['decode_mode']}" if r.get("decode_mode") else ""
        cells = [r.get("label", ""), f"{name}, {dtype}{mode}", f"**{r['total_s']:.2f}**", _s(st.get("conditioning")),
                 f"{ar:.2f} ({ms:.1f})" if ar is not None and ms is not None else _s(ar),
                 _s(st.get("clvp")), _s(st.get("latents")), _s(st.get("diffusion")), _s(st.get("vocoder")),
                 _s(r.get("other_s")), _s(r.get("rtf")), "" if tps is None else f"{tps:.0f}",
                 _gib(r.get("peak_memory_bytes")), _gib(r.get("peak_rss_bytes")), _s(r.get("model_load_s"))]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _load_json(path: str) -> list[dict]:
    from tortoise_xpu.errors import UserError

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"--compare: no such file {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--compare: cannot read {path} as JSON ({exc})") from None
    items = data if isinstance(data, list) else data.get("results", [data]) if isinstance(data, dict) else None
    if not items or not all(isinstance(x, dict) and "total_s" in x for x in items):
        raise UserError(f"--compare: {path} holds no benchmark result (an object with total_s, or a list of them)")
    return items


def match_result(new: dict, olds: Sequence[dict], strict: bool = False) -> dict | None:
    """The old result of the same work unit (tokens, candidates, preset, text), same backend first.

    Without ``strict`` a file holding a single result is compared whatever its unit.
    """
    def same_work(o: dict) -> bool:
        return all(o.get(k) == new.get(k) for k in ("tokens", "candidates", "preset", "text") if k in o)

    candidates = [o for o in olds if same_work(o)]
    same_backend = [o for o in candidates if o.get("backend") == new.get("backend")]
    if same_backend or candidates:
        return (same_backend or candidates)[0]
    return olds[0] if len(olds) == 1 and not strict else None


def comparison(new: dict, old: dict) -> list[tuple[str, float | None, float | None, float | None]]:
    """(metric, old, new, old/new) rows: time ratios > 1 mean the new run is faster, memory ratios smaller."""
    rows: list[tuple[str, Any, Any, Any]] = []

    def add(name: str, o: Any, n: Any) -> None:
        if o is None and n is None:
            return
        ratio = (o / n) if isinstance(o, (int, float)) and isinstance(n, (int, float)) and n and o else None
        rows.append((name, o, n, ratio))

    add("total_s", old.get("total_s"), new.get("total_s"))
    stages = list(new.get("stages", {}))
    stages += [k for k in old.get("stages", {}) if k not in stages]
    for k in stages:
        add(f"stages.{k}", old.get("stages", {}).get(k), new.get("stages", {}).get(k))
    add("other_s", old.get("other_s"), new.get("other_s"))
    add("ar_ms_per_step", old.get("ar_ms_per_step"), new.get("ar_ms_per_step"))
    add("rtf", old.get("rtf"), new.get("rtf"))
    add("peak_memory_bytes", old.get("peak_memory_bytes"), new.get("peak_memory_bytes"))
    add("model_load_s", old.get("model_load_s"), new.get("model_load_s"))
    return rows


def comparison_table(new: dict, old: dict, old_name: str = "old") -> str:
    def fmt(name: str, v: Any) -> str:
        if v is None:
            return "n/a"
        return _gib(v) if name == "peak_memory_bytes" else f"{v:.3f}"

    lines = [f"compared with {old_name}: {old.get('label', '')} on {old.get('device_name') or old.get('device')}",
             "| metric | old | new | old/new |", "|---|---:|---:|---:|"]
    for name, o, n, ratio in comparison(new, old):
        lines.append(f"| {name} | {fmt(name, o)} | {fmt(name, n)} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- command
def decode_overrides(decode: str = "auto", compile: bool = False) -> dict[str, Any]:
    """``TextToSpeech`` keyword arguments (Policy overrides) for ``--decode`` and ``--compile``;
    unset, the Policy decides (and reads ``$TORTOISE_XPU_DECODE`` / ``$TORTOISE_XPU_COMPILE``)."""
    return {"decode_mode": None if decode == "auto" else decode, "compile": True if compile else None}


def run(args: argparse.Namespace) -> int:
    import torch

    from tortoise_xpu.cli.synth import build_tts
    from tortoise_xpu.errors import UserError
    from tortoise_xpu.fileio import atomic_write_text, check_writable
    from tortoise_xpu.pipeline.presets import PRESETS

    if args.out is not None:
        check_writable(args.out)  # before minutes of benchmarking
    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose one of: {', '.join(PRESETS)}")
    if args.tokens < 1 or args.candidates < 1:
        raise UserError("--tokens and --candidates must be at least 1")
    old = _load_json(args.compare) if args.compare else None
    if args.threads:
        torch.set_num_threads(args.threads)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    tts = build_tts(args, **decode_overrides(args.decode, args.compile))
    load_s = load_for_bench(tts, args.candidates)
    if log:
        log(f"{tts.backend.name} ({tts.backend.device_name()}): models loaded in {load_s:.2f} s; "
            f"policy {tts.policy(args.candidates).summary()}")
    unit = Unit(tokens=args.tokens, candidates=args.candidates, preset=args.preset, text=args.text, seed=args.seed)
    result = run_unit(tts, unit, repeat=args.repeat, warmup=args.warmup, log=log, load_s=load_s)
    result["command"] = "tortoise-xpu bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None

    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown_table([result]))
    if old is not None:
        match = match_result(result, old)
        if match is None:
            raise UserError(f"--compare: {args.compare} has no result for this work unit")
        print(comparison_table(result, match, args.compare), file=sys.stderr if args.json else sys.stdout)
    return 0
