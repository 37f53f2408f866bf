"""Goldens for the diffusion decoder and its samplers, from the ORIGINAL tortoise-tts 3.0.0.

Run from the repository root with the reference venv:

    /work/ref/.venv/bin/python tests/reference/gen_diffusion.py

Writes tests/reference/goldens/diffusion/{model,sampling}.pt (plain tensors, lists, dicts; loadable
with weights_only=True).  Weights come from ``detweights.fill_`` so no state dict is stored; the
digest of the original's filled state dict is, so our tests can prove the weights are identical.

* model.pt: the official config's state-dict names and shapes (built on meta); for two tiny
  configs: the voice latent (4-D and 3-D mel input), timestep_independent for latents and codes,
  the model output at three timestep batches with and without conditioning-free, and the
  aligned_conditioning forward path with return_code_pred.
* sampling.pt: space_timesteps for several counts, the respaced float32 tables for 30 steps, and
  whole p_sample_loop (through the original ``do_spectrogram_diffusion``) and ddim_sample_loop runs
  with ``torch.manual_seed(seed)`` before the initial draw, with and without conditioning-free.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.reference.detweights import digest, fill_  # noqa: E402

import tortoise.api as tapi  # noqa: E402
from tortoise.models.diffusion_decoder import DiffusionTts  # noqa: E402
from tortoise.utils.audio import denormalize_tacotron_mel  # noqa: E402
from tortoise.utils.diffusion import get_named_beta_schedule, space_timesteps  # noqa: E402

OUT = os.path.join(ROOT, "tests", "reference", "goldens", "diffusion")

OFFICIAL = dict(model_channels=1024, num_layers=10, in_channels=100, out_channels=200, in_latent_channels=1024,
                in_tokens=8193, dropout=0, use_fp16=False, num_heads=16, layer_drop=0, unconditioned_percentage=0)
BASE = dict(in_channels=100, out_channels=200, dropout=0, use_fp16=False, layer_drop=0, unconditioned_percentage=0)
TINY = [
    # name, constructor kwargs, fill seed, batch, latent frames, reference clips, mel frames per clip
    ("a", dict(BASE, model_channels=64, num_layers=2, in_latent_channels=64, in_tokens=256, num_heads=4), 0, 2, 16, 2, 80),
    ("b", dict(BASE, model_channels=32, num_layers=1, in_latent_channels=48, in_tokens=100, num_heads=2), 1, 1, 12, 1, 64),
]


def build(kwargs: dict, seed: int) -> DiffusionTts:
    model = DiffusionTts(**kwargs).eval()
    return fill_(model, seed)


@torch.no_grad()
def model_goldens() -> dict:
    with torch.device("meta"):
        official = DiffusionTts(**OFFICIAL)
    out = {
        "official_kwargs": OFFICIAL,
        "official_params": sum(p.numel() for p in official.parameters()),
        "official_keys": [[k, list(v.shape)] for k, v in official.state_dict().items()],
        "configs": [],
    }
    for name, kwargs, seed, batch, frames, clips, mel_frames in TINY:
        model = build(kwargs, seed)
        g = torch.Generator().manual_seed(100 + seed)
        length = frames * 4 * 24000 // 22050
        inputs = {
            "cond_mels": torch.randn(batch, clips, 100, mel_frames, generator=g),
            "latents": torch.randn(batch, frames, kwargs["in_latent_channels"], generator=g),
            "codes": torch.randint(0, kwargs["in_tokens"], (batch, frames), generator=g),
            "x": torch.randn(batch, 100, length, generator=g),
            "timesteps": [torch.tensor([0, 2000][:batch]), torch.tensor([1234] * batch),
                          torch.tensor([3999, 17][:batch])],
        }
        cond = model.get_conditioning(inputs["cond_mels"])
        cond_3d = model.get_conditioning(inputs["cond_mels"][:, 0])
        emb = model.timestep_independent(inputs["latents"], cond, length, False)
        emb_codes, mel_pred_codes = model.timestep_independent(inputs["codes"], cond, length, True)
        outs, outs_free = [], []
        for t in inputs["timesteps"]:
            outs.append(model(inputs["x"], t, precomputed_aligned_embeddings=emb))
            outs_free.append(model(inputs["x"], t, precomputed_aligned_embeddings=emb, conditioning_free=True))
        full, full_mel_pred = model(inputs["x"], inputs["timesteps"][1], aligned_conditioning=inputs["latents"],
                                    conditioning_latent=cond, return_code_pred=True)
        out["configs"].append({
            "name": name, "kwargs": kwargs, "seed": seed, "digest": digest(model), "length": length,
            "inputs": inputs, "conditioning_latent": cond, "conditioning_latent_3d": cond_3d,
            "aligned_embeddings": emb, "code_embeddings": emb_codes, "code_mel_pred": mel_pred_codes,
            "out": outs, "out_cond_free": outs_free, "full_out": full, "full_mel_pred": full_mel_pred,
        })
    return out


def original_diffuser(steps: int, cond_free: bool, k: float):
    return tapi.load_discrete_vocoder_diffuser(desired_diffusion_steps=steps, cond_free=cond_free, cond_free_k=k)


@torch.no_grad()
def sampling_goldens() -> dict:
    counts = [1, 2, 7, 10, 30, 80, 100, 200, 400, 4000]
    spacing = {str(n): sorted(space_timesteps(4000, [n])) for n in counts}
    spacing["300:10,15,20"] = sorted(space_timesteps(300, [10, 15, 20]))
    spacing["300:'7,13'"] = sorted(space_timesteps(300, "7,13"))
    spacing["100:ddim25"] = sorted(space_timesteps(100, "ddim25"))

    d30 = original_diffuser(30, True, 2.0)
    tables = {name: torch.from_numpy(np.asarray(getattr(d30, name)).astype(np.float32))
              for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recip_alphas_cumprod",
                           "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                           "posterior_mean_coef1", "posterior_mean_coef2")}
    tables["log_betas"] = torch.from_numpy(np.log(d30.betas).astype(np.float32))
    linear = torch.from_numpy(get_named_beta_schedule("linear", 4000))  # float64

    name, kwargs, seed = TINY[0][:3]
    model = build(kwargs, seed)
    g = torch.Generator().manual_seed(7)
    mels = torch.randn(1, 2, 100, 64, generator=g)
    cond = model.get_conditioning(mels)
    latents = torch.randn(2, 10, kwargs["in_latent_channels"], generator=g)
    runs = []
    for sampler in ("p", "ddim"):
        for cond_free, batch in ((True, 1), (False, 2)):
            steps, k, temperature, run_seed = 6, 2.0, 0.8, 1000 + len(runs)
            lat = latents[:batch]
            diffuser = original_diffuser(steps, cond_free, k)
            torch.manual_seed(run_seed)
            if sampler == "p":
                mel = tapi.do_spectrogram_diffusion(model, diffuser, lat, cond, temperature=temperature, verbose=False)
            else:  # do_spectrogram_diffusion with ddim_sample_loop in place of p_sample_loop
                length = lat.shape[1] * 4 * 24000 // 22050
                emb = model.timestep_independent(lat, cond, length, False)
                noise = torch.randn((batch, 100, length)) * temperature
                raw = diffuser.ddim_sample_loop(model, (batch, 100, length), noise=noise,
                                                model_kwargs={"precomputed_aligned_embeddings": emb}, progress=False)
                mel = denormalize_tacotron_mel(raw)[:, :, :length]
            runs.append({"sampler": sampler, "cond_free": cond_free, "cond_free_k": k, "steps": steps,
                         "temperature": temperature, "seed": run_seed, "batch": batch, "mel": mel})
    return {"spacing": spacing, "tables30": tables, "timestep_map30": list(d30.timestep_map),
            "linear_betas": linear, "model": {"name": name, "kwargs": kwargs, "seed": seed, "digest": digest(model)},
            "cond_mels": mels, "conditioning_latent": cond, "latents": latents, "runs": runs}


def main() -> None:
    torch.set_num_threads(1)  # thread count can change float summation order; keep runs reproducible
    os.makedirs(OUT, exist_ok=True)
    for fname, fn in (("model.pt", model_goldens), ("sampling.pt", sampling_goldens)):
        path = os.path.join(OUT, fname)
        torch.save(fn(), path)
        print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
