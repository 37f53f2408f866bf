"""Portability audit: record every aten op a run executes and check it against a backend's rules.

No Intel Arc or DirectML device is needed to know whether a run would be legal there.
:class:`Recorder` is a ``TorchDispatchMode``: while it is active every aten op (after
autograd and composite decompositions, i.e. the ops a device kernel would have to run) is
logged with its input/output dtypes, the pipeline stage it ran for and where it ran.  Each
backend's :class:`~tortoise_xpu.backends.base.AuditRules` (``Backend.audit_rules``: the
``audit_table`` kept in the backend's class next to its quirks) then says which of those ops
would break there: dtypes the device lacks (float64 on Arc, complex on DirectML),
ops with no kernel that silently fall back to the CPU, ops whose kernel is broken, and the
ops the backend's ``Quirks.cpu_ops`` say must not run on it.

Where an op ran: on a real device, the devices of its tensors say it.  In a *simulated*
run (everything on the CPU while the target backend's Policy plans it, see
:class:`~tortoise_xpu.backends.simulated.SimulatedBackend`) every op counts as device work unless the code declared it
host work on purpose:

* ``with cpu_route("why"):`` or ``@cpu_route("why")`` around code that runs on the CPU by
  design (float64 schedule and filter tables built on the host and cast to float32 there);
* a draw that creates its tensor from a CPU ``torch.Generator`` (the pipeline's sampling
  draws: ``torch.randn(..., generator=cpu_gen)``) is host work by construction.

Those are reported as deliberate CPU routes, never as violations.  Stages come from
``with stage("ar"):`` (``TextToSpeech._timed`` opens one per stage).  Both markers live in
:mod:`tortoise_xpu.backends.markers` and only set a ``ContextVar``.

Example::

    from tortoise_xpu.backends.audit import Recorder, rules_for

    with Recorder() as rec:
        run_something()
    report = rec.report(rules_for("directml"))
    assert report.ok, report.format_violations()
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tortoise_xpu.backends.base import AuditRules, Backend, dtype_name
from tortoise_xpu.backends.markers import current_route, current_stage

__all__ = ["AUDITED_BACKENDS", "AuditReport", "OpRecord", "Recorder", "Violation", "rules_for"]

#: The backends whose audit rules restrict something (``tortoise-xpu doctor --backend all``).
AUDITED_BACKENDS: tuple[str, ...] = ("xpu", "directml", "mps")

#: Route of ops that draw from a CPU generator.
GENERATOR_ROUTE = "random draws from a CPU torch.Generator (one seed, one result on every backend)"
#: Route of ops on meta tensors (shapes only, nothing computed).
META_ROUTE = "meta tensors (shape only, no computation)"
#: Route of CPU ops in a real (not simulated) device run that no ``cpu_route`` declared.
UNDECLARED_ROUTE = "host work not declared with cpu_route"


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_THIS_FILE = os.path.abspath(__file__)


def rules_for(backend: str | Backend) -> AuditRules:
    """The audit rules of a backend (by registry name, alias or instance): its
    ``Backend.audit_rules``, the class's table with the quirks' CPU ops merged in (they may depend
    on the installed torch, e.g. XPU FFT before 2.8).  A simulated backend gives its target's."""
    if isinstance(backend, str):
        from tortoise_xpu.backends import backend_class

        backend = backend_class(backend)(0)
    return backend.audit_rules


# ------------------------------------------------------------------------------------------ records
@dataclass
class OpRecord:
    """Every execution of one op with one signature, in one stage, at one place."""

    op: str                       # "aten::mm.default"
    stage: str
    where: str                    # "device" (simulated), a real device type ("xpu"), "host" or "meta"
    route: str | None             # why it ran on the host (``where == "host"``)
    inputs: tuple[torch.dtype, ...]
    outputs: tuple[torch.dtype, ...]
    count: int = 0
    location: str | None = None   # first package source line that ran it

    @property
    def on_device(self) -> bool:
        return self.where not in ("host", "meta")

    def signature(self) -> str:
        ins = ", ".join(dtype_name(d) for d in self.inputs) or "-"
        outs = ", ".join(dtype_name(d) for d in self.outputs) or "-"
        return f"{self.op}({ins}) -> {outs}"


@dataclass
class Violation:
    """An op that would fail, fall back or misbehave on the audited backend."""

    backend: str
    kind: str          # "dtype", "broken", "fallback", "quirk"
    why: str
    record: OpRecord

    def to_dict(self) -> dict[str, Any]:
        r = self.record
        return {"kind": self.kind, "why": self.why, "op": r.op, "stage": r.stage, "where": r.where,
                "inputs": [dtype_name(d) for d in r.inputs], "outputs": [dtype_name(d) for d in r.outputs],
                "count": r.count, "location": r.location}

    def __str__(self) -> str:
        r = self.record
        return (f"[{self.backend}] {self.kind}: {r.signature()} x{r.count} in stage {r.stage!r} "
                f"at {r.location or '?'}: {self.why}")


def _scan(obj: Any, tensors: list[torch.Tensor], generators: list[torch.Generator]) -> None:
    """Collect the tensors and generators of an op's arguments or results (lists/tuples nest)."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _scan(item, tensors, generators)
    elif isinstance(obj, dict):
        for item in obj.values():
            _scan(item, tensors, generators)
    elif isinstance(obj, torch.Generator):
        generators.append(obj)


_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def _caller_location() -> str | None:
    """Where an op came from: ``tortoise_xpu/audio/mel.py:233 (stft_magnitude)``.

    The innermost frame in this package (outside this file); failing that, the innermost
    frame outside torch (a test or script calling torch directly).
    """
    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path != _THIS_FILE:
            if path.startswith(_PACKAGE_DIR + os.sep):
                rel = os.path.relpath(path, os.path.dirname(_PACKAGE_DIR)).replace(os.sep, "/")
                return f"{rel}:{frame.f_lineno} ({frame.f_code.co_name})"
            if fallback is None and not path.startswith(_TORCH_DIR + os.sep) and not path.startswith("<"):
                fallback = f"{os.path.basename(path)}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return fallback


class Recorder(TorchDispatchMode):
    """Log every aten op run while active (``with Recorder() as rec: ...``).

    Args:
        simulated: the run is on the CPU standing in for a device: CPU ops count as device
            work unless declared host work (:func:`cpu_route`, a CPU generator).  With
            ``False`` (a run on the real device) the tensors' devices decide.
    """

    def __init__(self, simulated: bool = True):
        super().__init__()
        self.simulated = simulated
        self.records: dict[tuple, OpRecord] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out)
        return out

    def _where(self, ins: list[torch.Tensor], outs: list[torch.Tensor],
               generators: list[torch.Generator]) -> tuple[str, str | None]:
        kinds = {t.device.type for t in ins + outs}
        accel = sorted(kinds - {"cpu", "meta"})
        if accel:
            return accel[0], None
        if kinds == {"meta"}:
            return "meta", META_ROUTE
        route = current_route()
        if route is not None:
            return "host", route
        # A draw that creates its tensor from a CPU generator is made on the host; one that reads
        # tensors (multinomial, bernoulli(p), x.normal_()) runs wherever those tensors are.
        if not ins and any(g.device.type == "cpu" for g in generators):
            return "host", GENERATOR_ROUTE
        if self.simulated:
            return "device", None
        return "host", UNDECLARED_ROUTE

    def _record(self, func, args: tuple, kwargs: dict, out: Any) -> None:
        ins: list[torch.Tensor] = []
        outs: list[torch.Tensor] = []
        generators: list[torch.Generator] = []
        _scan(args, ins, generators)
        _scan(kwargs, ins, generators)
        _scan(out, outs, generators)
        where, route = self._where(ins, outs, generators)
        key = (func, current_stage(), where, route, tuple(dict.fromkeys(t.dtype for t in ins)),
               tuple(dict.fromkeys(t.dtype for t in outs)))
        rec = self.records.get(key)
        if rec is None:
            schema = func._schema
            op = f"{schema.name}.{schema.overload_name or 'default'}"
            rec = self.records[key] = OpRecord(op, key[1], where, route, key[4], key[5],
                                               location=_caller_location())
        rec.count += 1

    # -------------------------------------------------------------------------------- results
    def report(self, rules: AuditRules | str | Backend) -> "AuditReport":
        """Check everything recorded so far against ``rules`` (or a backend's :func:`rules_for`)."""
        if not isinstance(rules, AuditRules):
            rules = rules_for(rules)
        return AuditReport.build(rules, list(self.records.values()))

    def clear(self) -> None:
        self.records.clear()


_RANDOM_OPS = ("rand", "randn", "randint", "randperm", "normal", "bernoulli", "multinomial", "exponential",
               "uniform", "poisson", "cauchy", "geometric", "log_normal", "native_dropout")


def _is_random(op: str) -> bool:
    base = op.split("::")[-1].split(".")[0].rstrip("_")
    return base in _RANDOM_OPS or base.endswith("_like") and base[:-5] in _RANDOM_OPS


@dataclass
class AuditReport:
    """What a recorded run means for one backend."""

    rules: AuditRules
    records: list[OpRecord]
    violations: list[Violation]

    @classmethod
    def build(cls, rules: AuditRules, records: list[OpRecord]) -> "AuditReport":
        violations = []
        for rec in records:
            if not rec.on_device:
                continue
            for kind, why in rules.problems(rec.op, rec.inputs + rec.outputs):
                violations.append(Violation(rules.backend, kind, why, rec))
        order = {"broken": 0, "dtype": 1, "quirk": 2, "fallback": 3}
        violations.sort(key=lambda v: (order.get(v.kind, 9), v.record.stage, v.record.op))
        return cls(rules, records, violations)

    @property
    def backend(self) -> str:
        return self.rules.backend

    @property
    def ok(self) -> bool:
        """True when nothing in the run would break on the backend."""
        return not self.violations

    def op_counts(self) -> dict[str, dict[str, int]]:
        """Executed ops per stage: ``{stage: {"device": n, "host": m}}``, stages in first-seen order."""
        counts: dict[str, dict[str, int]] = {}
        for rec in self.records:
            if rec.where == "meta":
                continue  # building models on the meta device computes nothing
            row = counts.setdefault(rec.stage, {"device": 0, "host": 0})
            row["device" if rec.on_device else "host"] += rec.count
        return counts

    def cpu_routes(self) -> list[dict[str, Any]]:
        """Host work, grouped by its declared reason.

        ``avoids`` says, per backend (this one and every one in :data:`AUDITED_BACKENDS`), what
        running that work on the device would break there (e.g. ``"dtype: float64"``,
        ``"fallback: aten::cumprod"``): host tables are cached per process, so whichever audit
        built them reports them for all.
        """
        rule_sets = [self.rules] + [rules_for(b) for b in AUDITED_BACKENDS if b != self.rules.backend]
        groups: dict[str, dict[str, Any]] = {}
        for rec in self.records:
            if rec.where != "host":
                continue
            g = groups.setdefault(rec.route or UNDECLARED_ROUTE,
                                  {"stages": [], "ops": Counter(), "locations": [], "avoids": {}})
            if rec.stage not in g["stages"]:
                g["stages"].append(rec.stage)
            g["ops"][rec.op.split(".")[0]] += rec.count
            if rec.location and rec.location.split(" ")[0] not in [x.split(" ")[0] for x in g["locations"]]:
                g["locations"].append(rec.location)
            for rules in rule_sets:
                for kind, why in rules.problems(rec.op, rec.inputs + rec.outputs):
                    note = f"{kind}: {why.split(' tensors')[0] if kind == 'dtype' else rec.op.split('.')[0]}"
                    notes = g["avoids"].setdefault(rules.backend, [])
                    if note not in notes:
                        notes.append(note)
        return [{"reason": reason, "stages": g["stages"], "count": sum(g["ops"].values()),
                 "ops": dict(g["ops"].most_common()), "locations": g["locations"], "avoids": g["avoids"]}
                for reason, g in groups.items()]

    def device_random_draws(self) -> list[OpRecord]:
        """Random draws made on the device's own generator (not reproducible across backends)."""
        return [r for r in self.records if r.on_device and _is_random(r.op)]

    def format_violations(self, limit: int = 40) -> str:
        """The offending ops, one per line (for test failures and the CLI)."""
        if not self.violations:
            return f"{self.backend}: no violations"
        lines = [f"{self.backend}: {len(self.violations)} violation(s):"]
        lines += [f"  {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        counts = self.op_counts()
        return {
            "backend": self.backend,
            "ok": self.ok,
            "violations": [v.to_dict() for v in self.violations],
            "cpu_routes": self.cpu_routes(),
            "op_counts": counts,
            "total_ops": sum(c["device"] + c["host"] for c in counts.values()),
            "distinct_device_ops": len({r.op for r in self.records if r.on_device}),
            "device_random_draws": [{"op": r.op, "stage": r.stage, "count": r.count, "location": r.location}
                                    for r in self.device_random_draws()],
            "rules": self.rules.to_dict(),
        }
