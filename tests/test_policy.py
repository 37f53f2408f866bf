"""Policy decisions for the ten simulated devices, each override, the invariants, and the published tiers."""

from __future__ import annotations

import argparse

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.simdevices import (SIM_BY_KEY, SIM_DEVICES, oneapi_tier, original_tier, render_tables, sim_policy,
                              spliced, tier_policy, DOC)
from tortoise_xpu.backends import Capabilities, resolve
from tortoise_xpu.backends.base import Quirks
from tortoise_xpu.backends.policy import (GiB, MAX_AR_BATCH, OFFICIAL_MODEL_BYTES, Overrides, Policy,
                                          UNKNOWN_FREE_BYTES, make_policy, overrides_from_args, parse_dtype,
                                          per_sample_bytes, policy_for)
from tortoise_xpu.errors import UserError

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# key: (AR/CLVP/diffusion dtype, vocoder dtype, batch at 16 candidates, batch at 96, resident, graphs, complex STFT)
EXPECTED = {
    "arc-a770": (BF16, F32, 16, 32, True, True, True),
    "arc-a750": (BF16, F32, 16, 16, True, True, True),
    "arc-a380": (BF16, F32, 16, 16, False, True, True),
    "meteor-lake": (BF16, F32, 16, 16, True, True, True),
    "rtx-3090": (BF16, F32, 16, 32, True, True, True),
    "gtx-1650": (F16, F32, 8, 8, False, True, True),
    "h100": (BF16, F32, 16, 32, True, True, True),
    "apple-m2": (BF16, F32, 16, 16, True, False, False),
    "directml": (F16, F32, 4, 4, False, False, False),
    "cpu": (F32, F32, 16, 16, True, False, True),
}


def test_every_simulated_device_has_an_expectation():
    assert set(EXPECTED) == set(SIM_BY_KEY) and len(SIM_DEVICES) == 10


@pytest.mark.parametrize("key", list(EXPECTED))
def test_simulated_device_policy(key):
    half, vocoder, batch16, batch96, resident, graphs, complex_stft = EXPECTED[key]
    dev = SIM_BY_KEY[key]
    p16 = sim_policy(dev, candidates=16)
    p96 = sim_policy(dev, candidates=96)
    for p in (p16, p96):
        assert (p.ar_dtype, p.clvp_dtype, p.diffusion_dtype, p.vocoder_dtype) == (half, half, half, vocoder)
        assert p.resident is resident
        assert p.decode_mode == ("graph" if graphs else "eager")
        assert p.graph_capture is graphs
        assert p.use_complex_stft is complex_stft
    assert (p16.ar_batch_size, p96.ar_batch_size) == (batch16, batch96)
    assert 16 % p16.ar_batch_size == 0 and 96 % p96.ar_batch_size == 0


def test_directml_budget_is_the_documented_guess():
    p = sim_policy(SIM_BY_KEY["directml"])
    assert p.budget_bytes < UNKNOWN_FREE_BYTES
    assert any("assumed" in note for note in p.notes)


def test_igpu_budget_comes_from_shared_memory_not_mem_get_info():
    p = sim_policy(SIM_BY_KEY["meteor-lake"])
    assert any("shared memory" in note for note in p.notes)
    assert 0 < p.budget_bytes < 16 * GiB


# ----------------------------------------------------------------------------- overrides
def test_dtype_override_applies_to_every_stage():
    p = sim_policy(SIM_BY_KEY["gtx-1650"], dtype="float16")
    assert {p.dtype(s) for s in ("ar", "clvp", "diffusion", "vocoder")} == {F16}
    p = sim_policy(SIM_BY_KEY["h100"], dtype=torch.float32)
    assert p.ar_dtype == p.vocoder_dtype == F32
    assert p.ar_batch_size == 16  # fp32 halves the room, 80 GB still fits 16


def test_unsupported_dtype_override_is_a_user_error():
    with pytest.raises(UserError, match="cuda does not support bfloat16; supported: float32, float16"):
        sim_policy(SIM_BY_KEY["gtx-1650"], dtype="bf16")
    with pytest.raises(UserError, match="directml does not support bfloat16"):
        sim_policy(SIM_BY_KEY["directml"], dtype=torch.bfloat16)
    with pytest.raises(UserError, match="unsupported dtype"):
        sim_policy(SIM_BY_KEY["cpu"], dtype="float64")


@pytest.mark.parametrize("asked, candidates, expected", [(6, 16, 4), (8, 16, 8), (100, 16, 16), (1, 16, 1),
                                                          (48, 96, 48), (7, 96, 6), (3, 3, 3)])
def test_batch_size_override_is_rounded_down_to_a_divisor(asked, candidates, expected):
    # Even on a device too small for it: the user's choice wins (the OOM back-off is the net).
    p = sim_policy(SIM_BY_KEY["gtx-1650"], candidates=candidates, batch_size=asked)
    assert p.ar_batch_size == expected


def test_batch_size_below_one_is_a_user_error():
    with pytest.raises(UserError, match="at least 1"):
        sim_policy(SIM_BY_KEY["cpu"], batch_size=0)


def test_low_vram_override():
    default = sim_policy(SIM_BY_KEY["rtx-3090"])
    low = sim_policy(SIM_BY_KEY["rtx-3090"], low_vram=True)
    assert default.resident and not low.resident and low.low_vram
    assert low.ar_batch_size == default.ar_batch_size == 16
    # Where the resident models cost batch room, low-vram gives it back (compare --high-vram).
    gtx_high = sim_policy(SIM_BY_KEY["gtx-1650"], high_vram=True)
    gtx_low = sim_policy(SIM_BY_KEY["gtx-1650"], low_vram=True)
    # 4 GB in fp16: all four models resident (diffusion ~0.94 GB: 61 % of it stays float32 under the
    # autocast scheme) leave room for 3 candidates -> 2; per stage, only the AR model's 0.84 GB.
    assert (gtx_high.ar_batch_size, gtx_low.ar_batch_size) == (2, 8)


def test_diffusion_bytes_count_the_float32_part_of_the_autocast_scheme():
    from tortoise_xpu.backends.policy import DIFFUSION_HALF_FRACTION
    from tortoise_xpu.models.diffusion_decoder import DiffusionTts

    with torch.device("meta"):
        model = DiffusionTts().use_layer_autocast(torch.bfloat16)
    half = sum(p.numel() for p in model.parameters() if p.dtype == torch.bfloat16)
    assert half / sum(p.numel() for p in model.parameters()) == pytest.approx(DIFFUSION_HALF_FRACTION, abs=1e-9)


def test_high_vram_override():
    default = sim_policy(SIM_BY_KEY["arc-a380"])
    high = sim_policy(SIM_BY_KEY["arc-a380"], high_vram=True)
    assert not default.resident and high.resident
    assert high.ar_batch_size == 8 < default.ar_batch_size  # the resident models take batch room


def test_low_and_high_vram_together_is_a_user_error():
    with pytest.raises(UserError, match="cannot be used together"):
        sim_policy(SIM_BY_KEY["cpu"], low_vram=True, high_vram=True)


def test_graph_capture_and_decode_overrides(monkeypatch):
    assert sim_policy(SIM_BY_KEY["h100"], graph_capture=False).graph_capture is False
    assert sim_policy(SIM_BY_KEY["h100"], graph_capture=False).decode_mode == "eager"
    # A forced graph mode where the backend has no graphs runs the same static steps.
    assert sim_policy(SIM_BY_KEY["cpu"], decode_mode="graph").decode_mode == "static"
    # Asking for graphs where the backend has none does not switch them on.
    assert sim_policy(SIM_BY_KEY["apple-m2"], graph_capture=True).graph_capture is False
    # The environment switches are read where a live Policy is made, and overrides win over them.
    monkeypatch.setenv("TORTOISE_XPU_DECODE", "static")
    monkeypatch.setenv("TORTOISE_XPU_DECODE_BUCKET", "32")
    monkeypatch.setenv("TORTOISE_XPU_COMPILE", "1")
    p = policy_for(resolve("cpu"), candidates=4)
    assert (p.decode_mode, p.decode_bucket, p.compile) == ("static", 32, "inductor")
    assert policy_for(resolve("cpu"), candidates=4, decode_mode="eager", compile=False).decode_mode == "eager"
    monkeypatch.setenv("TORTOISE_XPU_DECODE", "warp")
    with pytest.raises(UserError, match="decode mode"):
        policy_for(resolve("cpu"), candidates=4)


def test_weight_first_ar_linears_only_where_the_backend_says_and_in_float32():
    cpu = sim_policy(SIM_BY_KEY["cpu"])
    assert cpu.ar_weight_first and cpu.to_dict()["ar_weight_first"] is True
    assert not sim_policy(SIM_BY_KEY["cpu"], dtype="bfloat16").ar_weight_first  # measured for sgemm only
    assert not any(sim_policy(SIM_BY_KEY[k]).ar_weight_first for k in SIM_BY_KEY if k != "cpu")
    real = policy_for(resolve("cpu"), candidates=16)  # this machine's CPU: weight-first where its AR is float32
    assert real.ar_weight_first == (real.ar_dtype == F32 and not real.ar_int8 and not real.packed_weights)


def test_overrides_from_cli_args():
    args = argparse.Namespace(device="auto", dtype="bfloat16", batch_size=4, low_vram=True, high_vram=False)
    assert overrides_from_args(args) == Overrides(dtype="bfloat16", batch_size=4, low_vram=True, high_vram=False)
    assert overrides_from_args(argparse.Namespace()) == Overrides()


def test_parse_dtype_spellings():
    assert parse_dtype("bf16") is BF16 and parse_dtype("half") is F16 and parse_dtype("torch.float32") is F32
    assert parse_dtype(BF16) is BF16


# ----------------------------------------------------------------------------- purity and invariants
def test_make_policy_is_pure_and_policy_is_frozen():
    caps = Capabilities(backend="cuda", float16=True, bfloat16=True, graphs=True)
    a = make_policy(caps, 10 * GiB, 12 * GiB, dict(OFFICIAL_MODEL_BYTES), 96, {"dtype": "float16"})
    b = make_policy(caps, 10 * GiB, 12 * GiB, dict(OFFICIAL_MODEL_BYTES), 96, Overrides(dtype=F16))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(Exception):
        a.ar_batch_size = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        make_policy(caps, 10 * GiB, 12 * GiB, overrides={"bogus": 1})


def test_candidates_below_one_is_a_user_error():
    with pytest.raises(UserError):
        make_policy(Capabilities(backend="cpu", is_cpu=True), GiB, GiB, candidates=0)


def test_smaller_models_leave_more_room():
    caps = Capabilities(backend="cuda", float16=True, bfloat16=True)
    full = make_policy(caps, 3 * GiB, 4 * GiB, candidates=256)
    tiny = make_policy(caps, 3 * GiB, 4 * GiB, {"ar": 10_000_000, "clvp": 1, "diffusion": 1, "vocoder": 1},
                       candidates=256)
    assert tiny.ar_batch_size > full.ar_batch_size


def test_per_sample_bytes_is_the_kv_cache_plus_a_margin():
    kv_fp32 = 2 * 30 * 1008 * 1024 * 4
    assert kv_fp32 < per_sample_bytes(F32) < 2 * kv_fp32
    assert per_sample_bytes(BF16) * 2 == per_sample_bytes(F32)


def test_policy_for_the_real_cpu():
    from tortoise_xpu.backends.cpu import cpu_features

    p = policy_for(resolve("cpu"), candidates=16)
    assert isinstance(p, Policy)
    assert p.resident and 16 % p.ar_batch_size == 0 and p.vocoder_dtype == F32
    # half precision only where this CPU has bfloat16 instructions; a reason for every stage
    if not cpu_features().bf16:
        assert {p.ar_dtype, p.clvp_dtype, p.diffusion_dtype} == {F32}
    assert set(p.to_dict()["precision_reasons"]) == {"ar", "clvp", "diffusion", "vocoder"}


caps_strategy = st.builds(
    Capabilities, backend=st.just("sim"), float16=st.booleans(), bfloat16=st.booleans(), float64=st.booleans(),
    complex=st.booleans(), graphs=st.booleans(), unified_memory=st.booleans(), is_cpu=st.booleans(),
    quirks=st.builds(Quirks, needs_real_stft=st.booleans()))
memory = st.one_of(st.none(), st.integers(min_value=0, max_value=200 * GiB))


@settings(max_examples=100, deadline=None)
@given(caps=caps_strategy, free=memory, total=memory, candidates=st.integers(1, 512),
       low=st.booleans(), high=st.booleans())
def test_batch_is_a_positive_power_of_two_divisor(caps, free, total, candidates, low, high):
    p = make_policy(caps, free, total, candidates=candidates, overrides=Overrides(low_vram=low and not high,
                                                                                    high_vram=high))
    b = p.ar_batch_size
    assert 1 <= b <= min(candidates, MAX_AR_BATCH)
    assert candidates % b == 0 and b & (b - 1) == 0
    assert p.use_complex_stft == (caps.complex and not caps.quirks.needs_real_stft)
    assert not p.graph_capture or caps.graphs
    for stage in ("ar", "clvp", "diffusion", "vocoder"):
        assert caps.supports(p.dtype(stage))


@settings(max_examples=100, deadline=None)
@given(free=st.integers(0, 100 * GiB), extra=st.integers(0, 20 * GiB), candidates=st.sampled_from([16, 96, 256]))
def test_more_free_memory_never_means_a_smaller_batch(free, extra, candidates):
    caps = Capabilities(backend="cuda", float16=True, bfloat16=True)
    total = 120 * GiB
    small = make_policy(caps, free, total, candidates=candidates, overrides=Overrides(low_vram=True))
    large = make_policy(caps, free + extra, total, candidates=candidates, overrides=Overrides(low_vram=True))
    assert large.ar_batch_size >= small.ar_batch_size


# ----------------------------------------------------------------------------- published tiers
def test_original_tiers_comparison():
    """float32, one model at a time (the original's arrangement), 16 candidates, 4-24 GiB free.

    The same batch at 14 GiB and above; below that never smaller, and at most two
    power-of-two steps larger where the original's tiers apply (its cache grew by
    concatenation, ours is preallocated); below 7 GiB the original drops to 1.
    """
    for quarter in range(16, 97):
        free = quarter * GiB // 4
        ours, theirs = tier_policy(free).ar_batch_size, original_tier(free)
        assert ours >= theirs, (free / GiB, ours, theirs)
        if theirs == 16:
            assert ours == 16, (free / GiB, ours)
        if theirs >= 4:
            assert ours <= 4 * theirs, (free / GiB, ours, theirs)


def test_oneapi_tiers_comparison():
    """The oneAPI fork's Arc cards, in float32 one model at a time: never a smaller batch than it chose."""
    for key in ("arc-a770", "arc-a750", "arc-a380"):
        dev = SIM_BY_KEY[key]
        ours = sim_policy(dev, candidates=16, dtype="float32", low_vram=True).ar_batch_size
        assert oneapi_tier(dev.total) <= ours <= 16, (key, ours)
    # At its native bf16 the A770 runs the batch of 16 the fork found just out of reach in float32.
    assert sim_policy(SIM_BY_KEY["arc-a770"]).ar_batch_size == 16


# ----------------------------------------------------------------------------- docs
def test_docs_policy_table_is_current():
    doc = DOC.read_text(encoding="utf-8")
    assert spliced(doc, render_tables()) == doc, "docs/backends.md is stale: run python -m tests.simdevices"


def test_ar_shape_is_derived_from_the_models_config():
    from tortoise_xpu.backends.policy import ARShape, official_ar_shape, per_sample_bytes
    from tortoise_xpu.models.autoregressive import ARConfig

    assert official_ar_shape() == ARShape(layers=30, dim=1024, heads=16, positions=402 + 604 + 2, vocab=8194)
    tiny = ARShape.of(ARConfig.tiny())
    assert tiny.layers == ARConfig.tiny().layers and tiny.dim == ARConfig.tiny().model_dim
    assert per_sample_bytes(torch.float16, tiny) < per_sample_bytes(torch.float16)
