"""``tortoise-xpu devices``: the table, ``--json``, and the installed entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tortoise_xpu.backends import AUTO_ORDER
from tortoise_xpu.cli import main

KEYS = {"name", "available", "reason", "device_name", "total_memory", "free_memory", "dtypes", "policy"}


def _json(capsys, *args):
    assert main(["devices", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_lists_every_backend_cpu_available(capsys, monkeypatch):
    from tests.simdevices import AVX2_CPU, hide_accelerators
    from tortoise_xpu.backends import cpu as cpu_backend

    hide_accelerators(monkeypatch)
    monkeypatch.setattr(cpu_backend, "cpu_features", lambda: AVX2_CPU)  # whatever CPU runs the tests
    rows = _json(capsys)
    assert [r["name"] for r in rows] == list(AUTO_ORDER)
    for row in rows:
        assert KEYS <= set(row)
        if row["name"] == "cpu":
            assert row["available"] and row["reason"] is None and row["auto"]
            assert row["total_memory"] > 0 and "float32" in row["dtypes"]
            assert row["policy"]["dtypes"]["ar"] == "float32"
            assert row["policy"]["candidates"] == 96  # the default preset
            assert row["cpu_features"]["flags"] == ["avx2"] and not row["policy"]["ar_int8"]
            assert "no bfloat16 instructions" in row["policy"]["precision_reasons"]["diffusion"]
        else:
            assert row["available"] is False and row["reason"] and row["policy"] is None


def test_json_with_a_simulated_arc(capsys, simulate):
    simulate("arc-a770")
    rows = {r["name"]: r for r in _json(capsys, "--candidates", "16")}
    xpu = rows["xpu"]
    assert xpu["available"] and xpu["auto"] and not rows["cpu"]["auto"]
    assert xpu["device_name"] == "Intel(R) Arc(TM) A770 Graphics"
    assert xpu["total_memory"] == 16_225_243_136 and xpu["free_memory"] == 15_900_000_000
    assert "float64" not in xpu["dtypes"] and "bfloat16" in xpu["dtypes"]
    assert xpu["policy"]["ar_batch_size"] == 16 and xpu["policy"]["dtypes"]["ar"] == "bfloat16"


def test_overrides_reach_the_policy(capsys, simulate):
    simulate("rtx-3090")
    rows = {r["name"]: r for r in _json(capsys, "--dtype", "float16", "--batch-size", "4", "--low-vram")}
    policy = rows["cuda"]["policy"]
    assert policy["dtypes"] == dict.fromkeys(("ar", "clvp", "diffusion", "vocoder"), "float16")
    assert policy["ar_batch_size"] == 4 and policy["resident"] is False


def test_device_filter_and_bad_device(capsys):
    rows = _json(capsys, "--device", "cpu")
    assert [r["name"] for r in rows] == ["cpu"]
    assert main(["devices", "--device", "tpu"]) == 2
    assert "valid: auto, cpu" in capsys.readouterr().err


def test_table_shows_reasons_and_the_policy(capsys, monkeypatch):
    from tests.simdevices import AVX2_CPU, hide_accelerators
    from tortoise_xpu.backends import cpu as cpu_backend

    hide_accelerators(monkeypatch)
    monkeypatch.setattr(cpu_backend, "cpu_features", lambda: AVX2_CPU)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "cpu (auto)" in out and "hidden by the device simulation" in out
    assert "fp32/fp32/fp32/fp32" in out and "resident" in out
    # why each stage got its dtype on this CPU, and the flags it was decided from
    assert "CPU flags" in out and "avx2" in out and "no bfloat16 instructions" in out
    assert "weights: not prepacked" in out  # the simulated CPU's torch has no packing ops


def test_table_fits_80_columns(capsys, monkeypatch):
    """At 80 columns no line overflows, nothing is cut with an ellipsis, and each reason a backend is
    unavailable reads as prose (not one word per line in a narrow cell)."""
    from tests.simdevices import hide_accelerators

    hide_accelerators(monkeypatch)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "…" not in out
    reason_lines = [line for line in lines if "hidden by the device simulation" in line]
    assert len(reason_lines) >= 3  # one per hidden accelerator, each on its own line
    assert len(lines) < 30


def test_installed_entry_point_prints_parseable_json():
    exe = shutil.which("tortoise-xpu")
    cmd = [exe] if exe else [sys.executable, "-m", "tortoise_xpu"]
    proc = subprocess.run([*cmd, "devices", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    cpu = next(r for r in rows if r["name"] == "cpu")
    assert cpu["available"] is True
    assert all(r["available"] or r["reason"] for r in rows)


@pytest.mark.parametrize("argv", [["devices", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "--json" in capsys.readouterr().out
