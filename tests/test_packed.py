"""Weights prepacked for oneDNN (models/packed.py): the layers, the model transforms, the Policy's
choice, and the error of the CPU's packed preparations against float32 (parity tolerances).

The CPU's packed preparations are what ``tts()`` runs on a CPU: the AR's GPT-2 linears and mel head
packed (bfloat16 where the probe chose it), the diffusion decoder's every per-step layer in
bfloat16 under autocast, packed, on channels-last features.  Their error is measured the parity
suite's way (``tests/parity``: max error scaled by the reference's range, top-k overlap of logits)
against the unpacked float32 model.
"""

from __future__ import annotations

import copy
import dataclasses
import platform

import pytest
import torch
import torch.nn.functional as F

from tests.parity.compare import decisive_prefix, measure, tie_window
from tests.parity.tolerances import tolerance_for
from tests.test_quant import CONFIG, _greedy, _teacher_forced_logits, realistic_ar
from tortoise_xpu.models.blocks import qkv_attention
from tortoise_xpu.models.diffusion_decoder import DiffusionConfig, DiffusionTts
from tortoise_xpu.models.packed import PackedConv1d, PackedLinear, packing_available

X86 = platform.machine().lower() in ("x86_64", "amd64")


def test_packing_is_available_on_this_x86_build():
    # torch's x86 wheels ship oneDNN: where packing is missing here the CPU path silently loses its
    # fastest kernels, so that is a failure, not a skip.
    if not X86:
        pytest.skip(f"oneDNN packing is only required of x86 builds (this is {platform.machine()})")
    assert packing_available()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows", [1, 5, 16])
def test_packed_linear_is_the_linear_product(dtype, tol, rows):
    g = torch.Generator().manual_seed(rows)
    w, b = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    x = torch.randn(2, rows, 32, generator=g)
    layer = PackedLinear(w, b, dtype, rows=16)
    y = layer(x)
    ref = F.linear(x.to(dtype).float(), w.to(dtype).float(), b.to(dtype).float())
    assert y.dtype == dtype and y.shape == (2, rows, 48)
    assert (y.float() - ref).abs().max() <= tol * ref.abs().max()
    gelu = PackedLinear(w, b, dtype, rows=16, gelu_tanh=True)(x)
    assert (gelu.float() - F.gelu(ref, approximate="tanh")).abs().max() <= 2 * tol * ref.abs().max()


@pytest.mark.parametrize("kernel", [1, 3])
def test_packed_conv1d_is_the_convolution_in_both_layouts(kernel):
    g = torch.Generator().manual_seed(kernel)
    conv = torch.nn.Conv1d(24, 40, kernel, padding=kernel // 2)
    x = torch.randn(2, 24, 37, generator=g)
    packed = PackedConv1d(conv, torch.float32, length=37)
    ref = conv(x)
    assert torch.allclose(packed(x), ref, atol=1e-5, rtol=1e-5)
    x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    y4 = packed(x4)
    assert y4.shape == (2, 40, 1, 37) and torch.allclose(y4.squeeze(2), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="stride-1"):
        PackedConv1d(torch.nn.Conv1d(4, 4, 3, stride=2), torch.float32)


def test_a_packed_layer_keeps_its_dtype_through_module_to():
    layer = PackedLinear(torch.randn(8, 4), torch.randn(8), torch.float32)
    holder = torch.nn.Sequential(layer).to(torch.bfloat16)
    y = holder(torch.randn(3, 4, dtype=torch.bfloat16))
    assert y.dtype == torch.float32 and layer.bias.dtype == torch.float32
    with pytest.raises(Exception):  # opaque: no storage to copy
        copy.deepcopy(layer)


def test_a_packed_ar_keeps_its_kv_cache_in_float32():
    """bfloat16 activations, float32 cache: SDPA reads the cache slice in place (docs/performance.md)."""
    model = realistic_ar(CONFIG, 3).to(torch.bfloat16).use_packed_linears(torch.bfloat16, rows=16)
    cache = model.new_cache(2, 40, dtype=torch.bfloat16)  # the model's choice wins over the caller's
    assert model.kv_cache_dtype == torch.float32 and cache.k.dtype == cache.v.dtype == torch.float32
    text = torch.randint(1, CONFIG.number_text_tokens, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, _ = model.prefill(torch.randn(1, CONFIG.model_dim).bfloat16(), text, cache)
        step, _ = model.decode_step(logits.argmax(-1), 1, cache)
    assert step.shape == (2, CONFIG.number_mel_codes) and torch.isfinite(step.float()).all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_explicit_qkv_attention_is_sdpa_with_the_bias(channels_last):
    from tortoise_xpu.models.blocks import RelativePositionBias

    g = torch.Generator().manual_seed(3)
    rel = RelativePositionBias(scale=4.0, heads=4, max_distance=64)
    with torch.no_grad():
        rel.relative_attention_bias.weight.normal_(generator=g)
    qkv = torch.randn(2, 3 * 64, 50, generator=g)
    if channels_last:
        qkv = qkv.transpose(1, 2).contiguous().transpose(1, 2)  # channel stride 1, as packed convs give
    with torch.no_grad():
        ref = qkv_attention(qkv.contiguous(), 4, rel_pos=rel)
        out = qkv_attention(qkv, 4, rel_pos=rel, matmul=True)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    assert (out.stride(1) == 1) is channels_last  # a channels-last qkv gives a channels-last result


def test_the_position_bias_is_built_once_per_length():
    from tortoise_xpu.models.blocks import RelativePositionBias

    rel = RelativePositionBias(scale=1.0, heads=2)
    with torch.no_grad():
        a, b, c = rel.bias(9, 9, "cpu"), rel.bias(9, 9, "cpu"), rel.bias(10, 10, "cpu")
        assert a is b and c.shape == (1, 2, 10, 10)
        rel.relative_attention_bias.weight.add_(1.0)  # a new table: a new bias
        assert not torch.equal(rel.bias(10, 10, "cpu"), c)
    assert rel.bias(9, 9, "cpu").requires_grad  # with autograd on: built fresh, never cached


@pytest.mark.parametrize("seed", range(3))
def test_packed_ar_error_within_the_bfloat16_parity_tolerance(seed):
    """Teacher-forced decode logits of the packed bfloat16 AR (the CPU's preparation) vs the float32 model."""
    tol = tolerance_for(torch.bfloat16)
    ref_model = realistic_ar(CONFIG, seed)
    packed = copy.deepcopy(ref_model).to(torch.bfloat16).use_packed_linears(torch.bfloat16, rows=16)
    assert all(type(b.mlp.c_fc).__name__ == "PackedLinear" and b.mlp.fused_gelu for b in packed.gpt.h)
    g = torch.Generator().manual_seed(200 + seed)
    cond = torch.randn(1, CONFIG.model_dim, generator=g)
    text = torch.randint(1, CONFIG.number_text_tokens, (1, 20), generator=g)
    with torch.no_grad():
        greedy = _greedy(ref_model, cond, text)
        ref = _teacher_forced_logits(ref_model, cond, text, greedy)
        out = _teacher_forced_logits(packed, cond.bfloat16(), text, greedy).float()
        greedy_p = _greedy(packed, cond.bfloat16(), text)
    m = measure("autoregressive/decode[packed bf16]", "cpu packed", "bfloat16", out, ref, tol, logits=True)
    assert m.ok, m.failures
    prefix = decisive_prefix(ref, tie_window(ref, tol))
    assert torch.equal(greedy_p[:, :prefix], greedy[:, :prefix])


def test_packed_float32_ar_equals_the_unpacked_model():
    ref_model = realistic_ar(CONFIG, 7)
    packed = copy.deepcopy(ref_model).use_packed_linears(torch.float32, rows=16)
    g = torch.Generator().manual_seed(7)
    cond = torch.randn(1, CONFIG.model_dim, generator=g)
    text = torch.randint(1, CONFIG.number_text_tokens, (1, 12), generator=g)
    with torch.no_grad():
        greedy = _greedy(ref_model, cond, text)
        ref = _teacher_forced_logits(ref_model, cond, text, greedy)
        out = _teacher_forced_logits(packed, cond, text, greedy)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize("length", [40, 174])
def test_packed_diffusion_error_within_the_bfloat16_parity_tolerance(length):
    """One denoising step of the CPU's diffusion preparation (every per-step layer bf16, packed,
    channels-last) vs the float32 model: ε and the variance output."""
    tol = tolerance_for(torch.bfloat16)
    torch.manual_seed(5)
    cfg = DiffusionConfig.tiny(model_channels=128, num_heads=4)
    ref_model = DiffusionTts(cfg).eval()
    with torch.no_grad():  # non-zero output convs, so that every layer counts
        for p in ref_model.parameters():
            if p.dim() > 1 and p.abs().max() == 0:
                p.normal_(0, 0.02)
    prepared = copy.deepcopy(ref_model).use_layer_autocast(torch.bfloat16, every_step_layer=True).use_packed_convs()
    assert prepared.channels_last and type(prepared.layers[0].resblk.out_layers[3]).__name__ == "PackedConv1d"
    g = torch.Generator().manual_seed(length)
    x = torch.randn(2, cfg.in_channels, length, generator=g)
    emb = torch.randn(2, cfg.model_channels, length, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        ref = ref_model(x, t, precomputed_aligned_embeddings=emb)
        out = prepared(x, t, precomputed_aligned_embeddings=emb)
    assert out.dtype == torch.float32 and out.is_contiguous()
    for name, sl in (("eps", slice(0, cfg.in_channels)), ("variance", slice(cfg.in_channels, None))):
        m = measure(f"diffusion/{name}[packed bf16]", "cpu packed", "bfloat16", out[:, sl], ref[:, sl], tol)
        assert m.ok, m.failures
        assert m.error > 1e-5  # really bfloat16


def test_the_cpu_policy_packs_where_torch_can_and_the_switch_turns_it_off(monkeypatch):
    from tortoise_xpu.backends import policy_for, resolve
    from tortoise_xpu.backends.base import CPUFeatures
    from tortoise_xpu.backends.policy import Overrides, make_policy

    cpu = resolve("cpu")
    caps = cpu.capabilities()
    packed_caps = dataclasses.replace(caps, cpu=dataclasses.replace(caps.cpu, packed_kernel=True))
    plain_caps = dataclasses.replace(caps, cpu=dataclasses.replace(caps.cpu or CPUFeatures(), packed_kernel=False))
    pol = make_policy(packed_caps, 8 << 30, 16 << 30)
    assert pol.packed_weights and not pol.ar_weight_first and pol.to_dict()["packed_weights"] is True
    assert not make_policy(plain_caps, 8 << 30, 16 << 30).packed_weights
    assert not make_policy(packed_caps, 8 << 30, 16 << 30, overrides=Overrides(packed=False)).packed_weights
    monkeypatch.setenv("TORTOISE_XPU_PACKED", "0")
    assert not policy_for(cpu).packed_weights
    monkeypatch.setenv("TORTOISE_XPU_PACKED", "1")
    assert policy_for(cpu).packed_weights == packing_available()


def test_packed_models_come_from_the_store(tiny_models_dir):
    """A CPU TextToSpeech loads packed models, and a run with them gives a finite waveform."""
    from tortoise_xpu import TextToSpeech

    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu", auto_download=False)
    if not packing_available():
        pytest.fail("oneDNN packing is unavailable in this torch build")
    assert tts.policy(4).packed_weights
    ar, diffusion = tts.model("autoregressive"), tts.model("diffusion")
    assert type(ar.mel_head).__name__ == "PackedLinear"
    assert ar.kv_cache_dtype == torch.float32
    assert type(diffusion.layers[1].attn.qkv).__name__ == "PackedConv1d"
    wav = tts.tts("Packed weights.", seed=3, num_autoregressive_samples=2, diffusion_iterations=2,
                  force_tokens=8)
    assert torch.isfinite(wav).all() and wav.abs().max() > 0


def test_packed_voice_latent_encoder_is_the_float32_one():
    """The voice-latent encoder stays float32 when packed: the same latent up to float rounding."""
    torch.manual_seed(9)
    cfg = DiffusionConfig.tiny(model_channels=64, num_heads=4)
    ref_model = DiffusionTts(cfg).eval()
    with torch.no_grad():
        for p in ref_model.parameters():
            if p.dim() > 1 and p.abs().max() == 0:
                p.normal_(0, 0.02)
    packed = copy.deepcopy(ref_model).use_packed_convs()
    assert type(packed.contextual_embedder[2].qkv).__name__ == "PackedConv1d"
    mels = torch.randn(1, 2, cfg.in_channels, 120, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref, out = ref_model.get_conditioning(mels), packed.get_conditioning(mels)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
