"""The suite's own measuring tools: they must catch a wrong result and excuse only a real tie."""

from __future__ import annotations

import json

import torch

from tests.parity.compare import Measurement, decisive_prefix, measure, scaled_max_error, tie_window, top1_agreement
from tests.parity.plugin import ParityResults
from tests.parity.tolerances import TOLERANCES, precision_name, tolerance_for


def test_scaled_max_error_is_relative_to_the_range():
    ref = torch.tensor([0.0, 1e-6, 2.0, -4.0])
    assert scaled_max_error(ref.clone(), ref) == 0.0
    # 4e-4 off on a value near zero: 1e-4 of the range, not 400x of that value
    assert abs(scaled_max_error(ref + torch.tensor([0.0, 4e-4, 0.0, 0.0]), ref) - 1e-4) < 1e-9
    assert scaled_max_error(ref[:3], ref) == float("inf")
    assert scaled_max_error(torch.tensor([0.0, float("nan"), 2.0, -4.0]), ref) == float("inf")


def test_one_table_covers_every_precision_with_a_reason():
    assert set(TOLERANCES) == {"float32", "tf32", "float16", "bfloat16", "int8"}
    assert TOLERANCES["float32"].rel <= 1e-4 < TOLERANCES["tf32"].rel < TOLERANCES["float16"].rel <= 1e-2
    assert TOLERANCES["float16"].rel < TOLERANCES["bfloat16"].rel < TOLERANCES["int8"].rel
    assert all(len(t.reason) > 80 for t in TOLERANCES.values())
    assert precision_name(torch.float32, tf32=True) == "tf32" and precision_name(torch.float16, tf32=True) == "float16"
    assert tolerance_for(torch.bfloat16) is TOLERANCES["bfloat16"]


def test_measure_fails_a_wrong_kernel_and_passes_rounding():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 50, generator=g)
    tol = tolerance_for(torch.float16)
    assert measure("m/s", "dev float16", "float16", ref.half().float(), ref, tol, logits=True).ok
    wrong = ref.clone()
    wrong[1, 7] += 0.2 * ref.abs().max()
    m = measure("m/s", "dev float16", "float16", wrong, ref, tol)
    assert not m.ok and "scaled max error" in m.failures[0]
    assert not measure("m/s", "c", "float16", ref[:, :10], ref, tol).ok


def test_top1_excuses_only_ties():
    ref = torch.tensor([[3.0, 2.999, 0.0], [3.0, 1.0, 0.0]])
    swapped_tie = torch.tensor([[2.999, 3.0, 0.0], [3.0, 1.0, 0.0]])
    swapped_real = torch.tensor([[3.0, 2.999, 0.0], [1.0, 3.0, 0.0]])
    window = tie_window(ref, tolerance_for(torch.float16))  # 2 * 1e-2 * 3 = 0.06
    assert top1_agreement(swapped_tie, ref, window) == 1.0
    assert top1_agreement(swapped_real, ref, window) == 0.5


def test_decisive_prefix_stops_at_the_first_near_tie():
    steps = torch.tensor([[[5.0, 1.0]], [[2.0, 1.0]], [[1.0, 0.99]], [[9.0, 0.0]]])  # (steps, B, V)
    assert decisive_prefix(steps, window=0.5) == 2
    assert decisive_prefix(steps, window=0.001) == 4
    assert decisive_prefix(steps, window=5.0) == 0


def test_table_marks_failures_and_writes_markdown_and_json(tmp_path):
    results = ParityResults(lambda: ["cpu"])
    ok = Measurement("ar/logits", "cpu bfloat16", "bfloat16", 1e-3, 5e-2, topk=1.0, k=5)
    bad = Measurement("ar/latents", "cpu bfloat16", "bfloat16", 0.2, 5e-2, failures=["too far"])
    info = Measurement("pipeline/mel", "cpu policy", "float16", 0.2, 1e-2).as_information("not asserted")
    for m in (ok, bad, info):
        results.record(m)
    table = results.markdown()
    assert "| ar/logits | 1.0e-03 ≤ 5e-02, top5 100% | – |" in table
    assert "FAIL 2.0e-01 > 5e-02" in table and "info fp16: 2.0e-01 > 1e-02 (not asserted)" in table
    assert table.splitlines()[0] == "| model/stage | cpu bfloat16 | cpu policy |"
    results.write(tmp_path / "p.md")
    assert "FAIL" in (tmp_path / "p.md").read_text()
    results.write(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert [m["ok"] for m in data["measurements"]] == [True, False, True]
    assert set(data["tolerances"]) == set(TOLERANCES)
