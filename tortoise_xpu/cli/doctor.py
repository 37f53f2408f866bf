"""``tortoise-xpu doctor``: would a run be legal on Intel XPU, DirectML, Apple MPS? And do the devices here work?

Part one needs no hardware.  For each target backend a short pipeline run (tiny random
models unless ``--models-dir`` is given; a voice clip, so the STFT path runs; the p, DDIM
and DPM++(2M) samplers) executes on the CPU while a
:class:`~tortoise_xpu.backends.simulated.SimulatedBackend` makes the pipeline plan it exactly as
for that device: its Policy's dtypes, batch and residency, the real-valued STFT where
complex tensors are missing.  A :class:`~tortoise_xpu.backends.audit.Recorder` logs every
aten op and the backend's audit rules judge them: violations (must be none), the CPU
routes taken on purpose, and the op counts per stage.

Part two runs where a backend is present: a small matmul, fp16/bf16 autocast, SDPA and
the policy's STFT path on the device, each checked against the CPU and timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

AUDIT_TEXT = "Hello there. This is a portability check."
#: Tiny step counts: the audit is about which ops run, not how good the speech is.
TINY_SETTINGS: dict[str, Any] = {"num_autoregressive_samples": 2, "diffusion_iterations": 3, "max_mel_tokens": 8}


@dataclass(frozen=True)
class AuditRun:
    """One pipeline call of an audit: a preset, tiny overrides, and which voice input to use."""

    label: str
    preset: str
    voice: str = "random"          # "random" (the random-latent generators) or "clip" (mels: the STFT path)
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 1


#: What ``doctor`` runs per backend: every sampler, with and without guidance, the clip path and CVVP.
DEFAULT_RUNS: tuple[AuditRun, ...] = (
    AuditRun("voice clip, p sampler, guidance, CVVP", "fast", voice="clip", settings={"cvvp_amount": 0.5}),
    AuditRun("random voice, p sampler, no guidance", "ultra_fast"),
    AuditRun("random voice, DDIM", "single_sample"),
    AuditRun("random voice, DPM++(2M)", "very_fast"),
)


def run_pipeline(tts: Any, run: AuditRun, text: str = AUDIT_TEXT, clip: Any = None) -> Any:
    """Execute one :class:`AuditRun` on ``tts`` (a ``TextToSpeech``); returns the waveform."""
    kwargs: dict[str, Any] = {**TINY_SETTINGS, **run.settings}
    if run.voice == "clip":
        from tortoise_xpu.audio.synthetic import synthetic_clip

        kwargs["voice_samples"] = [clip if clip is not None else synthetic_clip()]
    return tts.tts_with_preset(text, preset=run.preset, seed=run.seed, **kwargs)


@contextlib.contextmanager
def tiny_models(models_dir: str | Path | None) -> Iterator[tuple[Path, str]]:
    """``(folder, description)``: ``models_dir`` as given, or tiny random models in a temporary folder."""
    if models_dir is not None:
        yield Path(models_dir), str(models_dir)
        return
    from tortoise_xpu.models.loading import write_random_weights, write_standin_data

    with tempfile.TemporaryDirectory(prefix="tortoise-xpu-doctor-") as tmp:
        write_random_weights(tmp, tiny=True, seed=1234, sha=False)
        write_standin_data(tmp)
        yield Path(tmp), "tiny random models (generated for this check)"


@dataclass
class BackendAudit:
    """The audit of one backend: the report plus what was simulated."""

    backend: str
    device: str
    policy: Any
    report: Any
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "policy": self.policy.to_dict(), "policy_summary": self.policy.summary(),
                "seconds": round(self.seconds, 2), **self.report.to_dict()}


def audit_backend(target: str, models_dir: str | Path, runs: tuple[AuditRun, ...] = DEFAULT_RUNS,
                  text: str = AUDIT_TEXT, extra: Callable[[Any], None] | None = None) -> BackendAudit:
    """Run ``runs`` on the CPU, planned as for ``target``, under the audit; judge with its rules.

    ``extra(tts)``, if given, is called under the same recorder after the runs (more code paths).
    """
    from tortoise_xpu.backends.audit import Recorder, rules_for
    from tortoise_xpu.backends.simulated import SimulatedBackend
    from tortoise_xpu.pipeline import TextToSpeech

    sim = SimulatedBackend(target)
    tts = TextToSpeech(models_dir=models_dir, device=sim)
    from tortoise_xpu.audio.synthetic import synthetic_clip

    clip = synthetic_clip()
    recorder = Recorder(simulated=True)
    start = time.perf_counter()
    candidates = TINY_SETTINGS["num_autoregressive_samples"]
    for run in runs:
        with recorder:
            run_pipeline(tts, run, text, clip)
        candidates = tts.last_report.candidates or candidates
    if extra is not None:
        with recorder:
            extra(tts)
    seconds = time.perf_counter() - start
    return BackendAudit(sim.target, sim.label, tts.policy(candidates), recorder.report(rules_for(target)), seconds)


# ------------------------------------------------------------------------------------------ device checks
def _timed_ms(fn: Callable[[], Any], backend: Any, repeat: int = 3) -> tuple[Any, float]:
    out = fn()  # warm-up (kernel compilation, lazy init)
    backend.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    backend.synchronize()
    return out, (time.perf_counter() - start) / repeat * 1e3


def _rel_err(a: "torch.Tensor", b: "torch.Tensor") -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def device_checks(name: str) -> dict[str, Any]:
    """Quick correctness + timing checks on the real device of backend ``name`` (if present)."""
    import torch
    import torch.nn.functional as F

    from tortoise_xpu.backends import BACKENDS, policy_for

    backend = BACKENDS[name](0)
    reason = backend.why_unavailable()
    if reason is not None:
        return {"present": False, "reason": reason, "checks": []}
    policy = policy_for(backend, candidates=16)
    gen = torch.Generator().manual_seed(0)
    checks: list[dict[str, Any]] = []

    def check(label: str, fn: Callable[[], tuple[bool, str, float]]) -> None:
        try:
            ok, detail, ms = fn()
            checks.append({"check": label, "ok": bool(ok), "ms": round(ms, 3), "detail": detail})
        except Exception as exc:  # a device failure is the finding here, not a crash
            checks.append({"check": label, "ok": False, "ms": None,
                           "detail": f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"})

    a_cpu = torch.randn(256, 256, generator=gen)
    b_cpu = torch.randn(256, 256, generator=gen)
    ref = a_cpu @ b_cpu

    def matmul():
        a, b = backend.to_device(a_cpu), backend.to_device(b_cpu)
        out, ms = _timed_ms(lambda: a @ b, backend)
        err = _rel_err(out, ref)
        return err < 1e-3, f"float32 256x256, rel. err {err:.1e}", ms

    check("matmul fp32", matmul)

    for dtype, short in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        if not backend.supports(dtype):
            checks.append({"check": f"autocast {short}", "ok": True, "ms": None,
                           "detail": "dtype not supported here (skipped)"})
            continue

        def autocast(dtype=dtype):
            a, b = backend.to_device(a_cpu), backend.to_device(b_cpu)

            with backend.autocast(dtype):
                engaged = (a @ b).dtype == dtype

            def op():
                if engaged:
                    with backend.autocast(dtype):
                        return a @ b
                return a.to(dtype) @ b.to(dtype)  # no autocast here (DirectML): weights are cast instead

            out, ms = _timed_ms(op, backend)
            err = _rel_err(out, ref)
            how = "autocast" if engaged else "no autocast; cast inputs"
            return out.dtype == dtype and err < 2e-2, f"{how}, {short} out, rel. err {err:.1e}", ms

        check(f"autocast {short}", autocast)

    def sdpa():
        dt = policy.ar_dtype
        q, k, v = (torch.randn(2, 4, 64, 32, generator=gen) for _ in range(3))
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        qd, kd, vd = (backend.to_device(x.to(dt)) for x in (q, k, v))
        out, ms = _timed_ms(lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True), backend)
        err = _rel_err(out, want)
        tol = 1e-4 if dt == torch.float32 else 3e-2
        return err < tol, f"causal, {str(dt).replace('torch.', '')} (the AR dtype), rel. err {err:.1e}", ms

    check("SDPA", sdpa)

    def stft():
        from tortoise_xpu.audio.mel import ar_mel

        from tortoise_xpu.audio.synthetic import synthetic_clip

        clip = synthetic_clip(seconds=2.0)
        want = ar_mel(clip, use_complex=True)
        dev_clip = backend.to_device(clip)
        out, ms = _timed_ms(lambda: ar_mel(dev_clip, use_complex=policy.use_complex_stft), backend)
        diff = float((out.float().cpu() - want).abs().max())
        path = "complex torch.stft" if policy.use_complex_stft else "real-valued STFT"
        return diff < 1e-3, f"{path}, AR log-mel max abs diff {diff:.1e}", ms

    check("STFT path", stft)
    return {"present": True, "device": backend.device_name(), "policy": policy.summary(), "checks": checks}


# ------------------------------------------------------------------------------------------ CLI
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor", help="portability audit (is a run legal on XPU/DirectML/MPS?) and quick device checks",
        description="Run a short pipeline on the CPU, planned as for each target backend, while recording every "
                    "aten op; report ops the backend cannot run (must be none), the deliberate CPU routes and the "
                    "op counts per stage. Where a backend is present, also check a matmul, fp16/bf16 autocast, "
                    "SDPA and the STFT path on the device, with timings.")
    p.add_argument("--backend", default="all",
                   help="backend to audit: a registry name (xpu, directml, mps, cuda, cpu; aliases work) or 'all', "
                        "the backends whose rules restrict something (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON: per backend violations, cpu_routes, op_counts")
    p.add_argument("--models-dir", default=None,
                   help="model folder to audit with (default: tiny random models generated in a temporary folder)")
    p.add_argument("--quick", action="store_true", help="one run per backend (voice clip, p sampler) instead of "
                   f"{len(DEFAULT_RUNS)}")
    p.add_argument("--no-device-checks", action="store_true", help="skip the checks on devices present here")
    p.set_defaults(func=run)


def collect(targets: tuple[str, ...], models_dir: str | None = None, device_checks_on: bool = True,
            runs: tuple[AuditRun, ...] = DEFAULT_RUNS) -> dict[str, Any]:
    """Everything ``doctor`` reports, as a JSON-ready dict (``backends``: one entry per target)."""
    import torch

    result: dict[str, Any] = {"torch": torch.__version__, "runs": [r.label for r in runs], "backends": {}}
    with tiny_models(models_dir) as (folder, description):
        result["models"] = description
        for target in targets:
            entry = audit_backend(target, folder, runs).to_dict()
            if device_checks_on:
                entry["device_checks"] = device_checks(target)
            result["backends"][target] = entry
    if device_checks_on and len(targets) > 1:
        # Any other accelerator present here gets its device checks too.
        from tortoise_xpu.backends import BACKENDS

        for name in BACKENDS:
            if name not in targets and name != "cpu" and BACKENDS[name](0).is_available():
                result.setdefault("other_devices", {})[name] = device_checks(name)
    checked = [b.get("device_checks") or {} for b in result["backends"].values()]
    checked += list(result.get("other_devices", {}).values())
    result["ok"] = (all(b["ok"] for b in result["backends"].values())
                    and all(c["ok"] for entry in checked for c in entry.get("checks", [])))
    return result


def targets_for(choice: str) -> tuple[str, ...]:
    """Registry names to audit for a ``--backend`` value (``all``: the backends whose rules restrict something)."""
    from tortoise_xpu.backends import backend_class
    from tortoise_xpu.backends.audit import AUDITED_BACKENDS

    choice = choice.strip().lower()
    return AUDITED_BACKENDS if choice == "all" else (backend_class(choice).name,)


def run(args: argparse.Namespace) -> int:
    targets = targets_for(args.backend)
    runs = DEFAULT_RUNS[:1] if args.quick else DEFAULT_RUNS
    if args.json:
        result = collect(targets, args.models_dir, not args.no_device_checks, runs)
        print(json.dumps(result, indent=2))
        return 0 if result["ok"] else 1
    from rich.console import Console

    console = Console()
    with console.status("auditing (tiny pipeline runs on the CPU) ..."):
        result = collect(targets, args.models_dir, not args.no_device_checks, runs)
    print_report(result, console)
    return 0 if result["ok"] else 1


def print_report(result: dict[str, Any], console: Any = None) -> None:
    """The rich tables of ``doctor`` for a :func:`collect` result."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    backends = result["backends"]
    summary = Table(title=f"Portability audit: {escape(result['models'])}, torch {result['torch']}, "
                          f"{len(result['runs'])} runs per backend, simulated on the CPU")
    for col in ("backend", "simulated device", "policy", "ops on device / host", "violations", "CPU routes"):
        summary.add_column(col)
    for name, b in backends.items():
        device = sum(c["device"] for c in b["op_counts"].values())
        host = sum(c["host"] for c in b["op_counts"].values())
        bad = len(b["violations"])
        summary.add_row(name, escape(b["device"]), escape(b["policy_summary"] + (
            ", real STFT" if not b["policy"]["use_complex_stft"] else ", complex STFT")),
            f"{device:,} / {host:,}", f"[green]0[/green]" if not bad else f"[red]{bad}[/red]",
            str(len(b["cpu_routes"])))
    console.print(summary)

    for name, b in backends.items():
        if b["violations"]:
            t = Table(title=f"{name}: violations", title_style="bold red")
            for col in ("kind", "op (input dtypes -> output)", "stage", "count", "where in the code", "why"):
                t.add_column(col)
            for v in b["violations"]:
                sig = f"{v['op']}({', '.join(v['inputs']) or '-'}) -> {', '.join(v['outputs']) or '-'}"
                t.add_row(v["kind"], escape(sig), v["stage"], str(v["count"]), escape(v["location"] or "?"),
                          escape(v["why"]))
            console.print(t)

    routes = Table(title="Deliberate CPU routes (host work by design; allowed)")
    for col in ("reason", "stages", "ops (most in one audit)", "keeps off the device (per backend)"):
        routes.add_column(col)
    merged: dict[str, dict[str, Any]] = {}
    for b in backends.values():
        for r in b["cpu_routes"]:
            m = merged.setdefault(r["reason"], {"stages": [], "count": 0, "avoids": {}})
            m["stages"] += [s for s in r["stages"] if s not in m["stages"]]
            m["count"] = max(m["count"], r["count"])
            for name, notes in r["avoids"].items():
                if name in backends:
                    m["avoids"].setdefault(name, [])
                    m["avoids"][name] += [n for n in notes if n not in m["avoids"][name]]
    for reason, m in merged.items():
        avoids = "; ".join(f"{n}: {', '.join(a)}" for n, a in sorted(m["avoids"].items())) or "-"
        routes.add_row(escape(reason), ", ".join(m["stages"]), f"{m['count']:,}", escape(avoids))
    console.print(routes)

    stages = Table(title="Ops by stage (device / host)")
    stages.add_column("stage")
    for name in backends:
        stages.add_column(name, justify="right")
    names = list(dict.fromkeys(s for b in backends.values() for s in b["op_counts"]))
    for s in names:
        cells = []
        for b in backends.values():
            c = b["op_counts"].get(s)
            cells.append(f"{c['device']:,} / {c['host']:,}" if c else "-")
        stages.add_row(s, *cells)
    console.print(stages)

    draws = [(n, d) for n, b in backends.items() for d in b["device_random_draws"]]
    if draws:
        console.print("[yellow]random draws on the device's own generator (not reproducible across backends):[/yellow]")
        for n, d in draws:
            console.print(f"  {n}: {escape(d['op'])} x{d['count']} in {d['stage']} at {escape(d['location'] or '?')}")

    checks = Table(title="Device checks (backends present here)")
    for col in ("backend", "check", "result", "ms", "detail"):
        checks.add_column(col)
    rows = 0
    for name, entry in [*[(n, b.get("device_checks")) for n, b in backends.items()],
                        *result.get("other_devices", {}).items()]:
        if not entry:
            continue
        if not entry["present"]:
            checks.add_row(name, "-", "[dim]not present[/dim]", "", escape(entry["reason"]))
            rows += 1
            continue
        for c in entry["checks"]:
            checks.add_row(name, c["check"], "[green]ok[/green]" if c["ok"] else "[red]FAILED[/red]",
                           "" if c["ms"] is None else f"{c['ms']:.3f}", escape(c["detail"]))
            rows += 1
    if rows:
        console.print(checks)
    verdict = "[green]OK: no violations[/green]" if result["ok"] else "[red]PROBLEMS FOUND (see above)[/red]"
    console.print(verdict)
