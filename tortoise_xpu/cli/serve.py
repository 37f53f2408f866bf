"""``tortoise-xpu serve``: the OpenAI-compatible speech server (needs the ``serve`` extra)."""

from __future__ import annotations

import argparse
import os

API_KEY_ENV = "TORTOISE_XPU_API_KEY"
INSTALL_HINT = "pip install 'tortoise-xpu[serve]'"


def register(sub: argparse._SubParsersAction) -> None:
    from tortoise_xpu.cli.common import add_models_dir_arg

    p = sub.add_parser("serve", help="run the OpenAI-compatible speech server",
                       description="Serve POST /v1/audio/speech (OpenAI's shape), voices, /health, /metrics and "
                                   "a web page at /. Loopback only unless --host says otherwise. "
                                   "See docs/serving.md.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000,
                   help="port (default: 8000; 0: a free port the system picks, named in the start-up log line)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, rocm, xpu, mps, directml (default: auto)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every route but /health (default: ${API_KEY_ENV})")
    p.add_argument("--max-queue", type=int, default=32,
                   help="requests waiting to start before new ones get 429 (default: 32)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="AR rows decoded together (default: the device policy's AR batch size)")
    p.add_argument("--max-chars", type=int, default=2000, help="longest input text; longer is a 413 (default: 2000)")
    p.add_argument("--deadline", type=float, default=600.0,
                   help="seconds a request may take before it is dropped with 504 (default: 600)")
    p.add_argument("--voices-dir", default=None,
                   help="folder of the voices the server offers and where uploads are stored "
                        "(default: the user voices folder); $TORTOISE_XPU_VOICES folders are offered read-only")
    add_models_dir_arg(p)
    p.set_defaults(func=run)


def _require_extra() -> None:
    """Import what the serve extra installs; ImportError names the missing module.

    python-multipart (voice uploads) is ``python_multipart`` since 0.0.13 and ``multipart`` before.
    """
    import importlib

    for module in ("starlette", "uvicorn"):
        importlib.import_module(module)
    try:
        importlib.import_module("python_multipart")
    except ImportError:
        importlib.import_module("multipart")


def run(args: argparse.Namespace) -> int:
    from tortoise_xpu.errors import UserError

    try:
        _require_extra()
    except ImportError as exc:
        raise UserError(f"the server needs the serve extra ({exc.name} is missing): {INSTALL_HINT}") from None
    for name in ("max_queue", "max_chars"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_batch is not None and args.max_batch < 1:
        raise UserError("--max-batch must be at least 1")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    from tortoise_xpu.serve.main import serve

    return serve(host=args.host, port=args.port, device=args.device, models_dir=args.models_dir,
                 voices_dir=args.voices_dir, api_key=api_key, max_queue=args.max_queue, max_batch=args.max_batch,
                 max_chars=args.max_chars, deadline_s=args.deadline)
