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
    """The bits of a Backend that ``TextToSpeech._on_device`` and ``ModelShuttle`` use, on ``meta``."""

    device = torch.device("meta")
    quirks = Quirks(non_blocking_copies=False)
    name = "meta"

    def side_stream(self):
        return None

    def to_device(self, obj, non_blocking=None):
        return obj.to(self.device)

    def empty_cache(self):
        pass


def _with_policy(tts, candidates: int, **changes):
    tts._policies[candidates] = dataclasses.replace(tts.policy(candidates), **changes)


@pytest.fixture
def tts(tiny_models_dir):
    from tortoise_xpu import TextToSpeech

    return TextToSpeech(models_dir=tiny_models_dir, device="cpu", auto_download=False)


def test_resident_stage_after_a_per_stage_run_gets_the_model_on_the_device(tts):
    # The policy is per candidate count: a per-stage run (e.g. 16 candidates on a small GPU) leaves
    # each model pointing at its host copies; a later resident run (e.g. a 1-candidate stream) must
    # not hand that host model to device inputs.
    _with_policy(tts, 16, resident=False)
    _with_policy(tts, 1, resident=True)
    tts.backend, tts.device = _MetaBackend(), torch.device("meta")
    tts._models["rlg_auto"] = torch.nn.Linear(4, 4)

    tts._candidates = 16
    with tts._on_device("rlg_auto") as m:
        assert next(m.parameters()).device.type == "meta"
    assert next(tts._models["rlg_auto"].parameters()).device.type == "cpu"  # back on the host

    tts._candidates = 1
    with tts._on_device("rlg_auto") as m:
        assert next(m.parameters()).device.type == "meta"


def test_kv_cache_dtype_follows_the_model_weights(tts):
    # A model whose weights are bfloat16 under a float32 policy: the cache must be bfloat16 too,
    # or scaled_dot_product_attention sees bfloat16 queries against float32 keys.
    ar = tts.model("autoregressive").to(torch.bfloat16)
    assert tts.policy(2).ar_dtype == torch.float32
    cond = torch.randn(1, ar.config.model_dim, generator=torch.Generator().manual_seed(0))
    codes = tts.sample_codes(cond, tts.text_tokens("dtype test"), 2, SamplingSettings(), 6,
                             torch.Generator().manual_seed(1))
    assert codes.shape == (2, 6) and codes.dtype == torch.long
    tts._models.pop("autoregressive")


def test_per_stage_decode_state_is_dropped_before_the_cache_is_emptied(tts, monkeypatch):
    # In per-stage mode the KV cache and graphs must be released while the AR model is still in
    # its stage, so the backend's empty_cache() at the end of the stage can return their memory.
    monkeypatch.setenv("TORTOISE_XPU_DECODE", "static")  # the mode that keeps buffers (graphs' base)
    _with_policy(tts, 2, resident=False)
    tts._candidates = 2
    seen: list[bool] = []

    def empty_cache():
        engine = tts._decode_engine
        seen.append(engine is None or engine._state is None)

    monkeypatch.setattr(tts.backend, "empty_cache", empty_cache)
    cond = torch.randn(1, tts.model("autoregressive").config.model_dim, generator=torch.Generator().manual_seed(0))
    tts.sample_codes(cond, tts.text_tokens("release test"), 2, SamplingSettings(), 5,
                     torch.Generator().manual_seed(2))
    assert tts._decode_engine.mode == "static"
    assert seen and all(seen)
