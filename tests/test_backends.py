"""Backend detection, device strings, and the Backend API (on the CPU and on simulated devices)."""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.simdevices import SIM_BY_KEY, SimDevice, hide_accelerators
from tortoise_xpu.backends import AUTO_ORDER, VALID_DEVICES, list_backends, parse_device, resolve
from tortoise_xpu.backends.base import Quirks, normalize_op_name
from tortoise_xpu.backends.cpu import CPUBackend
from tortoise_xpu.backends.cuda import CUDABackend
from tortoise_xpu.backends.directml import DirectMLBackend
from tortoise_xpu.backends.mps import MPSBackend
from tortoise_xpu.backends.xpu import IPEX_ENV, XPUBackend
from tortoise_xpu.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1] / "tortoise_xpu"


# ----------------------------------------------------------------------------- registry
def test_auto_order_and_registry():
    assert AUTO_ORDER == ("cuda", "xpu", "mps", "directml", "cpu")
    names = [b.name for b in list_backends()]
    assert names == list(AUTO_ORDER)


def test_cpu_is_always_available_and_auto_falls_back_to_it(monkeypatch):
    hide_accelerators(monkeypatch)
    backend = resolve("auto")
    assert isinstance(backend, CPUBackend)
    assert backend.device == torch.device("cpu")
    assert backend.why_unavailable() is None
    reasons = {b.name: b.why_unavailable() for b in list_backends()}
    assert reasons["cpu"] is None
    assert all(reasons[name] for name in AUTO_ORDER if name != "cpu")


@pytest.mark.parametrize("present, expected", [
    (("h100", "arc-a770", "apple-m2", "directml"), "cuda"),
    (("arc-a770", "apple-m2", "directml"), "xpu"),
    (("apple-m2", "directml"), "mps"),
    (("directml",), "directml"),
    ((), "cpu"),
])
def test_auto_picks_cuda_then_xpu_then_mps_then_directml_then_cpu(simulate, monkeypatch, present, expected):
    hide_accelerators(monkeypatch, keep=tuple(SIM_BY_KEY[key].backend for key in present))
    for key in present:
        simulate(key, hide_others=False)
    assert resolve("auto").name == expected


@pytest.mark.parametrize("text, expected", [
    ("auto", ("auto", None)),
    ("cpu", ("cpu", None)),
    (" CPU ", ("cpu", None)),
    ("cpu:0", ("cpu", 0)),
    ("cuda", ("cuda", None)),
    ("cuda:1", ("cuda", 1)),
    ("xpu", ("xpu", None)),
    ("xpu:0", ("xpu", 0)),
    ("mps", ("mps", None)),
    ("directml", ("directml", None)),
    ("dml", ("directml", None)),
    ("dml:1", ("directml", 1)),
    ("directml:2", ("directml", 2)),
])
def test_parse_device(text, expected):
    assert parse_device(text) == expected


@pytest.mark.parametrize("text", ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:1:2", "auto:0", "hip", "cpu:1",
                                  "mps:1", "cuda 1", "privateuseone:0"])
def test_bad_device_strings_list_the_valid_choices(text):
    with pytest.raises(UserError) as info:
        resolve(text)
    message = str(info.value)
    assert repr(text) in message or "single device" in message
    if "single device" not in message:
        assert VALID_DEVICES in message


def test_rocm_alias_needs_a_hip_build(simulate, monkeypatch):
    simulate("rtx-3090")
    with pytest.raises(UserError, match="ROCm build"):
        resolve("rocm")
    simulate(SimDevice("mi300", "AMD MI300X", "cuda", "AMD Instinct MI300X", 192 * 2**30, 190 * 2**30), count=2)
    monkeypatch.setattr(torch.version, "hip", "6.4.1")  # a ROCm build: torch.version.cuda is None there
    monkeypatch.setattr(torch.version, "cuda", None)
    backend = resolve("rocm:1")
    assert isinstance(backend, CUDABackend)
    assert backend.device == torch.device("cuda", 1)
    assert backend.runtime() == "ROCm 6.4.1"
    assert backend.supports(torch.bfloat16)  # from torch.cuda.is_bf16_supported() on ROCm


def test_index_beyond_the_devices_present_is_a_clear_error(simulate):
    simulate("rtx-3090", count=2)
    assert resolve("cuda:1").device == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"cuda:2 does not exist \(2 cuda devices\)"):
        resolve("cuda:2")


def test_named_but_unavailable_device_gives_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_directml", None)  # import fails: "not installed"
    with pytest.raises(UserError, match="not available: torch-directml is not installed"):
        resolve("dml")


# ----------------------------------------------------------------------------- detection paths
def _xpu_fakes(monkeypatch, count, device_count=None):
    monkeypatch.setattr(torch.xpu, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.xpu, "device_count", device_count or (lambda: count))


def test_xpu_not_built(monkeypatch):
    monkeypatch.setattr(torch.xpu, "_is_compiled", lambda: False)
    assert "has no XPU support" in XPUBackend().why_unavailable()


def test_xpu_missing_module(monkeypatch):
    monkeypatch.delattr(torch, "xpu")
    assert "has no torch.xpu" in XPUBackend().why_unavailable()


def test_xpu_installed_but_no_device(monkeypatch):
    _xpu_fakes(monkeypatch, 0)
    reason = XPUBackend().why_unavailable()
    assert reason.startswith("no Intel GPU found")
    assert XPUBackend().device_names() == []


def test_xpu_driver_error(monkeypatch):
    def broken():
        raise RuntimeError("level_zero backend failed with error: 2147483646 (UR_RESULT_ERROR_UNKNOWN)")

    _xpu_fakes(monkeypatch, 1, device_count=broken)
    reason = XPUBackend().why_unavailable()
    assert reason.startswith("XPU driver error: level_zero backend failed")


def test_xpu_discrete_device(simulate):
    simulate("arc-a770")
    backend = resolve("xpu:0")
    assert backend.device == torch.device("xpu", 0)
    assert backend.device_names() == ["Intel(R) Arc(TM) A770 Graphics"]
    assert backend.memory() == (16_225_243_136, 15_900_000_000)
    assert backend.supports(torch.bfloat16) and backend.supports(torch.float16)
    assert not backend.supports_float64 and not backend.supports(torch.float64)
    assert backend.supports_complex
    assert backend.quirks.non_blocking_copies is False


def test_xpu_igpu_has_unknown_free_memory_and_is_unified(simulate, monkeypatch):
    dev = simulate("meteor-lake")
    called = []
    monkeypatch.setattr(torch.xpu, "mem_get_info", lambda i=0: called.append(i) or (0, 0))
    backend = resolve("xpu")
    assert backend.memory() == (dev.total, None)
    assert called == []  # never asked: it raises on integrated GPUs
    assert backend.capabilities().unified_memory


def test_xpu_mem_get_info_raising_on_a_discrete_card_gives_unknown_free(simulate):
    simulate(SimDevice("odd", "odd", "xpu", "Intel(R) Arc(TM) B580 Graphics", 12 * 2**30, None, fp64=False))
    assert resolve("xpu").memory() == (12 * 2**30, None)


def test_ipex_is_used_only_when_asked_for(simulate, monkeypatch):
    simulate("arc-a770")
    monkeypatch.delenv(IPEX_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "intel_extension_for_pytorch", None)  # would fail if imported
    assert resolve("xpu").is_available()
    monkeypatch.setenv(IPEX_ENV, "1")
    reason = XPUBackend().why_unavailable()
    assert IPEX_ENV in reason and "not installed" in reason
    fake = types.ModuleType("intel_extension_for_pytorch")
    fake.optimize = lambda module, dtype=None, inplace=False: ("optimized", module, dtype)
    monkeypatch.setitem(sys.modules, "intel_extension_for_pytorch", fake)
    backend = resolve("xpu")
    module = torch.nn.Linear(2, 2)
    assert backend.optimize(module, torch.bfloat16) == ("optimized", module, torch.bfloat16)
    assert backend.runtime().endswith("+ IPEX")


def test_mps_not_built_and_not_available(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    assert "has no MPS support" in MPSBackend().why_unavailable()
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert "MPS" in MPSBackend().why_unavailable()


def test_mps_driver_error(monkeypatch):
    def broken():
        raise RuntimeError("MPS device init failed")

    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", broken)
    assert MPSBackend().why_unavailable() == "driver error while probing mps: MPS device init failed"


def test_mps_simulated(simulate, monkeypatch):
    dev = simulate("apple-m2")
    backend = resolve("mps")
    assert backend.device == torch.device("mps", 0)
    assert backend.memory() == (dev.total, None)
    assert not backend.supports_float64 and backend.supports(torch.bfloat16)
    assert backend.quirks.needs_real_stft
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor=0: major <= 13)
    assert not backend.supports(torch.bfloat16)  # macOS 13: no bf16


def test_directml_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_directml", None)
    reason = DirectMLBackend().why_unavailable()
    assert reason.startswith("torch-directml is not installed")


def test_directml_installed_but_no_device(simulate):
    simulate("directml", count=0)
    assert DirectMLBackend().why_unavailable() == "torch-directml found no DirectX 12 GPU"


def test_directml_driver_error(monkeypatch):
    real_import = importlib.import_module

    def failing_import(name, *args, **kwargs):
        if name == "torch_directml":
            raise OSError("[WinError 126] The specified module could not be found (DirectML.dll)")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torch_directml", raising=False)
    monkeypatch.setattr(importlib, "import_module", failing_import)
    reason = DirectMLBackend().why_unavailable()
    assert reason.startswith("torch-directml failed to load: [WinError 126]")


def test_directml_simulated(simulate):
    simulate("directml", count=2)
    backend = resolve("dml:1")
    assert isinstance(backend, DirectMLBackend)
    assert backend.device == torch.device("privateuseone", 1)
    assert backend.device_names() == ["AMD Radeon RX 6600"] * 2
    assert backend.memory() == (None, None)
    assert backend.supports(torch.float16)
    assert not backend.supports(torch.bfloat16) and not backend.supports_complex
    assert not backend.supports(torch.complex64) and not backend.supports_float64
    assert isinstance(backend.autocast(torch.float16), contextlib.nullcontext)
    q = backend.quirks
    assert q.needs_real_stft
    for op in (torch.ops.aten.multinomial.default, "aten.cumprod.default", "aten::eye", "repeat_interleave"):
        assert q.must_run_on_cpu(op), op
    assert not q.must_run_on_cpu(torch.ops.aten.mm.default)


def test_cuda_not_built_no_device_and_driver_error(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    assert "no CUDA or ROCm support" in CUDABackend().why_unavailable()
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert CUDABackend().why_unavailable().startswith("no CUDA GPU found")

    def broken():
        raise RuntimeError("Found no NVIDIA driver on your system.")

    monkeypatch.setattr(torch.cuda, "device_count", broken)
    assert CUDABackend().why_unavailable() == "CUDA driver error: Found no NVIDIA driver on your system."


def test_cuda_simulated_dtypes(simulate):
    simulate("gtx-1650")
    gtx = resolve("cuda")
    assert gtx.supports(torch.float16) and not gtx.supports(torch.bfloat16)
    assert gtx.supports_float64 and gtx.supports_complex and gtx.graphs
    assert gtx.memory() == (4_100_521_984, 3_700_000_000)
    assert gtx.device_name() == "NVIDIA GeForce GTX 1650"
    simulate("h100")
    assert resolve("cuda").supports(torch.bfloat16)


def test_describe_is_json_ready_for_every_backend(simulate):
    import json

    simulate("arc-a770")
    rows = [b.describe() for b in list_backends()]
    json.dumps(rows)
    by_name = {r["name"]: r for r in rows}
    assert by_name["xpu"]["available"] and by_name["xpu"]["dtypes"] == ["float32", "float16", "bfloat16",
                                                                          "complex64"]
    assert by_name["cuda"]["available"] is False and by_name["cuda"]["reason"]


# ----------------------------------------------------------------------------- Backend API on real devices
def test_backend_roundtrip(backend):
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    y = backend.to_device(x)
    assert y.device.type == backend.device.type
    backend.synchronize()
    assert torch.equal(y.cpu(), x)
    module = backend.to_device(torch.nn.Linear(3, 2))
    assert next(module.parameters()).device.type == backend.device.type


def test_backend_seed_reproduces_random_draws(backend):
    backend.manual_seed(1234)
    a = torch.randn(4, device=backend.device).cpu()
    backend.manual_seed(1234)
    b = torch.randn(4, device=backend.device).cpu()
    assert torch.equal(a, b)


def test_backend_autocast(backend):
    x = backend.to_device(torch.randn(4, 4))
    with backend.autocast(torch.float32):
        assert (x @ x).dtype == torch.float32
    for dtype in (torch.bfloat16, torch.float16):
        if not backend.supports(dtype):
            continue
        with backend.autocast(dtype):
            out = x @ x
        # Either autocast ran the matmul in the low dtype, or it is unsupported here and a no-op.
        assert out.dtype in (dtype, torch.float32)


def test_backend_memory_and_housekeeping(backend):
    total, free = backend.memory()
    assert total is None or total > 0
    assert free is None or (free >= 0 and (total is None or free <= total))
    backend.reset_peak_memory()
    peak = backend.peak_memory()
    assert peak is None or peak >= 0
    backend.empty_cache()
    caps = backend.capabilities()
    assert caps.supports(torch.float32)
    assert isinstance(backend.quirks, Quirks)
    assert backend.device_name()


def test_cpu_autocast_runs_matmul_in_bfloat16():
    cpu = CPUBackend()
    x = torch.randn(4, 4)
    with cpu.autocast(torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16


def test_cpu_memory_is_real():
    total, free = CPUBackend().memory()
    assert total and total > 2**28
    assert free is None or 0 < free <= total


def test_normalize_op_name():
    assert normalize_op_name(torch.ops.aten.multinomial.default) == "aten::multinomial"
    assert normalize_op_name("aten.repeat_interleave.Tensor") == "aten::repeat_interleave"
    assert normalize_op_name("aten::eye") == "aten::eye"
    assert normalize_op_name("cumprod") == "aten::cumprod"


def test_quirks_and_capabilities_are_frozen():
    q = Quirks()
    with pytest.raises(Exception):
        q.needs_real_stft = True  # type: ignore[misc]
    hash(CPUBackend().capabilities())


# ----------------------------------------------------------------------------- the boundary rule
def test_no_device_type_literals_outside_backends():
    pattern = re.compile(r'"(cuda|xpu|mps|privateuseone)"')
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "backends" in path.relative_to(PACKAGE).parts[:1]:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "device-type strings outside tortoise_xpu/backends/:\n" + "\n".join(offenders)
