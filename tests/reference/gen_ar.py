"""Write the autoregressive-model goldens from the ORIGINAL tortoise ``UnifiedVoice``.

Run in the original's venv, from the repository root:

    /work/ref/.venv/bin/python tests/reference/gen_ar.py

Writes ``tests/reference/goldens/ar/``:
  * ``official_keys.pt``: the official model's state-dict keys and shapes (built on the meta
    device with api.py's constructor arguments) and its parameter count;
  * ``case_<name>.pt``: for tiny configs and several seeds (weights from ``detweights.fill_``):
    the weight digest, the conditioning latent, teacher-forced text/mel logits, the latents
    (``return_latent=True``) path, and a greedy generation through the original's *uncached*
    inference model (``kv_cache=False``) with the raw lm_head logits of every step.

Everything is float32 on the CPU with one thread, so reruns give the same numbers.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from tests.reference.detweights import digest, fill_  # noqa: E402
from tortoise.models.autoregressive import UnifiedVoice  # noqa: E402

OUT = os.path.join(ROOT, "tests", "reference", "goldens", "ar")

OFFICIAL = dict(max_mel_tokens=604, max_text_tokens=402, max_conditioning_inputs=2, layers=30, model_dim=1024,
                heads=16, number_text_tokens=255, start_text_token=255)

# Keyword names are shared by the original constructor and our ARConfig.  The mel vocabulary is shrunk so
# per-step logits stay small on disk; config "b" also changes the text vocabulary and the code compression.
CFG_A = dict(layers=2, model_dim=64, heads=4, max_text_tokens=24, max_mel_tokens=40, max_conditioning_inputs=2,
             number_text_tokens=255, start_text_token=255, number_mel_codes=130, start_mel_token=128,
             stop_mel_token=129)
CFG_B = dict(layers=3, model_dim=96, heads=6, max_text_tokens=20, max_mel_tokens=48, max_conditioning_inputs=1,
             number_text_tokens=60, start_text_token=60, number_mel_codes=100, start_mel_token=98,
             stop_mel_token=99, mel_length_compression=256)
CASES = [("a_seed1", CFG_A, 1), ("a_seed2", CFG_A, 2), ("b_seed3", CFG_B, 3)]

DECODE_STEPS = 21   # generated codes: the prefill's logits + 20 cached steps on our side


def build(cfg: dict) -> UnifiedVoice:
    return UnifiedVoice(checkpointing=False, train_solo_embeddings=False, **cfg)


def official_keys() -> dict:
    with torch.device("meta"):
        model = build(OFFICIAL)
    sd = model.state_dict()
    return {"keys": [[k, list(v.shape)] for k, v in sd.items()],
            "params": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def make_case(cfg: dict, seed: int) -> dict:
    model = fill_(build(cfg).eval(), seed)
    weights_digest = digest(model)  # before post_init_gpt2_config adds inference_model.* aliases
    g = torch.Generator().manual_seed(1000 + seed)
    comp = cfg.get("mel_length_compression", 1024)
    n_text, n_codes = cfg["number_text_tokens"], cfg["start_mel_token"]

    def tokens(hi, shape):
        return torch.randint(1, hi, shape, generator=g)

    # Conditioning latent: 2 clips per voice, batch 2.
    cond_mels = torch.randn(2, 2, 80, 24, generator=g)
    cond_latent = model.get_conditioning(cond_mels)

    # Teacher forcing with clip_inputs=True: text cut to max(text_lengths)=9, codes cut to 11, and codes past
    # each clip's length + 1 become the stop token.  Heads are hooked to get the text logits too.
    tf = {"text": tokens(n_text, (2, 11)), "text_lengths": torch.tensor([9, 6]),
          "codes": tokens(n_codes, (2, 13)), "wav_lengths": torch.tensor([11 * comp, 7 * comp + comp // 2])}
    captured = {}
    hooks = [model.text_head.register_forward_hook(lambda m, i, o: captured.__setitem__("text", o)),
             model.mel_head.register_forward_hook(lambda m, i, o: captured.__setitem__("mel", o))]
    loss_text, loss_mel, mel_logits = model(cond_latent, tf["text"].clone(), tf["text_lengths"], tf["codes"].clone(),
                                            tf["wav_lengths"], clip_inputs=True)
    for h in hooks:
        h.remove()
    assert torch.equal(captured["mel"].permute(0, 2, 1), mel_logits)
    tf.update(text_logits=captured["text"], mel_logits=captured["mel"], loss_text=loss_text, loss_mel=loss_mel)

    # Latents pass as the pipeline calls it (clip_inputs=False), plus the clipped variant on the tf inputs.
    lat = {"text": tokens(n_text, (2, 8)), "text_lengths": torch.tensor([8, 8]),
           "codes": tokens(n_codes, (2, 12)), "wav_lengths": torch.tensor([12 * comp, 8 * comp])}
    lat["latents"] = model(cond_latent, lat["text"].clone(), lat["text_lengths"], lat["codes"].clone(),
                           lat["wav_lengths"], return_latent=True, clip_inputs=False)
    tf["latents"] = model(cond_latent, tf["text"].clone(), tf["text_lengths"], tf["codes"].clone(),
                          tf["wav_lengths"], return_latent=True, clip_inputs=True)

    # Greedy generation through the original's uncached inference path (kv_cache=False): every step re-runs
    # the whole sequence with contiguous mel positions.  min_length keeps the stop token out of the argmax so
    # every case yields DECODE_STEPS codes; the hook records the raw lm_head logits of the last position.
    model.post_init_gpt2_config(kv_cache=False)
    dec = {"text": tokens(n_text, (2, 8))}
    prompt_len = 1 + dec["text"].shape[1] + 2 + 1
    steps = []
    hook = model.inference_model.lm_head.register_forward_hook(lambda m, i, o: steps.append(o[:, -1].clone()))
    codes = model.inference_speech(cond_latent, dec["text"], do_sample=False, max_generate_length=DECODE_STEPS,
                                   min_length=prompt_len + DECODE_STEPS)
    hook.remove()
    assert codes.shape == (2, DECODE_STEPS) and len(steps) == DECODE_STEPS, (codes.shape, len(steps))
    dec.update(codes=codes, step_logits=torch.stack(steps))

    return {"config": cfg, "seed": seed, "weights_digest": weights_digest,
            "cond_mels": cond_mels, "cond_latent": cond_latent, "tf": tf, "latent": lat, "decode": dec}


def main() -> None:
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    keys = official_keys()
    torch.save(keys, os.path.join(OUT, "official_keys.pt"))
    print(f"official: {keys['params']:,} parameters, {len(keys['keys'])} state-dict keys")
    for name, cfg, seed in CASES:
        case = make_case(cfg, seed)
        path = os.path.join(OUT, f"case_{name}.pt")
        torch.save(case, path)
        print(f"{name}: {os.path.getsize(path):,} bytes, codes[0]={case['decode']['codes'][0].tolist()}")


if __name__ == "__main__":
    main()
