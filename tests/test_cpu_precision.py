"""The CPU precision policy (backends/policy.py ``cpu_precision``) on simulated CPUs.

Each simulated CPU is a ``CPUFeatures``: its instruction-set flags and, as the CPU backend would
measure them, kernel speed-ups against float32.  The real probe (``backends.cpu.cpu_features``) is
exercised once on this machine's CPU, whatever it is.
"""

from __future__ import annotations

import pytest
import torch

from tortoise_xpu.backends import resolve
from tortoise_xpu.backends import cpu as cpu_backend
from tortoise_xpu.backends.base import Capabilities, CPUFeatures
from tortoise_xpu.backends.policy import GiB, Overrides, make_policy, overrides_from_args, parse_ar_int8, policy_for
from tortoise_xpu.errors import UserError

F32, BF16 = torch.float32, torch.bfloat16

ZEN1 = CPUFeatures(flags=frozenset({"avx2"}), int8_kernel=True,
                   # even if a (noisy) measurement said so, no bf16 / int8-dot instructions means no switch
                   speedups=(("bf16/diffusion", 1.5), ("int8/ar_b1", 3.0)))
ZEN4 = CPUFeatures(flags=frozenset({"avx2", "avx512_f", "avx512_bf16", "avx512_vnni"}), int8_kernel=True,
                   speedups=(("bf16/ar_b1", 1.0), ("int8/ar_b1", 2.1), ("bf16/ar_b16", 1.1), ("int8/ar_b16", 1.7),
                             ("bf16/diffusion", 2.0), ("bf16/clvp", 2.6)))
ZEN4_SLOW_BF16 = CPUFeatures(flags=ZEN4.flags, int8_kernel=True,
                             speedups=(("bf16/ar_b1", 0.5), ("int8/ar_b1", 1.1), ("bf16/ar_b16", 0.9),
                                       ("int8/ar_b16", 1.05), ("bf16/diffusion", 0.9), ("bf16/clvp", 1.3)))
SAPPHIRE_RAPIDS = CPUFeatures(flags=frozenset({"avx2", "avx512_f", "avx512_bf16", "avx512_vnni", "amx_tile",
                                               "amx_bf16", "amx_int8"}), int8_kernel=True)  # not measured
VNNI_ONLY = CPUFeatures(flags=frozenset({"avx2", "avx_vnni"}), int8_kernel=True,
                        speedups=(("int8/ar_b1", 1.8), ("int8/ar_b16", 1.3)))


def cpu_policy(features: CPUFeatures | None, candidates: int = 16, **overrides) -> object:
    caps = Capabilities(backend="cpu", float16=True, bfloat16=True, is_cpu=True, unified_memory=True,
                        weight_first_gemm=True, cpu=features)
    return make_policy(caps, 12 * GiB, 16 * GiB, candidates=candidates, overrides=Overrides(**overrides))


def dtypes(p) -> tuple:
    return p.ar_dtype, p.clvp_dtype, p.diffusion_dtype, p.vocoder_dtype


def test_avx2_only_cpu_stays_float32():
    for n in (1, 16):
        p = cpu_policy(ZEN1, n)
        assert dtypes(p) == (F32, F32, F32, F32) and not p.ar_int8 and p.ar_weight_first
        reasons = dict(p.precision_reasons)
        assert "no bfloat16 instructions" in reasons["diffusion"] and "no int8 dot-product" in reasons["ar"]


def test_zen4_measured_bf16_for_clvp_and_diffusion_int8_for_the_ar():
    for n in (1, 16):
        p = cpu_policy(ZEN4, n)
        assert dtypes(p) == (F32, BF16, BF16, F32) and p.ar_int8 and not p.ar_weight_first
    reasons = dict(cpu_policy(ZEN4, 1).precision_reasons)
    assert "ar_b1" in reasons["ar"] and "2.10x" in reasons["ar"] and "2.00x" in reasons["diffusion"]
    assert "ar_b16" in dict(cpu_policy(ZEN4, 16).precision_reasons)["ar"]
    assert cpu_policy(ZEN4, 16).to_dict()["ar_int8"] is True
    assert "AR int8" in cpu_policy(ZEN4, 16).summary()


def test_bf16_or_int8_not_measured_faster_is_not_chosen():
    p = cpu_policy(ZEN4_SLOW_BF16, 16)
    assert dtypes(p) == (F32, BF16, F32, F32) and not p.ar_int8  # 1.3x for CLVP passes, 0.9x and 1.05x do not
    assert cpu_policy(ZEN4_SLOW_BF16, 1).ar_int8 is False  # 1.1x < the 1.2x margin


def test_unmeasured_cpu_stays_float32_whatever_its_flags():
    p = cpu_policy(SAPPHIRE_RAPIDS, 16)
    assert dtypes(p) == (F32, F32, F32, F32) and not p.ar_int8
    assert "not measured" in dict(p.precision_reasons)["ar"]


def test_int8_without_bf16():
    p = cpu_policy(VNNI_ONLY, 1)
    assert dtypes(p) == (F32, F32, F32, F32) and p.ar_int8


def test_overrides_force_int8_either_way_and_dtype_wins_for_floats():
    assert not cpu_policy(ZEN4, 1, ar_int8=False).ar_int8
    assert cpu_policy(ZEN1, 1, ar_int8=True).ar_int8  # forced on an AVX2 CPU: allowed, just not the default
    p = cpu_policy(ZEN4, 16, dtype="float32")
    assert dtypes(p) == (F32, F32, F32, F32) and p.ar_int8  # --dtype sets the floats; int8 is its own switch
    assert dtypes(cpu_policy(ZEN1, 16, dtype="bfloat16")) == (BF16,) * 4
    no_kernel = CPUFeatures(flags=ZEN4.flags, speedups=ZEN4.speedups, int8_kernel=False)
    assert not cpu_policy(no_kernel, 1).ar_int8
    with pytest.raises(UserError, match="int8"):
        cpu_policy(no_kernel, 1, ar_int8=True)
    gpu = Capabilities(backend="cuda", float16=True, bfloat16=True)
    with pytest.raises(UserError, match="CPU only"):
        make_policy(gpu, 20 * GiB, 24 * GiB, overrides=Overrides(ar_int8=True))
    assert not make_policy(gpu, 20 * GiB, 24 * GiB).ar_int8


def test_unknown_cpu_features_mean_float32():
    p = cpu_policy(None, 16)
    assert dtypes(p) == (F32, F32, F32, F32) and not p.ar_int8


def test_cli_flag_values():
    import argparse

    assert [parse_ar_int8(v) for v in ("auto", "on", "off", None, True)] == [None, True, False, None, True]
    with pytest.raises(UserError):
        parse_ar_int8("sometimes")
    assert overrides_from_args(argparse.Namespace(ar_int8="off")).ar_int8 is False


def test_the_cpu_backend_hands_its_features_to_the_policy(monkeypatch):
    monkeypatch.setattr(cpu_backend, "cpu_features", lambda: ZEN4)
    backend = resolve("cpu")
    assert backend.capabilities().cpu is ZEN4
    p = policy_for(backend, candidates=1)
    assert p.ar_int8 and p.diffusion_dtype == BF16
    assert backend.describe()["cpu_features"]["flags"] == sorted(ZEN4.flags)


def test_real_probe_reads_flags_and_measures_only_what_the_flags_allow(monkeypatch):
    flags, source = cpu_backend.cpu_flags()
    assert source and all(isinstance(f, str) for f in flags)
    monkeypatch.setenv(cpu_backend.PROBE_ENV, "0")
    quick = cpu_backend.cpu_features()
    assert quick.flags == flags and quick.speedups == ()
    assert cpu_backend.measure_kernels(False, False) == ()
    # int8 only: the AR kernels at both batch sizes, nothing in bfloat16
    keys = [k for k, _ in cpu_backend.measure_kernels(False, True)] if quick.int8_kernel else []
    assert keys in ([], ["int8/ar_b1", "int8/ar_b16"])


def test_tts_applies_int8_weights_where_the_policy_says(tiny_models_dir):
    from tortoise_xpu import TextToSpeech
    from tortoise_xpu.models.quant import Int8Linear

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu", ar_int8=True)
    assert tts.policy(4).ar_int8
    ar = tts.model("autoregressive")
    assert isinstance(ar.mel_head, Int8Linear)
    wav = tts.tts("Hello.", seed=1, num_autoregressive_samples=4, diffusion_iterations=2, force_tokens=6)
    assert wav.shape[0] == 1 and torch.isfinite(wav).all()
    off = TextToSpeech(models_dir=tiny_models_dir, device="cpu", ar_int8=False)
    assert not isinstance(off.model("autoregressive").mel_head, Int8Linear)


def test_int8_on_one_thread_where_that_measured_faster():
    busy = CPUFeatures(flags=ZEN4.flags, int8_kernel=True,
                       speedups=(("int8/ar_b1", 0.3), ("int8_1t/ar_b1", 1.7), ("int8/ar_b16", 1.3),
                                 ("int8_1t/ar_b16", 1.1)))
    p1, p16 = cpu_policy(busy, 1), cpu_policy(busy, 16)
    assert p1.ar_int8 and p1.ar_int8_one_thread  # 0.3x on all threads, 1.7x on one: int8, on one thread
    assert p16.ar_int8 and not p16.ar_int8_one_thread
    assert not cpu_policy(ZEN4, 1).ar_int8_one_thread  # not measured on one thread: all threads


def test_one_thread_int8_layer_gives_the_same_numbers_and_restores_the_thread_count():
    from tortoise_xpu.models.quant import Int8Linear

    g = torch.Generator().manual_seed(3)
    layer = Int8Linear.from_weight(torch.randn(64, 32, generator=g), None)
    x = torch.randn(2, 32, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = layer(x)
        layer.one_thread = True
        b = layer(x)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
