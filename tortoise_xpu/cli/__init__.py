"""The ``tortoise-xpu`` command line.

Each subcommand lives in its own module in this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit code).  Heavy
imports (models, torch) happen inside the handlers, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Sequence

from tortoise_xpu import __version__
from tortoise_xpu.errors import TortoiseError

# Order is the order shown in --help.
COMMANDS = ("speak", "read", "batch", "text", "voices", "latents", "serve", "detect", "devices", "doctor", "models",
            "bench")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand whose module exists."""
    parser = _Parser(
        prog="tortoise-xpu",
        description="Tortoise text-to-speech with voice cloning on CUDA, ROCm, Intel XPU, Apple MPS, DirectML and CPU.",
    )
    parser.add_argument("--version", action="version", version=f"tortoise-xpu {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tortoise_xpu.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tortoise_xpu.cli.{name}":
                continue  # command not shipped in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 runtime failure, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or bool(os.environ.get("TORTOISE_XPU_DEBUG"))
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except TortoiseError as exc:
        if debug:
            raise
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug or an unexpected platform failure: still one line
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {_one_line(str(exc))} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block would bury it); subcommand parsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # One line per warning (e.g. a clipped voice clip), without the source line Python would print.
    print(f"warning: {_one_line(str(message))}", file=sys.stderr)
