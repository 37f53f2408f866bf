"""benchmarks/side_by_side.py: our side of the stream unit on tiny models, the table, and its refusals.

The original's side needs the reference venv and full-size weights (minutes); it is validated by
hand (docs/performance.md), not here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sbs():
    spec = importlib.util.spec_from_file_location("side_by_side", REPO / "benchmarks" / "side_by_side.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ours_stream_reports_what_stream_ref_reports(sbs, tiny_models_dir, capsys):
    threads = torch.get_num_threads()
    try:
        assert sbs.ours_stream(["--weights", str(tiny_models_dir), "--codes", "12", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = json.loads(capsys.readouterr().out)
    assert out["codes"] == 12 and out["chunks"] == 1 and out["threads"] == 1
    assert 0 < out["first_audio_s"] <= out["total_s"] and out["audio_s"] > 0
    assert abs(out["rtf"] - out["total_s"] / out["audio_s"]) < 1e-9 and out["model_load_s"] > 0


def test_report_tables_and_medians(sbs):
    info = {"cpu": "Test CPU", "cores": 2, "flags_source": "test", "flags": ["avx2"], "load_average": [0.1]}
    batch = [{"original": {"total_s": 30.0, "ar_s": 17.0, "diffusion_s": 11.0},
              "ours": {"total_s": 10.0, "ar_s": 4.0, "diffusion_s": 5.0}, "ratio": 3.0},
             {"original": {"total_s": 28.0, "ar_s": 16.0, "diffusion_s": 10.0},
              "ours": {"total_s": 14.0, "ar_s": 5.0, "diffusion_s": 7.0}, "ratio": 2.0}]
    table = sbs.report("batch", batch, info)
    assert "Test CPU" in table and "avx2" in table and "| 1 | 30.00 |" in table and "| median | 29.00 |" in table
    assert "2.50x" in table
    stream = [{"original": {"first_audio_s": 7.0, "total_s": 32.0, "rtf": 3.4},
               "ours": {"first_audio_s": 2.0, "total_s": 9.0, "rtf": 0.96}, "ratio": 32 / 9, "first_audio_ratio": 3.5}]
    assert "3.50x" in sbs.report("stream", stream, info)


def test_refuses_a_missing_reference_venv(sbs, tmp_path):
    with pytest.raises(SystemExit):
        sbs.main(["--ref-dir", str(tmp_path), "--weights", str(tmp_path)])
    info = sbs.machine()
    assert info["cpu"] and isinstance(info["flags"], list)
