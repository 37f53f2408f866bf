"""UnifiedVoice: official shapes, parity with the original (goldens), and the KV-cached decode.

Goldens come from ``tests/reference/gen_ar.py`` (the original class, tiny configs, weights from
``detweights.fill_``); see that script for what each case holds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from tests.reference.detweights import digest, fill_
from tortoise_xpu.models.autoregressive import ARConfig, UnifiedVoice

GOLDENS = Path(__file__).parent / "reference" / "goldens" / "ar"
CASE_FILES = sorted(GOLDENS.glob("case_*.pt"))


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-5)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


# ------------------------------------------------------------------------------------------ shapes

def test_official_parameter_count_on_meta():
    with torch.device("meta"):
        model = UnifiedVoice()
    assert sum(p.numel() for p in model.parameters()) == 421_526_786


def test_official_state_dict_equals_original_keys_and_shapes():
    golden = load(GOLDENS / "official_keys.pt")
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in UnifiedVoice().state_dict().items()}
    expected = dict((k, s) for k, s in golden["keys"])
    assert golden["params"] == 421_526_786
    assert set(ours) == set(expected), (set(ours) ^ set(expected))
    assert ours == expected


def test_tiny_config_is_small_and_keeps_official_tokens():
    cfg = ARConfig.tiny()
    with torch.device("meta"):
        n = sum(p.numel() for p in UnifiedVoice(cfg).parameters())
    assert n < 5_000_000
    assert (cfg.number_mel_codes, cfg.start_mel_token, cfg.stop_mel_token) == (8194, 8192, 8193)
    assert (cfg.start_text_token, cfg.stop_text_token, cfg.text_vocab) == (255, 0, 256)


def test_convert_state_dict_drops_only_ignorable_checkpoint_keys():
    model = UnifiedVoice(ARConfig.tiny())
    raw = dict(model.state_dict())
    for i in range(model.config.layers):  # what the real autoregressive.pth carries per layer
        raw[f"gpt.h.{i}.attn.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.uint8)
        raw[f"gpt.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    raw["gpt.wte.weight"] = raw["mel_embedding.weight"]
    raw["inference_model.lm_head.1.weight"] = raw["mel_head.weight"]
    converted = UnifiedVoice.convert_state_dict(raw)
    assert set(converted) == set(model.state_dict())
    model.load_state_dict(converted, strict=True)
    # anything else still reaches the strict loader
    assert "gpt.h.0.attn.c_attn.extra" in UnifiedVoice.convert_state_dict({"gpt.h.0.attn.c_attn.extra": 0})


# ------------------------------------------------------------------------------------------ parity

@pytest.fixture(scope="module", params=CASE_FILES, ids=[p.stem for p in CASE_FILES])
def case(request):
    golden = load(request.param)
    model = fill_(UnifiedVoice(ARConfig(**golden["config"])).eval(), golden["seed"])
    return model, golden


def test_goldens_present():
    assert len(CASE_FILES) >= 3, "run tests/reference/gen_ar.py in the reference venv"


def test_weights_equal_the_originals(case):
    model, golden = case
    assert digest(model) == golden["weights_digest"]


@torch.no_grad()
def test_conditioning_latent(case):
    model, golden = case
    close(model.get_conditioning(golden["cond_mels"]), golden["cond_latent"])
    # a single clip given as (B, 80, T) is the same as one clip in (B, 1, 80, T)
    one = golden["cond_mels"][:, 0]
    close(model.get_conditioning(one), model.get_conditioning(one.unsqueeze(1)))


@torch.no_grad()
def test_teacher_forced_logits(case):
    model, golden = case
    tf = golden["tf"]
    codes = tf["codes"].clone()
    text_logits, mel_logits = model(golden["cond_latent"], tf["text"], tf["text_lengths"], codes,
                                    tf["wav_lengths"], clip_inputs=True)
    assert torch.equal(codes, tf["codes"]), "forward must not modify its inputs"
    close(text_logits, tf["text_logits"])
    close(mel_logits, tf["mel_logits"])
    loss_mel = torch.nn.functional.cross_entropy(mel_logits.transpose(1, 2), _mel_targets(model, tf))
    close(loss_mel, tf["loss_mel"])


def _mel_targets(model: UnifiedVoice, tf: dict) -> torch.Tensor:
    """The original's mel targets for the clipped inputs: codes (stop past length + 1), stop, stop."""
    c = model.config
    codes = tf["codes"][:, :int(tf["wav_lengths"].max()) // c.mel_length_compression]
    codes = model._pad_codes_past_length(codes, tf["wav_lengths"])
    return torch.nn.functional.pad(codes, (0, 2), value=c.stop_mel_token)


@torch.no_grad()
def test_latents_path(case):
    model, golden = case
    for part, clip in (("latent", False), ("tf", True)):
        d = golden[part]
        latents = model(golden["cond_latent"], d["text"], d["text_lengths"], d["codes"], d["wav_lengths"],
                        return_latent=True, clip_inputs=clip)
        close(latents, d["latents"])


@pytest.mark.parametrize("position_kind", ["int", "tensor"])
@torch.no_grad()
def test_cached_decode_equals_uncached_original_at_every_step(case, position_kind):
    """Prefill + 20 cached steps fed the original's greedy codes give its uncached logits each step."""
    model, golden = case
    dec, c = golden["decode"], model.config
    codes, expected = dec["codes"], dec["step_logits"]           # (B, 21), (21, B, V)
    cache = model.new_cache(codes.shape[0], model.prompt_length(dec["text"].shape[1]) + codes.shape[1])
    logits, hidden = model.prefill(golden["cond_latent"], dec["text"], cache)
    steps, hiddens = [logits], [hidden]
    position = torch.zeros((), dtype=torch.long)
    for k in range(1, codes.shape[1]):
        if position_kind == "tensor":
            position.fill_(k)  # the same tensor updated in place, as a captured graph would see it
        logits, hidden = model.decode_step(codes[:, k - 1], k if position_kind == "int" else position, cache)
        steps.append(logits)
        hiddens.append(hidden)
    steps = torch.stack(steps)
    assert steps.shape[0] == 21
    close(steps, expected)
    # the original picked each code greedily with the stop token masked (min_length)
    masked = steps.clone()
    masked[..., c.stop_mel_token] = -float("inf")
    assert torch.equal(masked.argmax(-1).T, codes)
    # the per-step hidden states are the latents pass over the same codes (streaming relies on it)
    n = codes.shape[1]
    latents = model(golden["cond_latent"], dec["text"], torch.full((2,), dec["text"].shape[1]), codes,
                    torch.full((2,), n * c.mel_length_compression), return_latent=True, clip_inputs=False)
    close(torch.stack(hiddens, dim=1), latents)


@torch.no_grad()
def test_prefill_broadcasts_a_single_prompt_to_the_cache_batch(case):
    model, golden = case
    dec = golden["decode"]
    cond, text = golden["cond_latent"][:1], dec["text"][:1]
    wide = model.new_cache(3, 20)
    logits3, _ = model.prefill(cond, text, wide)
    narrow = model.new_cache(1, 20)
    logits1, _ = model.prefill(cond, text, narrow)
    close(logits3, logits1.expand(3, -1))
    step3, _ = model.decode_step(dec["codes"][0, :1].expand(3), 1, wide)
    step1, _ = model.decode_step(dec["codes"][0, :1], 1, narrow)
    close(step3, step1.expand(3, -1))
    close(logits1[0], dec["step_logits"][0, 0])


def test_decode_step_rejects_positions_outside_the_cache():
    model = UnifiedVoice(dataclasses.replace(ARConfig.tiny(), layers=1)).eval()
    cache = model.new_cache(1, 8)
    with torch.no_grad():
        model.prefill(torch.zeros(1, 64), torch.ones(1, 2, dtype=torch.long), cache)  # prompt fills 6 slots
        model.decode_step(torch.zeros(1, dtype=torch.long), 2, cache)                 # slot 7, the last
        with pytest.raises(ValueError):
            model.decode_step(torch.zeros(1, dtype=torch.long), 3, cache)
        with pytest.raises(ValueError):
            model.prefill(torch.zeros(1, 64), torch.ones(1, 5, dtype=torch.long), cache)


@torch.no_grad()
def test_tensor_position_decode_step_is_one_static_graph():
    """decode_step with a device-tensor position traces as one graph, reused when the position changes.

    This is what CUDA-graph capture needs (no graph breaks, no data-dependent Python, static shapes);
    checked with dynamo's tracing only (backend="eager"), so no compiler or GPU is required.
    """
    dynamo = pytest.importorskip("torch._dynamo", reason="torch.compile unavailable on this Python/torch")
    model = UnifiedVoice(dataclasses.replace(ARConfig.tiny(), layers=1)).eval()
    cond, text = torch.randn(2, 64), torch.randint(1, 255, (2, 5))
    traced_cache, eager_cache = model.new_cache(2, 16), model.new_cache(2, 16)
    model.prefill(cond, text, traced_cache)
    model.prefill(cond, text, eager_cache)
    dynamo.reset()
    dynamo.utils.counters.clear()
    step = torch.compile(model.decode_step, backend="eager", fullgraph=True, dynamic=False)
    position = torch.ones((), dtype=torch.long)
    for k in (1, 2, 3):
        position.fill_(k)  # updated in place, as between CUDA-graph replays
        tokens = torch.tensor([k, k + 7])
        traced, _ = step(tokens, position, traced_cache)
        eager, _ = model.decode_step(tokens, k, eager_cache)
        close(traced, eager)
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1


# ------------------------------------------------------------------------------ weight-first linears

@pytest.mark.parametrize("position_kind", ["int", "tensor"])
@torch.no_grad()
def test_weight_first_linears_match_the_originals_goldens(case, position_kind):
    """The CPU's faster product order (Policy.ar_weight_first) changes rounding only: the goldens hold."""
    model, golden = case
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.use_weight_first_linears(True)
    try:
        w = model.gpt.h[0].attn.c_attn.weight
        assert w.t().is_contiguous() and not w.is_contiguous()  # re-laid out-major in memory...
        after = model.state_dict()                               # ...with the same shapes and values
        assert after.keys() == before.keys()
        assert all(after[k].shape == v.shape and torch.equal(after[k], v) for k, v in before.items())
        dec = golden["decode"]
        codes, expected = dec["codes"], dec["step_logits"]
        cache = model.new_cache(codes.shape[0], model.prompt_length(dec["text"].shape[1]) + codes.shape[1])
        logits, _ = model.prefill(golden["cond_latent"], dec["text"], cache)
        steps = [logits]
        for k in range(1, codes.shape[1]):
            pos = k if position_kind == "int" else torch.tensor(k)
            steps.append(model.decode_step(codes[:, k - 1], pos, cache)[0])
        close(torch.stack(steps), expected)
        d = golden["tf"]
        d = golden["latent"]
        close(model(golden["cond_latent"], d["text"], d["text_lengths"], d["codes"], d["wav_lengths"],
                    return_latent=True, clip_inputs=False), d["latents"])
    finally:
        model.use_weight_first_linears(False)
    assert not model.gpt.h[0].mlp.c_fc.weight_first


@torch.no_grad()
def test_weight_first_state_dict_loads_into_a_default_model():
    """A re-laid model's state dict is still the checkpoint layout: a fresh model loads it strictly."""
    torch.manual_seed(0)
    model = UnifiedVoice(ARConfig.tiny()).eval().use_weight_first_linears(True)
    fresh = UnifiedVoice(ARConfig.tiny()).eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    cond, text = torch.randn(1, 64), torch.randint(1, 255, (1, 6))
    codes, wav = torch.randint(0, 8192, (1, 5)), torch.tensor([5 * 1024])
    torch.testing.assert_close(model(cond, text, torch.tensor([6]), codes, wav)[1],
                               fresh(cond, text, torch.tensor([6]), codes, wav)[1], atol=1e-5, rtol=1e-5)
