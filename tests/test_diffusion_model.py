"""DiffusionTts: official shape, and parity with the original tortoise-tts 3.0.0 (goldens)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.reference.detweights import digest, fill_
from tortoise_xpu.models.diffusion_decoder import DiffusionConfig, DiffusionTts, timestep_embedding

GOLDENS = os.path.join(os.path.dirname(__file__), "reference", "goldens", "diffusion", "model.pt")
OFFICIAL_PARAMS = 292_334_380  # anchors.md §3


@pytest.fixture(scope="module")
def goldens():
    if not os.path.exists(GOLDENS):
        pytest.skip("diffusion goldens missing: run tests/reference/gen_diffusion.py in the reference venv")
    return torch.load(GOLDENS, weights_only=True)


def _ours(kwargs: dict, seed: int) -> DiffusionTts:
    return fill_(DiffusionTts(DiffusionConfig(**kwargs)).eval(), seed)


def assert_close(ours: torch.Tensor, ref: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-5) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    torch.testing.assert_close(ours.float(), ref.float(), atol=atol, rtol=rtol)


def test_official_config_values():
    cfg = DiffusionConfig()
    assert (cfg.model_channels, cfg.num_layers, cfg.in_channels, cfg.out_channels, cfg.in_latent_channels,
            cfg.in_tokens, cfg.num_heads) == (1024, 10, 100, 200, 1024, 8193, 16)
    assert (cfg.dropout, cfg.use_fp16, cfg.layer_drop, cfg.unconditioned_percentage) == (0, False, 0, 0)


def test_official_parameter_count_on_meta():
    with torch.device("meta"):
        model = DiffusionTts()
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS


def test_official_state_dict_names_and_shapes_equal_original(goldens):
    with torch.device("meta"):
        model = DiffusionTts(DiffusionConfig(**goldens["official_kwargs"]))
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert goldens["official_params"] == OFFICIAL_PARAMS
    assert sorted(ours) == sorted(goldens["official_keys"])


def test_tiny_is_small():
    model = DiffusionTts(DiffusionConfig.tiny())
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert DiffusionConfig.tiny(in_latent_channels=32).in_latent_channels == 32


def test_timestep_embedding_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 6)
    assert emb.shape == (2, 6)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(3) / 3)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]))
    assert timestep_embedding(torch.tensor([1.0]), 5).shape == (1, 5)


@pytest.mark.reference
@pytest.mark.parametrize("index", [0, 1])
def test_parity_with_original(goldens, index):
    g = goldens["configs"][index]
    model = _ours(g["kwargs"], g["seed"])
    assert digest(model) == g["digest"], "filled weights differ from the original's"
    inp = g["inputs"]
    with torch.no_grad():
        cond = model.get_conditioning(inp["cond_mels"])
        assert cond.shape == (inp["x"].shape[0], 2 * g["kwargs"]["model_channels"])
        assert_close(cond, g["conditioning_latent"])
        assert_close(model.get_conditioning(inp["cond_mels"][:, 0]), g["conditioning_latent_3d"])
        # clips as a list (lengths may differ) give the same voice latent
        clips = [inp["cond_mels"][:, j] for j in range(inp["cond_mels"].shape[1])]
        assert_close(model.get_conditioning(clips), g["conditioning_latent"])

        emb = model.timestep_independent(inp["latents"], g["conditioning_latent"], g["length"])
        assert_close(emb, g["aligned_embeddings"])
        emb_codes, pred_codes = model.timestep_independent(inp["codes"], g["conditioning_latent"], g["length"],
                                                           return_code_pred=True)
        assert_close(emb_codes, g["code_embeddings"])
        assert_close(pred_codes, g["code_mel_pred"])

        for t, ref, ref_free in zip(inp["timesteps"], g["out"], g["out_cond_free"]):
            out = model(inp["x"], t, precomputed_aligned_embeddings=g["aligned_embeddings"])
            assert_close(out[:, :100], ref[:, :100])  # ε
            assert_close(out[:, 100:], ref[:, 100:])  # variance value
            free = model(inp["x"], t, precomputed_aligned_embeddings=g["aligned_embeddings"], conditioning_free=True)
            assert_close(free, ref_free)
            # both passes as one batch of 2B with a per-sample mask
            cond_out, free_out = model.denoiser(g["aligned_embeddings"], batch_cond_free=True)(inp["x"], t.float(), True)
            assert_close(cond_out, ref)
            assert_close(free_out, ref_free)

        full, mel_pred = model(inp["x"], inp["timesteps"][1], aligned_conditioning=inp["latents"],
                               conditioning_latent=g["conditioning_latent"], return_code_pred=True)
        assert_close(full, g["full_out"])
        assert_close(mel_pred, g["full_mel_pred"])


def test_conditioning_free_mask_mixes_per_sample(goldens):
    g = goldens["configs"][0]
    model = _ours(g["kwargs"], g["seed"])
    inp = g["inputs"]
    t = inp["timesteps"][2]
    with torch.no_grad():
        out = model(inp["x"], t, precomputed_aligned_embeddings=g["aligned_embeddings"],
                    conditioning_free=torch.tensor([False, True]))
    assert_close(out[0], g["out"][2][0])
    assert_close(out[1], g["out_cond_free"][2][1])


def test_denoiser_without_uncond_and_unbatched(goldens):
    g = goldens["configs"][1]
    model = _ours(g["kwargs"], g["seed"])
    inp = g["inputs"]
    t = inp["timesteps"][0].float()
    with torch.no_grad():
        cond_out, none = model.denoiser(g["aligned_embeddings"])(inp["x"], t, False)
        assert none is None
        a, b = model.denoiser(g["aligned_embeddings"], batch_cond_free=False)(inp["x"], t, True)
    assert_close(cond_out, g["out"][0])
    assert_close(a, g["out"][0])
    assert_close(b, g["out_cond_free"][0])


def test_forward_needs_conditioning():
    model = DiffusionTts(DiffusionConfig.tiny()).eval()
    with pytest.raises(ValueError):
        model(torch.zeros(1, 100, 8), torch.zeros(1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stored_half_layer_weights_equal_autocasting_float32_ones(dtype):
    """use_layer_autocast stores the autocast layers' weights rounded: the output is bit-identical."""
    torch.manual_seed(0)
    model = fill_(DiffusionTts(DiffusionConfig.tiny()).eval(), 3)
    x, t = torch.randn(2, 100, 20), torch.tensor([500.0, 20.0])
    latents, cond = torch.randn(2, 5, 64), torch.randn(2, 128) * 0.1
    with torch.no_grad():
        model.layer_autocast_dtype = dtype
        try:
            per_step_cast = model(x, t, aligned_conditioning=latents, conditioning_latent=cond)
        except RuntimeError as exc:  # CPU autocast to float16 arrived in torch 2.x; older builds refuse it
            pytest.skip(f"CPU autocast to {dtype} unsupported by this torch: {exc}")
        before = sum(p.numel() * p.element_size() for p in model.parameters())
        model.use_layer_autocast(dtype)
        stored = model(x, t, aligned_conditioning=latents, conditioning_latent=cond)
    assert torch.equal(stored, per_step_cast)
    assert model.layers[1].resblk.out_layers[3].weight.dtype == dtype
    assert model.layers[1].attn.norm.weight.dtype == torch.float32       # norms read in float32
    assert model.layers[0].resblk.out_layers[3].weight.dtype == torch.float32  # the first layer stays
    assert model.inp_block.weight.dtype == model.out[-1].weight.dtype == torch.float32
    assert sum(p.numel() * p.element_size() for p in model.parameters()) < before


def test_layer_autocast_runs_and_stays_close():
    """The original's use_fp16 scheme (autocast in every main layer but the first), here with bf16."""
    torch.manual_seed(0)
    model = fill_(DiffusionTts(DiffusionConfig.tiny()).eval(), 3)
    assert model.layer_autocast_dtype is None
    assert DiffusionTts(DiffusionConfig.tiny(use_fp16=True)).layer_autocast_dtype == torch.float16
    x, t = torch.randn(1, 100, 20), torch.tensor([500.0])
    latents, cond = torch.randn(1, 5, 64), torch.randn(1, 128) * 0.1
    with torch.no_grad():
        ref = model(x, t, aligned_conditioning=latents, conditioning_latent=cond)
        model.layer_autocast_dtype = torch.bfloat16
        low = model(x, t, aligned_conditioning=latents, conditioning_latent=cond)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert 0 < (low - ref).abs().max() / ref.abs().max() < 0.05
    # a model cast whole to bf16 (weights too) also runs
    model.layer_autocast_dtype = None
    with torch.no_grad():
        cast = model.to(torch.bfloat16)(x, t, aligned_conditioning=latents, conditioning_latent=cond)
    assert cast.dtype == torch.bfloat16 and (cast.float() - ref).abs().max() / ref.abs().max() < 0.1


def _einsum_attention(qkv: torch.Tensor, heads: int, rel_pos) -> torch.Tensor:
    """The original's QKVAttentionLegacy with relative position bias, written out (no mask)."""
    b, width, t = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(b * heads, ch * 3, t).split(ch, dim=1)
    w = torch.einsum("bct,bcs->bts", q * ch ** -0.25, k * ch ** -0.25)
    n = torch.arange(t)[None, :] - torch.arange(t)[:, None]
    buckets = torch.tensor([[rel_pos_bucket(int(d), rel_pos) for d in row] for row in n])
    bias = rel_pos.relative_attention_bias(buckets).permute(2, 0, 1) * rel_pos.scale  # (H, T, T)
    w = (w.reshape(b, heads, t, t) + bias).reshape(b * heads, t, t)
    return torch.einsum("bts,bcs->bct", torch.softmax(w.float(), dim=-1), v).reshape(b, -1, t)


def rel_pos_bucket(rel: int, rp) -> int:
    """T5's bucket of one relative position (key - query), bidirectional, in plain Python."""
    import math

    n, half = -rel, rp.num_buckets // 2
    ret = half if n < 0 else 0
    n = abs(n)
    exact = half // 2
    if n < exact:
        return ret + n
    return ret + min(half - 1, exact + int(math.log(n / exact) / math.log(rp.max_distance / exact) * (half - exact)))


@torch.no_grad()
def test_unmasked_attention_is_the_originals_formula_with_a_toeplitz_bias():
    from tortoise_xpu.models.blocks import AttentionBlock, qkv_attention

    torch.manual_seed(0)
    blocks = [AttentionBlock(64, 4, relative_pos_embeddings=True) for _ in range(2)]
    for block in blocks:
        block.relative_pos_embeddings.relative_attention_bias.weight.normal_()
    qkv = torch.randn(2, 3 * 64, 150)  # 150 frames: past max_distance 64, the log buckets are used
    for block in blocks:
        rp = block.relative_pos_embeddings
        torch.testing.assert_close(qkv_attention(qkv, 4, rel_pos=rp), _einsum_attention(qkv, 4, rp),
                                   atol=1e-5, rtol=1e-5)
    for i, j in ((1, 1), (7, 13), (13, 7)):  # the Toeplitz construction for non-square and 1x1 shapes
        rp = blocks[0].relative_pos_embeddings
        want = torch.tensor([[rel_pos_bucket(k - q, rp) for k in range(j)] for q in range(i)])
        got = rp.bias(i, j, "cpu")
        assert got.shape == (1, 4, i, j) and got.is_contiguous()
        assert torch.equal(got[0], rp.relative_attention_bias(want).permute(2, 0, 1) * rp.scale)
    # the masked path (training, the original's multiply-after-softmax) is still the einsum form
    ones = torch.ones(2, 150)
    torch.testing.assert_close(qkv_attention(qkv, 4, ones, blocks[0].relative_pos_embeddings),
                               _einsum_attention(qkv, 4, blocks[0].relative_pos_embeddings), atol=1e-5, rtol=1e-5)
