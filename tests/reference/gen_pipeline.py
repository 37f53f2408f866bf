"""Goldens for the deterministic stages of the whole pipeline, from the ORIGINAL tortoise ``api.py``.

Run in the original's venv, from the repository root:

    /work/ref/.venv/bin/python -m tests.reference.gen_pipeline

Writes ``tests/reference/goldens/pipeline/pipeline.pt``.  Four tiny models that fit together
(AR width 64 = diffusion latent width; UnivNet with 100 mels and the official 256-sample hop) are
built from the original classes and filled with ``detweights.fill_``; their digests are stored so
our test can prove it runs the same weights.  Then the stages of ``TextToSpeech.tts`` are run
one by one, each through the original's own code where it has a function for it:

* conditioning: the original ``TextToSpeech.get_conditioning_latents`` (called on a bare
  instance holding the two models) on two short synthetic clips, with the AR mel's norms
  patched to the stand-in ``write_standin_data`` writes (no real data file is read);
* AR sampling: ``inference_speech`` through Hugging Face ``generate`` without a KV cache, with
  top_k=1 (so the draw is deterministic) and the other knobs at the presets' values; the stop
  logit gets a bias (``STOP_LOGIT_BIAS``, applied on both sides) so the sequence stops mid-run;
* ranking: ``fix_autoregressive_output`` on fixed candidates (stops at several places, one
  natural calm run, one never stopping) then the CLVP scores and the top k, as ``tts`` does;
* the latents pass and the calm-token trim, with ``tts``'s own loop;
* diffusion of the best candidate with p (``do_spectrogram_diffusion``) and ddim (its
  ``ddim_sample_loop``), conditioning-free on and off, ``torch.manual_seed`` before each;
* the vocoder on one of those mels with seeded noise;
* the tail of ``tts`` as written: one seed, then for each of the best k: trim, p diffusion,
  vocoder, all drawing from the one global generator in turn.

Everything is float32 on the CPU with one thread, so reruns give the same bytes.
"""

from __future__ import annotations

import math
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)  # weight_norm, torch.load

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tortoise.api as tapi  # noqa: E402
from tortoise.models.arch_util import TorchMelSpectrogram  # noqa: E402
from tortoise.models.clvp import CLVP  # noqa: E402
from tortoise.models.vocoder import UnivNetGenerator  # noqa: E402
from tortoise.utils.audio import denormalize_tacotron_mel  # noqa: E402

from tests.reference.detweights import digest, fill_  # noqa: E402
from tests.reference.gen_ar import build as build_ar  # noqa: E402
from tests.reference.gen_clvp import rotary_buffers  # noqa: E402
from tests.reference.gen_diffusion import build as build_diffusion, original_diffuser  # noqa: E402
from tests.reference.gen_vocoders import condition_univnet_  # noqa: E402

OUT = os.path.join(ROOT, "tests", "reference", "goldens", "pipeline")

# The tiny configs of tortoise_xpu.models.registry (each Config.tiny() with the registry's ``tiny``
# overrides), written as the original constructors' keyword arguments.
AR = dict(layers=2, model_dim=64, heads=4, max_text_tokens=402, max_mel_tokens=604, max_conditioning_inputs=2,
          number_text_tokens=255, start_text_token=255)
CLVP_CFG = dict(dim_text=64, dim_speech=64, dim_latent=32, num_text_tokens=256, text_enc_depth=2, text_seq_len=350,
                text_heads=2, num_speech_tokens=8192, speech_enc_depth=2, speech_heads=2, speech_seq_len=430,
                use_xformers=True)
DIFFUSION = dict(model_channels=64, num_layers=2, in_channels=100, out_channels=200, in_latent_channels=64,
                 in_tokens=256, dropout=0, use_fp16=False, num_heads=4, layer_drop=0, unconditioned_percentage=0)
VOCODER = dict(noise_dim=16, channel_size=8, dilations=[1, 3, 9], strides=[8, 8, 4], lReLU_slope=0.2,
               kpnet_conv_size=3, hop_length=256, n_mel_channels=100)
SEEDS = dict(autoregressive=11, clvp=12, diffusion=13, vocoder=14)

STOP_MEL_TOKEN = 8193
# Added to the stop token's mel-head bias after filling, so the random model stops mid-run and the
# sampler's stop path is exercised: it then emits the stop token as its 26th code of 40 (the same
# at 1.8 and 2.0; at 1.5 it stops at the last step, at 2.2 after four codes).
STOP_LOGIT_BIAS = 1.9
MEL_NORMS = torch.linspace(-9.482, -1.604, 80)  # the stand-in of tortoise_xpu.models.loading.write_standin_data
TEXT = "Hello there, this is a small test of the whole pipeline."

SAMPLING = dict(temperature=0.8, top_p=0.8, top_k=1, repetition_penalty=2.0, length_penalty=1.0)
NUM_SAMPLES = 2
MAX_TOKENS = 40  # also the candidates' length (the original pads every candidate to max_mel_tokens)
K = 2
DIFFUSION_STEPS = 10
COND_FREE_K = 2.0
DIFFUSION_TEMPERATURE = 1.0
DIFFUSION_SEED = 2024
VOCODER_SEED = 77
TAIL_SEED = 4321


class StandinMel(TorchMelSpectrogram):
    """The original AR conditioning mel with the stand-in norms instead of ``data/mel_norms.pth``."""

    def __init__(self, *args, **kwargs):
        kwargs["mel_norm_file"] = None
        super().__init__(*args, **kwargs)
        self.mel_norms = MEL_NORMS.clone()


def clips() -> list[torch.Tensor]:
    """Two short voice-like clips at 22.05 kHz, (1, T): a few harmonics under a slow envelope, plus noise."""
    g = torch.Generator().manual_seed(99)
    out = []
    for i, (seconds, f0) in enumerate(((1.5, 140.0), (1.8, 205.0))):
        t = torch.arange(int(seconds * 22050), dtype=torch.float64) / 22050
        voiced = sum((0.25 / h) * torch.sin(2 * math.pi * h * f0 * (1 + 0.03 * torch.sin(2 * math.pi * 3 * t)) * t
                                            + 0.7 * h * i) for h in range(1, 7))
        envelope = 0.5 - 0.5 * torch.cos(2 * math.pi * t * 2.0 / seconds)
        noise = 0.02 * torch.randn(t.shape, generator=g, dtype=torch.float64)
        out.append((voiced * envelope + noise).float().unsqueeze(0))
    return out


def candidates(g: torch.Generator, sampled: torch.Tensor) -> torch.Tensor:
    """Raw AR outputs to rank (before fix_autoregressive_output): the sampled sequence plus made-up ones."""
    n = MAX_TOKENS
    rows = [sampled[0].clone()]
    for stop in (12, 20, None, 27, None):
        row = torch.randint(0, 8192, (n,), generator=g)
        row[row == 83] = 84  # calm tokens only where placed on purpose
        if stop is not None:
            row[stop:] = STOP_MEL_TOKEN
        rows.append(row)
    rows[3][5:15] = 83  # a natural run of ten calm tokens, no stop token: trimmed at its 9th
    return torch.stack(rows)


def trim(codes: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``tts``'s calm-token loop, verbatim in effect: cut at the 9th calm token in a row."""
    calm_token, ctokens = 83, 0
    for k in range(codes.shape[-1]):
        if codes[0, k] == calm_token:
            ctokens += 1
        else:
            ctokens = 0
        if ctokens > 8:
            return latents[:, :k], k
    return latents, codes.shape[-1]


def ddim_spectrogram_diffusion(model, diffuser, latents, cond, temperature):
    """``do_spectrogram_diffusion`` with ``ddim_sample_loop`` in place of ``p_sample_loop``."""
    length = latents.shape[1] * 4 * 24000 // 22050
    shape = (latents.shape[0], 100, length)
    emb = model.timestep_independent(latents, cond, length, False)
    noise = torch.randn(shape) * temperature
    mel = diffuser.ddim_sample_loop(model, shape, noise=noise, model_kwargs={"precomputed_aligned_embeddings": emb},
                                    progress=False)
    return denormalize_tacotron_mel(mel)[:, :, :length]


def spectrogram(sampler, model, latents, cond, cond_free):
    diffuser = original_diffuser(DIFFUSION_STEPS, cond_free, COND_FREE_K)
    if sampler == "p":
        return tapi.do_spectrogram_diffusion(model, diffuser, latents, cond, temperature=DIFFUSION_TEMPERATURE,
                                             verbose=False)
    return ddim_spectrogram_diffusion(model, diffuser, latents, cond, DIFFUSION_TEMPERATURE)


@torch.no_grad()
def make() -> dict:
    from tortoise.utils.tokenizer import VoiceBpeTokenizer

    tapi.TorchMelSpectrogram = StandinMel  # format_conditioning builds its mel from this name

    ar = fill_(build_ar(AR).eval(), SEEDS["autoregressive"])
    clvp = CLVP(**CLVP_CFG).eval()
    fill_(clvp, SEEDS["clvp"], skip=rotary_buffers(clvp))
    diffusion = build_diffusion(DIFFUSION, SEEDS["diffusion"])
    vocoder = UnivNetGenerator(**VOCODER)
    fill_(vocoder, SEEDS["vocoder"])
    condition_univnet_(vocoder)
    digests = {"autoregressive": digest(ar), "clvp": digest(clvp), "diffusion": digest(diffusion),
               "vocoder": digest(vocoder)}
    ar.mel_head.bias[STOP_MEL_TOKEN] += STOP_LOGIT_BIAS
    ar.post_init_gpt2_config(kv_cache=False)
    vocoder.eval(inference=True)  # folds weight norm, as api.py does

    # ---- conditioning latents: the original method on a bare instance holding the two models
    shell = tapi.TextToSpeech.__new__(tapi.TextToSpeech)
    shell.device, shell.autoregressive, shell.diffusion = torch.device("cpu"), ar, diffusion
    voice = clips()
    ar_latent, diff_latent, ar_mels, _ = tapi.TextToSpeech.get_conditioning_latents(shell, voice, return_mels=True)

    # ---- text tokens as tts() makes them (int32, one trailing 0)
    text_tokens = F.pad(torch.IntTensor(VoiceBpeTokenizer().encode(TEXT)).unsqueeze(0), (0, 1))

    # ---- AR sampling, deterministic through top_k=1; padded with the stop token as tts() does
    codes = ar.inference_speech(ar_latent, text_tokens, do_sample=True, num_return_sequences=NUM_SAMPLES,
                                max_generate_length=MAX_TOKENS, **SAMPLING)
    sampled_steps = codes.shape[1]
    codes = F.pad(codes, (0, MAX_TOKENS - codes.shape[1]), value=STOP_MEL_TOKEN)

    # ---- ranking of fixed candidates
    raw = candidates(torch.Generator().manual_seed(5), codes)
    fixed = raw.clone()
    for i in range(fixed.shape[0]):
        fixed[i] = tapi.fix_autoregressive_output(fixed[i], STOP_MEL_TOKEN, complain=False)
    scores = clvp(text_tokens.repeat(fixed.shape[0], 1), fixed, return_loss=False)
    best = torch.topk(scores, k=K).indices
    best_codes = fixed[best]
    gap = (scores.sort(descending=True).values[K - 1] - scores.sort(descending=True).values[K]).item()
    assert gap > 1e-2, f"ranking too close to call at the cut ({gap})"

    # ---- the latents pass, then the trim of every candidate (not only the best)
    best_latents = ar(ar_latent.repeat(K, 1), text_tokens.repeat(K, 1), torch.tensor([text_tokens.shape[-1]]),
                      best_codes, torch.tensor([best_codes.shape[-1] * ar.mel_length_compression]),
                      return_latent=True, clip_inputs=False)
    trims = [trim(fixed[i:i + 1], torch.zeros(1, MAX_TOKENS))[1] for i in range(fixed.shape[0])]
    trimmed = [trim(best_codes[b:b + 1], best_latents[b:b + 1])[0] for b in range(K)]
    assert any(t.shape[1] < MAX_TOKENS for t in trimmed), "no best candidate is trimmed: pick other candidates"

    # ---- diffusion of the best candidate: p and ddim, conditioning-free on and off
    runs = []
    for sampler in ("p", "ddim"):
        for cond_free in (True, False):
            seed = DIFFUSION_SEED + len(runs)
            torch.manual_seed(seed)
            mel = spectrogram(sampler, diffusion, trimmed[0], diff_latent, cond_free)
            runs.append(dict(sampler=sampler, cond_free=cond_free, seed=seed, mel=mel))

    # ---- the vocoder on the default-settings mel, seeded noise
    torch.manual_seed(VOCODER_SEED)
    wav = vocoder.inference(runs[0]["mel"])

    # ---- tts()'s tail: one seed, then diffusion and vocoder of each best candidate in turn
    torch.manual_seed(TAIL_SEED)
    tail_mels, tail_wavs = [], []
    for b in range(K):
        mel = spectrogram("p", diffusion, trimmed[b], diff_latent, True)
        tail_mels.append(mel)
        tail_wavs.append(vocoder.inference(mel))

    return {
        "torch": str(torch.__version__),
        "configs": {"autoregressive": AR, "clvp": CLVP_CFG, "diffusion": DIFFUSION, "vocoder": VOCODER},
        "seeds": SEEDS, "digests": digests, "stop_logit_bias": STOP_LOGIT_BIAS, "mel_norms": MEL_NORMS,
        "clips": voice, "text": TEXT, "text_tokens": text_tokens.long(),
        "conditioning": {"ar_latent": ar_latent, "diffusion_latent": diff_latent, "ar_mels_shape": list(ar_mels.shape)},
        "sampling": {"settings": SAMPLING, "num_samples": NUM_SAMPLES, "max_tokens": MAX_TOKENS, "codes": codes,
                     "steps": sampled_steps},
        "ranking": {"raw": raw, "fixed": fixed, "scores": scores, "k": K, "best": best, "trims": trims},
        "latents": {"best_codes": best_codes, "latents": best_latents, "trims": [t.shape[1] for t in trimmed]},
        "diffusion": {"steps": DIFFUSION_STEPS, "cond_free_k": COND_FREE_K, "temperature": DIFFUSION_TEMPERATURE,
                      "runs": runs},
        "vocoder": {"seed": VOCODER_SEED, "mel": runs[0]["mel"], "wav": wav},
        "tail": {"seed": TAIL_SEED, "mels": tail_mels, "wavs": tail_wavs},
    }


def main() -> None:
    torch.set_num_threads(1)  # fixed reduction order: the goldens regenerate bit for bit
    os.makedirs(OUT, exist_ok=True)
    golden = make()
    path = os.path.join(OUT, "pipeline.pt")
    torch.save(golden, path)
    print(f"wrote {path} ({os.path.getsize(path):,} bytes)")
    print(f"sampled codes[0] ({golden['sampling']['steps']} steps): {golden['sampling']['codes'][0].tolist()}")
    print(f"scores {[round(s, 4) for s in golden['ranking']['scores'].tolist()]} best {golden['ranking']['best'].tolist()}"
          f" trims {golden['ranking']['trims']} best trims {golden['latents']['trims']}")


if __name__ == "__main__":
    main()
