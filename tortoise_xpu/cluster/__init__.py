"""Long-form work spread over a Ray cluster: one worker per accelerator, the driver owns the folder.

``--cluster`` values (see :func:`parse_cluster`):

* ``auto``: the running cluster Ray finds (``RAY_ADDRESS``, or the one ``ray start`` began here);
* ``ray://HOST:PORT``: a remote cluster through Ray Client;
* ``local`` / ``local:N``: a private Ray on this machine, N workers (default: one per accelerator,
  or 1 on a CPU-only machine), stopped when the run ends.

Ray is the ``cluster`` extra (``pip install 'tortoise-xpu[cluster]'``); nothing here imports it
until a cluster is asked for.  The workers are ``cluster/worker.py``'s actors, each holding a
``pipeline.chunk_synthesis.ChunkEngine``; ``cluster/executor.py`` feeds them the chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tortoise_xpu.errors import UserError

INSTALL_HINT = "pip install 'tortoise-xpu[cluster]'  (or: pip install 'ray[client]')"


def import_ray():
    """The ``ray`` module, or a one-line ``UserError`` naming the install command."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--cluster needs Ray, which is not installed; install it with: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class ClusterTarget:
    """Where to run: ``mode`` is ``auto``, ``client`` (``ray://``) or ``local``; ``workers`` for local."""

    mode: str
    address: str | None = None
    workers: int | None = None

    def describe(self) -> str:
        return {"auto": "the running Ray cluster", "client": f"Ray cluster {self.address}",
                "local": f"a local Ray ({self.workers or 'auto'} worker(s))"}[self.mode]


_LOCAL = re.compile(r"^local(?::(\d+))?$")
_CLIENT = re.compile(r"^ray://[^\s:/]+:(\d+)$")


def parse_cluster(value: str) -> ClusterTarget:
    """Parse ``--cluster``; a malformed value is a one-line ``UserError``."""
    text = value.strip()
    if text == "auto":
        return ClusterTarget("auto")
    m = _LOCAL.match(text)
    if m:
        n = int(m.group(1)) if m.group(1) else None
        if n is not None and not 1 <= n <= 1024:
            raise UserError(f"--cluster {value}: the worker count must be between 1 and 1024")
        return ClusterTarget("local", workers=n)
    m = _CLIENT.match(text)
    if m and 0 < int(m.group(1)) < 65536:
        return ClusterTarget("client", address=text)
    raise UserError(f"--cluster takes auto, ray://HOST:PORT or local[:N]; got {value!r}")
