"""Device-placement and dtype mistakes that the CPU hides, caught on the CPU.

On the CPU every tensor is on the one device and float32 is the default, so a model left on
the host or a cache in the wrong dtype works here and fails on a GPU.  These tests make the
difference visible: a stand-in backend whose "device" is ``meta`` (any host tensor reaching
it is then on the wrong device), or a model cast to bfloat16 under a float32 policy.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tortoise_xpu.backends.base import Quirks
from tortoise_xpu.pipeline.sampling import SamplingSettings


class _MetaBackend:
    """The bits of a Backend that ``ModelStore.on_device`` and ``ModelShuttle`` use, on ``meta``."""

    device = torch.device("meta")
    quirks = Quirks(non_blocking_copies=False)
    name = "meta"

    def side_stream(self):
        return None

    def to_device(self, obj, non_blocking=None):
        return obj.to(self.device)

    def empty_cache(self):
        pass


@pytest.fixture
def tts(tiny_models_dir):
    from tortoise_xpu import TextToSpeech

    return TextToSpeech(models_dir=tiny_models_dir, device="cpu", auto_download=False)


def test_model_place_is_the_stores_decision(tts, tiny_models_dir):
    # Residency belongs to the store, not to a run's Policy: a per-stage store hands the model on the
    # device for the stage and keeps it on the host otherwise, a resident store keeps it on the device,
    # whatever the run's candidate count (no run finds a model left elsewhere by an earlier one).
    from tortoise_xpu.pipeline.context import RunContext
    from tortoise_xpu.pipeline.store import ModelStore

    for candidates in (16, 1, 16):
        per_stage = ModelStore(_MetaBackend(), tiny_models_dir, resident=False)
        per_stage.put("rlg_auto", torch.nn.Linear(4, 4))
        ctx = RunContext(policy=tts.policy(candidates), generator=torch.Generator())
        with per_stage.on_device("rlg_auto", ctx) as m:
            assert next(m.parameters()).device.type == "meta"
        assert next(per_stage.model("rlg_auto", ctx.policy).parameters()).device.type == "cpu"  # back on the host
    resident = ModelStore(_MetaBackend(), tiny_models_dir, resident=True)
    resident.put("rlg_auto", torch.nn.Linear(4, 4))
    for candidates in (16, 1):
        with resident.on_device("rlg_auto", RunContext(policy=tts.policy(candidates), generator=torch.Generator())) as m:
            assert next(m.parameters()).device.type == "meta"


def test_kv_cache_dtype_follows_the_model_weights(tiny_models_dir, monkeypatch):
    # A model whose weights are bfloat16 under a float32 policy: the cache must be bfloat16 too,
    # or scaled_dot_product_attention sees bfloat16 queries against float32 keys.  (Unpacked: a
    # packed model keeps its layers' dtype through Module.to, tests/test_packed.py.)
    from tortoise_xpu import TextToSpeech

    monkeypatch.setenv("TORTOISE_XPU_PACKED", "0")
    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu", auto_download=False)
    ar = tts.model("autoregressive").to(torch.bfloat16)
    assert tts.policy(2).ar_dtype == torch.float32
    cond = torch.randn(1, ar.config.model_dim, generator=torch.Generator().manual_seed(0))
    codes = tts.sample_codes(cond, tts.text_tokens("dtype test"), 2, SamplingSettings(), 6,
                             torch.Generator().manual_seed(1))
    assert codes.shape == (2, 6) and codes.dtype == torch.long
    tts.store.unload("autoregressive")


def test_per_stage_decode_state_is_dropped_before_the_cache_is_emptied(tiny_models_dir, monkeypatch):
    # In per-stage mode the KV cache and graphs must be released while the AR model is still in
    # its stage, so the backend's empty_cache() at the end of the stage can return their memory.
    from tortoise_xpu import TextToSpeech
    from tortoise_xpu.pipeline import ar_sampling
    from tortoise_xpu.pipeline.decode import DecodeEngine

    # static: the mode that keeps buffers (graphs' base)
    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu", low_vram=True, decode_mode="static")
    assert not tts.store.resident and not tts.policy(2).resident
    events: list[str] = []
    real_release = DecodeEngine.release

    def release(self):
        events.append("release" if self.busy is False else "release-while-busy")
        real_release(self)

    monkeypatch.setattr(DecodeEngine, "release", release)
    monkeypatch.setattr(tts.backend, "empty_cache", lambda: events.append("empty_cache"))
    cond = torch.randn(1, tts.model("autoregressive").config.model_dim, generator=torch.Generator().manual_seed(0))
    ctx = tts.new_context(2, torch.Generator().manual_seed(2))
    ar_sampling.sample_codes(tts.store, ctx, cond, tts.text_tokens("release test"), 2, SamplingSettings(), 5)
    assert ctx.report.decode_mode == "static"
    assert events == ["release", "empty_cache"]
