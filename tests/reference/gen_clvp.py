"""Goldens for CLVP and CVVP from the ORIGINAL tortoise-tts 3.0.0 classes.

Run from the repository root with the reference venv:

    /work/ref/.venv/bin/python tests/reference/gen_clvp.py   (or: -m tests.reference.gen_clvp)

Writes ``tests/reference/goldens/clvp/{clvp,cvvp}.pt``: for each (config, seed) case the
config kwargs, the ``detweights.digest`` of the original's filled weights, the fixed inputs and
the original's outputs.  Our tests rebuild our models from the same kwargs, fill them with the
same ``detweights.fill_`` and compare.  Everything is float32 CPU, eval mode.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.reference.detweights import digest, fill_  # noqa: E402

OUT = Path(__file__).resolve().parent / "goldens" / "clvp"
STOP_MEL_TOKEN = 8193  # the AR model's stop token; the pipeline pads with it before fixing the codes

CLVP_CASES = [
    (dict(dim_text=64, dim_speech=64, dim_latent=32, num_text_tokens=256, text_enc_depth=2, text_heads=2,
          num_speech_tokens=8192, speech_enc_depth=2, speech_heads=2, use_xformers=True), seed)
    for seed in (0, 1, 2)
] + [
    # odd head count, latent wider than the model, one layer per side
    (dict(dim_text=96, dim_speech=80, dim_latent=112, num_text_tokens=256, text_enc_depth=1, text_heads=3,
          num_speech_tokens=8192, speech_enc_depth=3, speech_heads=1, use_xformers=True), 7),
]

CVVP_CASES = [
    (dict(model_dim=64, transformer_heads=2, dropout=0, mel_codes=8192, conditioning_enc_depth=1,
          cond_mask_percentage=0, speech_enc_depth=1, speech_mask_percentage=0, latent_multiplier=1), seed)
    for seed in (0, 1, 2)
] + [
    # the mel-input variant (mel_codes=None) with deeper encoders
    (dict(model_dim=32, transformer_heads=4, dropout=0, mel_codes=None, conditioning_enc_depth=2,
          cond_mask_percentage=0, speech_enc_depth=2, speech_mask_percentage=0, latent_multiplier=1), 5),
]


def rotary_buffers(model: torch.nn.Module) -> list[str]:
    """Rotary frequency buffers: fixed values in every checkpoint, so the weight filler leaves them alone."""
    return [k for k in model.state_dict() if k.endswith("rotary_pos_emb.inv_freq")]


def pipeline_codes(g: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """Candidate codes as CLVP sees them in the pipeline: stopped at varying lengths, padded, fixed."""
    from tortoise.api import fix_autoregressive_output

    codes = torch.randint(0, 8192, (batch, length), generator=g)
    for i in range(batch):
        stop = int(torch.randint(length // 3, length + 1, (1,), generator=g))
        codes[i, stop:] = STOP_MEL_TOKEN  # stop == length: this candidate never stopped
        codes[i] = fix_autoregressive_output(codes[i], STOP_MEL_TOKEN, complain=False)
    return codes


@torch.no_grad()
def clvp_case(kwargs: dict, seed: int) -> dict:
    from tortoise.models.clvp import CLVP, masked_mean

    model = CLVP(**kwargs).eval()
    fill_(model, seed, skip=rotary_buffers(model))
    g = torch.Generator().manual_seed(1000 + seed)
    b, t_len, n_len = 4, 11, 40
    # One text, tokenised and padded with one trailing 0 as the pipeline does, repeated per candidate.
    text = torch.nn.functional.pad(torch.randint(1, 256, (1, t_len), generator=g), (0, 1))
    texts = torch.nn.functional.pad(torch.randint(1, 256, (b, t_len), generator=g), (0, 1))
    codes = pipeline_codes(g, b, n_len)

    sim = model(text.repeat(b, 1), codes, return_loss=False)
    sim_pairs = model(texts, codes, return_loss=False)
    # Every text against every candidate, computed by the original's own forward over all pairs.
    matrix = model(texts.repeat_interleave(b, 0), codes.repeat(b, 1), return_loss=False).view(b, b)
    loss = model(texts, codes, return_loss=True)

    # The original's masked path (what it runs in training, without the random masking): its own
    # encoders with a padding mask and its own masked_mean; varying real lengths per row.
    text_lens = torch.tensor([t_len + 1, 5, 9, 1])
    code_lens = torch.tensor([n_len, 17, 33, 2])
    text_mask = torch.arange(t_len + 1)[None] < text_lens[:, None]
    speech_mask = torch.arange(n_len)[None] < code_lens[:, None]
    enc_text = model.text_transformer(model.text_emb(texts), mask=text_mask)
    enc_speech = model.speech_transformer(model.speech_emb(codes), mask=speech_mask)
    tl = torch.nn.functional.normalize(model.to_text_latent(masked_mean(enc_text, text_mask)), dim=-1)
    sl = torch.nn.functional.normalize(model.to_speech_latent(masked_mean(enc_speech, speech_mask)), dim=-1)
    sim_masked = (tl * sl).sum(-1) * model.temperature.exp()

    return dict(config=kwargs, seed=seed, digest=digest(model), text=text, texts=texts, codes=codes,
                sim=sim, sim_pairs=sim_pairs, matrix=matrix, loss=loss, text_mask=text_mask,
                speech_mask=speech_mask, sim_masked=sim_masked)


@torch.no_grad()
def cvvp_case(kwargs: dict, seed: int) -> dict:
    from tortoise.models.cvvp import CVVP

    model = CVVP(**kwargs).eval()
    fill_(model, seed, skip=rotary_buffers(model))
    g = torch.Generator().manual_seed(2000 + seed)
    b, clips, t_cond, n_len = 3, 2, 61, 30
    mel_conds = torch.randn(1, clips, 80, t_cond, generator=g)  # (1, K, 80, T) like the pipeline's auto_conds
    if kwargs["mel_codes"] is None:
        speech = torch.randn(b, 80, n_len, generator=g)
    else:
        speech = pipeline_codes(g, b, n_len)

    # The pipeline's CVVP blend: mean over the reference clips of forward(clip repeated, candidates).
    acc = 0
    for k in range(clips):
        acc = acc + model(mel_conds[:, k].repeat(b, 1, 1), speech, return_loss=False)
    score = acc / clips
    conds = torch.randn(b, 80, t_cond + 6, generator=g)
    sim_pairs = model(conds, speech, return_loss=False)
    loss = model(conds, speech, return_loss=True)
    return dict(config=kwargs, seed=seed, digest=digest(model), mel_conds=mel_conds, speech=speech,
                conds=conds, score=score, sim_pairs=sim_pairs, loss=loss)


def main() -> None:
    torch.set_num_threads(1)  # fixed reduction order: the goldens regenerate bit for bit
    OUT.mkdir(parents=True, exist_ok=True)
    clvp = [clvp_case(kw, seed) for kw, seed in CLVP_CASES]
    cvvp = [cvvp_case(kw, seed) for kw, seed in CVVP_CASES]
    for name, cases in (("clvp", clvp), ("cvvp", cvvp)):
        path = OUT / f"{name}.pt"
        torch.save({"cases": cases}, path)
        print(f"{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}: "
              f"{len(cases)} cases, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
