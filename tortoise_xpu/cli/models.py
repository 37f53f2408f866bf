"""``tortoise-xpu models``: list, download, verify and convert the model files.

    tortoise-xpu models list [--models-dir DIR] [--json]
    tortoise-xpu models download [NAMES...] [--all] [--force] [--models-dir DIR]
    tortoise-xpu models verify [NAMES...] [--models-dir DIR] [--json] [--no-load]
    tortoise-xpu models convert [NAMES...] [--models-dir DIR] [--dtype float16]
    tortoise-xpu models random-weights --out DIR [--seed N] [--only NAMES...] [--tiny]   (developer)

NAMES are file names (``autoregressive.pth``), stems (``clvp2``) or aliases (``clvp``, ``hifigan``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tortoise_xpu.cli.common import add_models_dir_arg
from tortoise_xpu.errors import TortoiseError, UserError
from tortoise_xpu.pipeline.validate import seed_arg


def register(subparsers) -> None:
    """Add ``models`` and its subcommands."""
    p = subparsers.add_parser("models", help="list, download, verify and convert the model files",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    q = sub.add_parser("list", help="every file: source, size, whether it is present")
    add_models_dir_arg(q)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("download", help="fetch files (default: what speech synthesis needs)")
    q.add_argument("names", nargs="*", metavar="NAME", help="files to fetch (default: the core files)")
    q.add_argument("--all", action="store_true", help="also the optional files (cvvp, classifier, hifidecoder)")
    add_models_dir_arg(q)
    q.add_argument("--force", action="store_true", help="fetch again even when the file is present")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.add_argument("--endpoint", default=None,
                   help="Hugging Face endpoint or mirror (default: $TORTOISE_XPU_HF_ENDPOINT, $HF_ENDPOINT, "
                        "https://huggingface.co)")
    q.add_argument("--data-endpoint", default=None,
                   help="base URL for tokenizer.json / mel_norms.pth (default: $TORTOISE_XPU_DATA_ENDPOINT, "
                        "https://raw.githubusercontent.com)")
    q.add_argument("--revision", default=None, help="Hugging Face revision (default: the pinned one)")
    q.set_defaults(func=cmd_download)

    q = sub.add_parser("verify", help="check sha256 and load every present file strictly into its model")
    q.add_argument("names", nargs="*", metavar="NAME", help="files to check (default: all)")
    add_models_dir_arg(q)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--no-load", action="store_true", help="checksums only; do not load the models")
    q.set_defaults(func=cmd_verify)

    q = sub.add_parser("convert", help="write each present checkpoint as <name>.safetensors (used first)")
    q.add_argument("names", nargs="*", metavar="NAME", help="checkpoints to convert (default: every present one)")
    add_models_dir_arg(q)
    q.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="store the weights in this dtype (default: as in the file)")
    q.set_defaults(func=cmd_convert)

    q = sub.add_parser("random-weights",
                       help="(developer) write random weights in the official file format, for benchmarks and tests")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--seed", type=seed_arg, default=1234, help="file i uses seed + i (default 1234)")
    q.add_argument("--only", nargs="+", metavar="NAME", help="only these checkpoints")
    q.add_argument("--tiny", action="store_true", help="tiny test configs instead of the full-size official ones")
    q.add_argument("--init", choices=["perturb", "torch"], default="perturb",
                   help="perturb: constructor init plus N(0, 0.02) on every constant parameter (default); "
                        "torch: constructor init only")
    q.add_argument("--no-sha", action="store_true", help="do not compute sha256 (faster for full size)")
    q.add_argument("--data-from", default=None, metavar="DIR",
                   help="also copy tokenizer.json and mel_norms.pth from DIR (e.g. an installed tortoise/data); "
                        "otherwise stand-ins are written where the folder has none")
    q.set_defaults(func=cmd_random_weights)


# --------------------------------------------------------------------------------------------

def _console():
    from rich.console import Console

    # Piped output gets full-width rows (a table only grows to its content) instead of wrapping at 80.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def _bytes(n: int | None, approx: bool = False) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{'~' if approx else ''}{n / scale:.1f} {unit}"
    return f"{n} B"


def cmd_list(args) -> int:
    from tortoise_xpu import assets

    d = assets.models_dir(args.models_dir)
    rows = []
    for a in assets.ASSETS.values():
        path = assets.find(a.name, d)
        _, checksum = assets.expected_checksum(a.name, d)
        rows.append({
            "file": a.name, "description": a.description, "group": "core" if a.core else "optional",
            "source": f"hf:{a.repo}@{a.revision}" if a.source == "hf" else f"github:{a.repo}@{a.revision[:12]}",
            "size": a.size, "approx_size": a.approx_bytes, "sha256": a.sha256, "checksum_from": checksum,
            "present": path is not None, "path": str(path) if path else None,
            "bytes_on_disk": path.stat().st_size if path else None,
        })
    if args.json:
        print(json.dumps({"models_dir": str(d), "files": rows}, indent=1))
        return 0
    from rich.table import Table

    table = Table(title=f"model files in {d}", title_justify="left")
    for col in ("file", "what", "group", "size", "present", "sha256"):
        table.add_column(col)
    for r in rows:
        size = _bytes(r["size"]) if r["size"] else _bytes(r["approx_size"], approx=True)
        present = _bytes(r["bytes_on_disk"]) if r["present"] else "-"
        table.add_row(r["file"], r["description"], r["group"], size, present, r["checksum_from"])
    _console().print(table)
    missing = [r["file"] for r in rows if r["group"] == "core" and not r["present"]]
    if missing:
        print(f"\nmissing core files: {', '.join(missing)}\nfetch them with: tortoise-xpu models download"
              + (f" --models-dir {args.models_dir}" if args.models_dir else ""))
    return 0


def cmd_download(args) -> int:
    from tortoise_xpu import assets

    d = assets.models_dir(args.models_dir)
    names = assets.resolve_names(args.names or None, core_only=not args.all)
    failures = []
    for name in names:
        a = assets.asset(name)
        try:
            path = assets.download(name, d, progress=not args.no_progress,
                                   endpoint=args.data_endpoint if a.source == "github" else args.endpoint,
                                   revision=args.revision if a.source == "hf" else None, force=args.force)
        except TortoiseError as exc:
            failures.append((name, exc))
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            continue
        print(f"{name}: {path}")
    if failures:
        print(f"{len(failures)} of {len(names)} downloads failed", file=sys.stderr)
        return max(exc.exit_code for _, exc in failures)
    return 0


def cmd_verify(args) -> int:
    from tortoise_xpu import assets

    d = assets.models_dir(args.models_dir)
    rows = assets.verify(d, args.names or None, load=not args.no_load)
    failed = [r for r in rows if r.status == "failed"]
    if args.json:
        print(json.dumps({"models_dir": str(d), "ok": not failed, "files": [r.as_dict() for r in rows]}, indent=1))
    else:
        from rich.table import Table

        table = Table(title=f"verify {d}", title_justify="left")
        for col in ("file", "model", "parameters", "sha256", "status", "reason"):
            table.add_column(col, overflow="fold")
        styles = {"ok": "green", "failed": "bold red", "missing": "dim"}
        for r in rows:
            table.add_row(r.file, r.model, f"{r.parameters:,}" if r.parameters is not None else "-", r.checksum,
                          f"[{styles.get(r.status, '')}]{r.status}[/]",
                          "not present" if r.status == "missing" else r.reason)
        _console().print(table)
        present = [r for r in rows if r.status != "missing"]
        missing = [r.file for r in rows if r.status == "missing"]
        print(f"{len(present) - len(failed)} of {len(present)} present files ok"
              + (f", {len(failed)} failed" if failed else "")
              + (f", {len(missing)} missing" if missing else ""))
        if missing:
            cmd = assets.download_command(" ".join(missing), d)
            print(f"fetch the missing files with: {cmd}")
    return 1 if failed else 0


def cmd_convert(args) -> int:
    import torch

    from tortoise_xpu import assets
    from tortoise_xpu.models import loading, registry

    d = assets.models_dir(args.models_dir)
    names = assets.resolve_names(args.names) if args.names else list(registry.SPECS)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    done, failures = 0, 0
    for name in names:
        if name not in registry.SPECS:
            raise UserError(f"{name} is a data file; only checkpoints are converted")
        src = d / name
        if not src.is_file():
            if args.names:
                print(f"{name}: not in {d}; fetch it with: {assets.download_command(name, d)}", file=sys.stderr)
                failures += 1
            continue
        try:
            dst = loading.convert_to_safetensors(src, name=name, dtype=dtype)
        except TortoiseError as exc:
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            failures += 1
            continue
        done += 1
        print(f"{name} -> {dst} ({_bytes(dst.stat().st_size)})")
    if not done and not failures:
        print(f"no checkpoints in {d} to convert", file=sys.stderr)
    return 1 if failures else 0


def cmd_random_weights(args) -> int:
    from tortoise_xpu.models import loading

    out = Path(args.out)
    rows = loading.write_random_weights(out, names=args.only, seed=args.seed, tiny=args.tiny,
                                        perturb=args.init == "perturb", sha=not args.no_sha,
                                        progress=lambda f: print(f"writing {f} ...", file=sys.stderr, flush=True))
    for r in rows:
        print(f"{r.file:<22} {r.model:<36} {r.parameters:>13,} params  {_bytes(r.bytes):>9}  {r.seconds:6.1f} s")
    if args.data_from:
        copied = loading.copy_data_files(args.data_from, out)
        print(f"copied {', '.join(copied) if copied else 'nothing'} from {args.data_from}")
    standins = loading.write_standin_data(out)
    if standins:
        print(f"wrote stand-in {' and '.join(standins)} (not the official files; use --data-from for those)")
    print(f"wrote {len(rows)} files to {out} ({'tiny' if args.tiny else 'official'} configs)")
    return 0
