"""``tortoise-xpu bench`` and benchmarks/run_standard.py on tiny random models (CPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tortoise_xpu.cli import main
from tortoise_xpu.cli.bench import comparison, markdown_table, match_result

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("device", "total_s", "stages", "ar_ms_per_step", "tokens", "candidates", "audio_s", "rtf",
            "peak_memory_bytes", "model_load_s", "tokens_per_s")


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    """bench --threads sets torch's thread count for the process; put it back after each test."""
    monkeypatch.delenv("TORTOISE_XPU_DECODE", raising=False)
    monkeypatch.delenv("TORTOISE_XPU_COMPILE", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _bench(capsys, models_dir, *extra: str) -> tuple[int, str, str]:
    # single_sample: 10 diffusion steps keep each run short; the preset is a flag like any other
    code = main(["bench", "--models-dir", str(models_dir), "--device", "cpu", "--tokens", "6", "--candidates", "2",
                 "--threads", "1", "--preset", "single_sample", "-q", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_json_has_the_issue_fields_and_consistent_numbers(capsys, tiny_models_dir, tmp_path):
    out_file = tmp_path / "r.json"
    code, out, err = _bench(capsys, tiny_models_dir, "--json", "--no-warmup", "--out", str(out_file),
                            "--decode", "static")
    assert code == 0, err
    r = json.loads(out)
    assert json.loads(out_file.read_text()) == r
    for key in REQUIRED:
        assert key in r, key
    assert r["device"] == "cpu" and r["tokens"] == 6 and r["candidates"] == 2 and r["ar_steps"] == 6
    assert {"conditioning", "ar", "clvp", "latents", "diffusion", "vocoder"} <= set(r["stages"])
    assert r["ar_ms_per_step"] == pytest.approx(1000 * r["stages"]["ar"] / 6)
    assert r["tokens_per_s"] == pytest.approx(2 * 6 / r["stages"]["ar"])
    assert 0 < r["audio_s"] < 1
    assert r["rtf"] == pytest.approx(r["total_s"] / r["audio_s"])
    assert r["total_s"] >= sum(r["stages"].values()) - 1e-6
    assert r["peak_memory_bytes"] is None  # the CPU backend cannot say; peak RSS is reported instead
    assert r["peak_rss_bytes"] is None or r["peak_rss_bytes"] > 0
    assert r["model_load_s"] > 0 and r["decode_mode"] == "static" and r["seed"] == 42
    assert r["ar_parameters"] < 5_000_000  # tiny models: the JSON says so


def test_bench_table_and_compare_ratios(capsys, tiny_models_dir, tmp_path):
    old = {"label": "old run", "backend": "cpu", "tokens": 6, "candidates": 2, "preset": "single_sample",
           "text": "Hello world, this is a test.", "total_s": 1000.0, "stages": {"ar": 500.0}, "ar_ms_per_step": 9e4}
    other = dict(old, tokens=99, total_s=1.0)
    path = tmp_path / "old.json"
    path.write_text(json.dumps([other, old]))
    code, out, err = _bench(capsys, tiny_models_dir, "--no-warmup", "--compare", str(path))
    assert code == 0, err
    assert out.startswith("| work | device | total s |")
    assert "6 tokens x 2, single_sample" in out
    row = next(line for line in out.splitlines() if line.startswith("| total_s |"))
    assert row.split("|")[2].strip() == "1000.000"  # matched the same work unit, not the first entry
    assert float(row.split("|")[4].strip().rstrip("x")) > 10


def test_bench_rejects_a_bad_compare_file(capsys, tiny_models_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    code, _, err = _bench(capsys, tiny_models_dir, "--compare", str(bad))
    assert code == 2 and "no benchmark result" in err
    code, _, err = _bench(capsys, tiny_models_dir, "--compare", str(tmp_path / "missing.json"))
    assert code == 2 and "no such file" in err


def test_low_vram_bench_runs(capsys, tiny_models_dir):
    code, out, err = _bench(capsys, tiny_models_dir, "--json", "--no-warmup", "--low-vram")
    assert code == 0, err
    assert json.loads(out)["policy"]["resident"] is False


def test_comparison_and_table_formatting():
    new = {"label": "u", "device": "cpu", "total_s": 2.0, "stages": {"ar": 1.0, "diffusion": 0.5}, "other_s": 0.5,
           "ar_ms_per_step": 10.0, "tokens_per_s": 100.0, "rtf": 1.0, "peak_memory_bytes": 1 << 30,
           "tokens": 5, "candidates": 1, "preset": "p", "text": "t", "backend": "cpu"}
    old = dict(new, total_s=8.0, stages={"ar": 4.0, "clvp": 1.0}, peak_memory_bytes=2 << 30)
    rows = {name: ratio for name, _, _, ratio in comparison(new, old)}
    assert rows["total_s"] == 4.0 and rows["stages.ar"] == 4.0 and rows["peak_memory_bytes"] == 2.0
    assert rows["stages.clvp"] is None and rows["stages.diffusion"] is None
    table = markdown_table([new])
    assert table.count("\n") == 2 and "1.00 (10.0)" in table and "1.00 GiB" in table
    assert match_result(new, [dict(old, tokens=7)], strict=True) is None
    assert match_result(new, [dict(old, tokens=7)]) is not None


def test_run_standard_writes_json_and_markdown(tiny_models_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("run_standard", REPO / "benchmarks" / "run_standard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out_dir = tmp_path / "std"
    code = mod.main(["--models-dir", str(tiny_models_dir), "--units", "40", "--repeat", "1", "--no-warmup",
                     "--threads", "1", "--out-dir", str(out_dir)])
    assert code == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert [r["unit_name"] for r in results] == ["40"] and results[0]["tokens"] == 40
    assert results[0]["candidates"] == 16 and results[0]["preset"] == "ultra_fast"
    md = (out_dir / "results.md").read_text()
    assert "| work |" in md and "compared with the original" in md  # the CPU anchor has a 40-token unit


def test_repeat_reports_the_real_median():
    from tortoise_xpu.cli.bench import _median_run

    def run(total, ar, cpu):
        return {"total_s": total, "cpu_time_s": cpu, "stages": {"ar": ar, "diffusion": total - ar - 1},
                "other_s": 1.0, "policy": {}}

    two = _median_run([run(10.0, 4.0, 15.0), run(14.0, 6.0, 17.0)])
    assert two["total_s"] == 12.0 and two["stages"]["ar"] == 5.0 and two["cpu_time_s"] == 16.0  # not the lower
    assert abs(two["other_s"] - 1.0) < 1e-9
    three = _median_run([run(10.0, 4.0, 1.0), run(30.0, 6.0, 3.0), run(12.0, 5.0, 2.0)])
    assert three["total_s"] == 12.0 and three["stages"]["ar"] == 5.0
