"""``tortoise-xpu devices``: every known backend, whether it is usable here, and the policy it would use."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tortoise_xpu.cli.common import add_device_args
from tortoise_xpu.pipeline.validate import positive_int_arg

_FALLBACK_CANDIDATES = 96  # the 'fast' preset, the CLI default


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "devices",
        help="list device backends: availability, memory, dtypes and the policy each would use",
        description="List every device backend (cuda/rocm, xpu, mps, directml, cpu): available or why not, "
                    "memory, supported dtypes, and the run policy it would choose for the official models.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per backend")
    p.add_argument("--candidates", type=positive_int_arg, default=None,
                   help="AR candidates the policy is sized for (default: the default preset's)")
    add_device_args(p)
    p.set_defaults(func=run)


def _default_candidates() -> int:
    try:
        from tortoise_xpu.pipeline.presets import DEFAULT_PRESET, PRESETS

        return int(PRESETS[DEFAULT_PRESET]["num_autoregressive_samples"])
    except Exception:  # presets not available in this build
        return _FALLBACK_CANDIDATES


def collect(device: str = "auto", candidates: int | None = None, overrides: Any = None) -> list[dict[str, Any]]:
    """One ``describe()`` dict per backend, plus ``policy`` (or None) and ``auto`` (the one auto picks).

    ``device`` other than ``auto`` limits the list to that backend (at that index).
    """
    from tortoise_xpu.backends import BACKENDS, list_backends, parse_device, resolve
    from tortoise_xpu.backends.policy import Overrides, make_policy

    candidates = _default_candidates() if candidates is None else candidates
    overrides = overrides or Overrides()
    name, index = parse_device(device)
    if name == "auto":
        backends = list_backends()
        chosen = resolve("auto").name
    else:
        backends = [BACKENDS[name](index or 0)]
        chosen = None
    rows = []
    for backend in backends:
        row = backend.describe()
        row["auto"] = backend.name == chosen
        row["policy"] = None
        if row["available"]:
            policy = make_policy(backend.capabilities(), row["free_memory"], row["total_memory"],
                                 candidates=candidates, overrides=overrides)
            row["policy"] = policy.to_dict()
            row["policy_summary"] = policy.summary()
        rows.append(row)
    return rows


_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "complex64": "c64"}


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 30):.1f}"


def run(args: argparse.Namespace) -> int:
    from tortoise_xpu.backends.policy import overrides_from_args

    rows = collect(args.device, args.candidates, overrides_from_args(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Usable backends in a table; the others as "name: why not" lines below it, which wrap as prose.
    # (A reason in a table cell wrapped one word per line at 80 columns.)
    console = Console()
    table = Table(title="tortoise-xpu device backends")
    table.add_column("backend", no_wrap=True)
    table.add_column("device", ratio=3, overflow="fold")
    table.add_column("GiB free/total", overflow="fold")
    table.add_column("dtypes", ratio=1, overflow="fold")
    table.add_column("policy", ratio=2, overflow="fold")
    for row in rows:
        if not row["available"]:
            continue
        marker = " (auto)" if row["auto"] else ""
        device = f"{row['device']}: {row['device_name'] or '?'}"
        if row["runtime"]:
            device += f" ({row['runtime']})"
        table.add_row(f"[green]{row['name']}{marker}[/green]", escape(device),
                      f"{_gib(row['free_memory'])} / {_gib(row['total_memory'])}",
                      " ".join(_SHORT.get(d, d) for d in row["dtypes"]), escape(row["policy_summary"]))
    if table.row_count:
        console.print(table)
    unavailable = [row for row in rows if not row["available"]]
    if unavailable:
        console.print("not available here:")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")  # the reason wraps under itself, not under the name
        for row in unavailable:
            grid.add_row(f"  [red]{row['name']}[/red]:", escape(row["reason"] or "unavailable"))
        console.print(grid)
    for row in rows:  # the CPU: which flags, which stage gets which dtype and why
        cpu, policy = row.get("cpu_features"), row.get("policy")
        if not cpu or not policy:
            continue
        measured = ", ".join(f"{k} {v:.2f}x" for k, v in cpu["speedups"].items()) or "nothing measured"
        console.print(f"[bold]{row['name']}[/bold] CPU flags ({escape(cpu['source'])}): "
                      f"{' '.join(cpu['flags']) or 'none of interest'}")
        console.print(f"  kernel speed against float32: {escape(measured)}")
        for stage, why in policy.get("precision_reasons", {}).items():
            console.print(f"  {stage}: {escape(why)}")
        if cpu.get("packed_kernel"):
            packed = ("prepacked for oneDNN (AR linears unless int8, diffusion per-step layers; "
                      "streaming HiFi-GAN channels-last)"
                      if policy.get("packed_weights") else "not prepacked ($TORTOISE_XPU_PACKED=0)")
        else:
            packed = "not prepacked (this torch has no oneDNN pointwise ops)"
        console.print(f"  weights: {packed}")
    return 0
