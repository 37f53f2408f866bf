"""Cluster scenarios run by tests/test_cluster.py inside a private network namespace (loopback only).

Usage: ``python tests/cluster_scenarios.py SCENARIO OUT BOOK MODELS [extra CLI args...]``

Starts a real two-node Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``, one CPU each, so
two workers), then runs ``tortoise-xpu read BOOK -o OUT --cluster auto`` against it:

* ``plain``: the run, nothing else;
* ``kill-worker``: once two chunks are written, SIGKILL one worker process (a ``ray::ChunkWorker``);
* ``kill-driver``: the driver is a subprocess, SIGKILLed once two chunks are written; then the same
  command runs again and must finish the job.

Prints one JSON line (``RESULT {...}``) with what happened; the caller compares OUT with a
single-process run.  Everything Ray starts lives in this namespace and dies with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def _journal_lines(out: Path) -> int:
    try:
        return len((out / "journal.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _worker_pids() -> list[int]:
    """Processes whose title Ray set to one of our actors (``ray::ChunkWorker...``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if cmd.startswith(b"ray::ChunkWorker"):
            pids.append(int(entry))
    return sorted(pids)


def _wait_for_chunks(out: Path, n: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _journal_lines(out) >= n:
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def main() -> int:
    scenario, out, book, models, *extra = sys.argv[1:]
    out = Path(out)
    from ray.cluster_utils import Cluster

    t0 = time.monotonic()
    small = {"object_store_memory": 80 * 2 ** 20}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, **small})
    cluster.add_node(num_cpus=1, **small)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    result: dict = {"scenario": scenario, "address": cluster.address, "cluster_up_s": round(time.monotonic() - t0, 1)}
    argv = ["read", book, "-o", str(out), "--models-dir", models, "--cluster", "auto", "--json", *extra]
    cmd = [sys.executable, "-m", "tortoise_xpu", *argv]
    try:
        if scenario == "kill-driver":
            first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            reached = _wait_for_chunks(out, 2, first)
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=60)
            result["killed_driver_after"] = _journal_lines(out)
            result["driver_was_running"] = reached
        elif scenario == "kill-worker":
            killed: list[int] = []

            def killer() -> None:
                if _wait_for_chunks(out, 2):
                    pids = _worker_pids()
                    if pids:
                        os.kill(pids[0], signal.SIGKILL)
                        killed.append(pids[0])

            thread = threading.Thread(target=killer, daemon=True)
            thread.start()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        if scenario == "kill-worker":
            thread.join(timeout=5)
            result["killed_worker"] = killed
        result["rc"] = proc.returncode
        result["stderr"] = proc.stderr[-3000:]
        try:
            result["summary"] = json.loads(proc.stdout)
        except ValueError:
            result["stdout"] = proc.stdout[-2000:]
    finally:
        cluster.shutdown()
    result["wall_s"] = round(time.monotonic() - t0, 1)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
