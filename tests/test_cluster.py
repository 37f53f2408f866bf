"""``read --cluster`` on a real two-node Ray cluster, on loopback only, against a single-process run.

Each test runs tests/cluster_scenarios.py under ``unshare -n -p -f --mount-proc``: a private network
namespace where only ``lo`` exists (Ray would otherwise advertise eth0's address and probe 8.8.8.8)
and a private PID namespace, so every process Ray starts dies with the scenario.  Ray's session
folder goes to a private ``RAY_TMPDIR`` removed afterwards.  Where namespaces are not permitted the
tests skip and say so; without Ray they skip, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.error_cases import run_cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "cluster_scenarios.py"
TINY = ["--preset", "ultra_fast", "--num-autoregressive-samples", "2", "--diffusion-iterations", "2",
        "--max-mel-tokens", "8", "--device", "cpu", "--seed", "11"]
WORDS = "one two three four five six seven eight nine ten eleven twelve".split()
BOOK = " | ".join(f"Part {w} of the book." for w in WORDS)  # 12 chunks


def _require_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ray is not installed; .ci/run installs the cluster extra (pip install -e '.[cluster]')")
        pytest.skip("ray is not installed (pip install 'tortoise-xpu[cluster]')")


def _namespaces_reason() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2) for a loopback-only network namespace"
    try:
        proc = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", "ip link set lo up"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if proc.returncode != 0:
        return f"private network namespaces are not permitted here ({' '.join(proc.stderr.split())[:120]})"
    return None


@pytest.fixture(scope="module")
def reference(tiny_models_dir, tmp_path_factory):
    """The book read by one process on the CPU (no cluster): what every cluster run must equal."""
    _require_ray()
    reason = _namespaces_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("cluster")
    book = base / "book.txt"
    book.write_text(BOOK, encoding="utf-8")
    out = base / "single"
    from tortoise_xpu.cli import main

    assert main(["read", str(book), "-o", str(out), "--models-dir", str(tiny_models_dir), "-q", *TINY]) == 0
    return book, out


def _scenario(name: str, book: Path, out: Path, models: Path) -> dict:
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", 'ip link set lo up && "$0" "$@"',
           sys.executable, str(SCRIPT), name, str(out), str(book), str(models), *TINY]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=str(REPO))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["rc"] == 0, result
    assert result["address"].startswith("127.0.0.1:"), result  # loopback only
    return result


def _same_audio(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("*.wav"))
    assert names == [f"chunk_{i:04d}.wav" for i in range(1, 13)] + ["combined.wav"]
    assert names == sorted(p.name for p in b.glob("*.wav"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_cluster_read_equals_single_process(reference, tiny_models_dir, tmp_path):
    book, single = reference
    result = _scenario("plain", book, tmp_path / "out", tiny_models_dir)
    summary = result["summary"]
    assert summary["synthesised_count"] == 12 and len(summary["devices"]) == 2, summary
    assert sum(w["chunks"] for w in summary["workers"].values()) == 12
    _same_audio(tmp_path / "out", single)
    made = [c["made"] for c in _manifest(tmp_path / "out")["chunks"]]
    assert made == [c["made"] | {"worker": m["worker"]} for c, m in zip(_manifest(single)["chunks"], made)]
    assert not (tmp_path / "out" / "journal.jsonl").exists()


def test_cluster_worker_killed_mid_run(reference, tiny_models_dir, tmp_path):
    book, single = reference
    result = _scenario("kill-worker", book, tmp_path / "out", tiny_models_dir)
    assert result["killed_worker"], result  # a worker really died mid-run
    summary = result["summary"]
    assert summary["retries"] >= 1 and summary["synthesised_count"] == 12, summary
    _same_audio(tmp_path / "out", single)


def test_cluster_driver_killed_then_resumed(reference, tiny_models_dir, tmp_path, capsys):
    book, single = reference
    out = tmp_path / "out"
    result = _scenario("kill-driver", book, out, tiny_models_dir)
    assert result["driver_was_running"], result
    summary = result["summary"]
    done_before = result["killed_driver_after"]
    assert 2 <= done_before < 12
    # the resumed run kept what the dead driver had recorded and made only the rest
    assert summary["skipped_count"] >= done_before and summary["synthesised_count"] == 12 - summary["skipped_count"]
    _same_audio(out, single)
    # and the same command once more has nothing left to do (here without the cluster)
    code, stdout, err = run_cli(["read", book, "-o", out, "--models-dir", tiny_models_dir, "--json", *TINY], capsys)
    assert code == 0, err
    assert json.loads(stdout)["skipped_count"] == 12
