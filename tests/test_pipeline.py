"""End to end through TextToSpeech with tiny random models on the CPU."""

from __future__ import annotations

import pytest
import torch

from tortoise_xpu.errors import UserError

FAST = dict(num_autoregressive_samples=4, diffusion_iterations=3, max_mel_tokens=12)


@pytest.fixture(scope="module")
def tts(tiny_models_dir):
    from tortoise_xpu import TextToSpeech

    return TextToSpeech(models_dir=tiny_models_dir, device="cpu")


def test_random_voice_gives_24khz_audio_and_report(tts):
    wav = tts.tts_with_preset("Hello there.", preset="ultra_fast", seed=3, **FAST)
    assert wav.dim() == 2 and wav.shape[0] == 1 and wav.dtype == torch.float32
    # 12 codes -> 12*4*24000//22050 = 52 mel frames -> 52*256 samples
    assert wav.shape[1] == 52 * 256
    assert torch.isfinite(wav).all() and wav.abs().max() <= 1.0
    r = tts.last_report
    assert r.seed == 3 and r.candidates == 4 and len(r.scores) == 4
    assert {"conditioning", "ar", "clvp", "latents", "diffusion", "vocoder"} <= set(r.stages)


def test_same_seed_same_audio_other_seed_differs(tts):
    a = tts.tts_with_preset("Same seed.", preset="ultra_fast", seed=11, **FAST)
    b = tts.tts_with_preset("Same seed.", preset="ultra_fast", seed=11, **FAST)
    c = tts.tts_with_preset("Same seed.", preset="ultra_fast", seed=12, **FAST)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batch_size_does_not_change_candidates(tiny_models_dir):
    from tortoise_xpu import TextToSpeech

    t1 = TextToSpeech(models_dir=tiny_models_dir, device="cpu", batch_size=1)
    t4 = TextToSpeech(models_dir=tiny_models_dir, device="cpu", batch_size=4)
    from tortoise_xpu.pipeline.sampling import SamplingSettings

    cond = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))

    def gen(t):
        return t.sample_codes(cond, t.text_tokens("batch test"), 4, SamplingSettings(), 10,
                              torch.Generator().manual_seed(5))

    assert torch.equal(gen(t1), gen(t4))


def test_cpu_policy_loads_the_ar_model_with_weight_first_linears(tiny_models_dir, monkeypatch):
    """Policy.ar_weight_first reaches the model: its GPT-2 weights are laid out out-major at load
    (where the weights are not prepacked: TORTOISE_XPU_PACKED=0; packed, tests/test_packed.py)."""
    from tortoise_xpu import TextToSpeech

    monkeypatch.setenv("TORTOISE_XPU_PACKED", "0")
    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu")
    assert tts.policy(16).ar_weight_first
    ar = tts.model("autoregressive")
    assert ar.weight_first and all(b.attn.c_attn.weight_first for b in ar.gpt.h)
    assert ar.gpt.h[0].mlp.c_proj.weight.t().is_contiguous()
    bf16 = TextToSpeech(models_dir=tiny_models_dir, device="cpu", dtype="bfloat16")
    assert not bf16.policy(16).ar_weight_first and not bf16.model("autoregressive").weight_first


@pytest.mark.parametrize("packed", [False, True])
def test_half_precision_diffusion_runs_the_autocast_scheme(tiny_models_dir, monkeypatch, packed):
    """At a half dtype the diffusion decoder keeps float32 edges and autocasts its main layers (the
    original's use_fp16), with those layers' weights stored in the half dtype; the AR model is cast.
    Packed (the CPU's weights prepacked for oneDNN), every per-step layer is in the half dtype: the
    first main layer and the step integrator too; the input block and the output stay float32."""
    from tortoise_xpu import TextToSpeech

    monkeypatch.setenv("TORTOISE_XPU_PACKED", "1" if packed else "0")
    tts = TextToSpeech(models_dir=tiny_models_dir, device="cpu", dtype="bfloat16")
    assert tts.policy(16).packed_weights is packed
    diffusion = tts.model("diffusion")
    assert diffusion.layer_autocast_dtype == torch.bfloat16
    assert diffusion.autocast_every_step_layer is packed and diffusion.channels_last is packed

    def dtype(layer):  # a plain layer's weight dtype, or a packed layer's (models/packed.py)
        return layer.weight.dtype if hasattr(layer, "weight") else layer.dtype

    first = torch.bfloat16 if packed else torch.float32
    assert dtype(diffusion.inp_block) == dtype(diffusion.out[-1]) == torch.float32
    assert dtype(diffusion.layers[0].resblk.out_layers[3]) == first
    assert dtype(diffusion.conditioning_timestep_integrator[0].attn.qkv) == first
    assert dtype(diffusion.layers[1].attn.qkv) == torch.bfloat16
    assert type(diffusion.layers[1].attn.qkv).__name__ == ("PackedConv1d" if packed else "Conv1d")
    assert next(tts.model("autoregressive").parameters()).dtype == torch.bfloat16
    wav = tts.tts_with_preset("Half precision.", preset="ultra_fast", seed=2, **FAST)
    assert wav.dtype == torch.float32 and torch.isfinite(wav).all()


@pytest.mark.parametrize("sampler,cond_free", [("p", True), ("ddim", False), ("ddim", True), ("dpm++2m", True)])
def test_samplers_and_cond_free(tts, sampler, cond_free):
    wav = tts.tts("Sampler test.", seed=1, sampler=sampler, cond_free=cond_free, **FAST)
    assert wav.shape == (1, 52 * 256) and torch.isfinite(wav).all()


def test_k_candidates_returns_list_in_score_order(tts, monkeypatch):
    """The k waveforms are the k best-scored candidates, best first: the ranking picks the top-k
    indices in descending score order, the latents stage gets those candidates' codes in that order,
    and the first waveform is the one k=1 returns (same draws in the same order)."""
    from tortoise_xpu.pipeline import latents, ranking

    seen = {}
    real_rank, real_latents = ranking.rank, latents.ar_latents

    def rank(store, ctx, text, codes, k, *args):
        scores, best = real_rank(store, ctx, text, codes, k, *args)
        seen.update(codes=codes.clone(), scores=scores.clone(), best=best.clone())
        return scores, best

    def ar_latents(store, ctx, ar_latent, text, codes):
        seen["chosen"] = codes.clone()
        return real_latents(store, ctx, ar_latent, text, codes)

    monkeypatch.setattr(ranking, "rank", rank)
    monkeypatch.setattr(latents, "ar_latents", ar_latents)
    out = tts.tts("Two of them.", k=2, seed=2, **FAST)
    assert isinstance(out, list) and len(out) == 2
    scores = tts.last_report.scores
    assert len(scores) == 4 and scores == seen["scores"].tolist()
    order = sorted(range(4), key=lambda i: scores[i], reverse=True)
    assert seen["best"].tolist() == order[:2]
    assert scores[order[0]] >= scores[order[1]]
    assert torch.equal(seen["chosen"], seen["codes"][order[:2]])
    best_only = tts.tts("Two of them.", k=1, seed=2, **FAST)
    assert torch.equal(out[0], best_only)


def test_conditioning_latents_are_used(tts):
    ar = torch.randn(1, 64)
    diff = torch.randn(1, 128)
    a = tts.tts("Latents.", conditioning_latents=(ar, diff), seed=4, **FAST)
    b = tts.tts("Latents.", conditioning_latents=(ar * 2, diff), seed=4, **FAST)
    assert not torch.equal(a, b)


def test_force_tokens_ignores_stop(tts):
    tts.tts("Forced.", seed=5, force_tokens=7, num_autoregressive_samples=2, diffusion_iterations=2)
    assert tts.last_report.ar_steps == 7


def test_bad_settings_are_user_errors(tts):
    with pytest.raises(UserError, match="sampler"):
        tts.tts("x", sampler="euler", **FAST)
    with pytest.raises(UserError, match="cond_free"):
        tts.tts("x", sampler="dpm++2m", cond_free=False, **FAST)
    with pytest.raises(UserError, match="between 1 and"):
        tts.tts("x", k=9, **FAST)
    with pytest.raises(UserError, match="unknown setting"):
        tts.tts("x", warp=1, **FAST)
    with pytest.raises(UserError, match="empty"):
        tts.tts("   ", **FAST)
